"""The server's bookkeeping without a network: alignment, routing, FedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.plan import PlanArgs
from mmvm.federation.posteriors import Posteriors

PLAN = PlanArgs(batch_size=2, seed=0, epochs=1, exchange="step")


def _coord(*sites, modalities=("m0", "m1")):
    return Coordinator([SiteInfo(f"k{i}", n, list(m), list(ids))
                        for i, (n, m, ids) in enumerate(sites)], list(modalities), PLAN)


def test_rows_are_the_sorted_union_and_each_site_gets_its_own():
    c = _coord(("a", ["m0"], ["s3", "s1", "s2"]), ("b", ["m1"], ["s2", "s4"]))
    assert c.ids == ["s1", "s2", "s3", "s4"]
    assert c.sites["k0"].rows.tolist() == [2, 0, 1]  # in the order the site reported
    assert c.sites["k1"].held.tolist() == [1, 3]
    req = c.attach_request("k0", float16=True, delta_tol=None, peers=True)
    assert (req.n, req.rows, req.delta_tol, req.shared) == (4, [2, 0, 1], -1.0, {})
    assert req.peers == {"b": {"modalities": ["m1"]}}
    assert req.peer_rows == {"b": np.asarray([1], "<u4").tobytes()}  # 4 bytes a row
    assert PlanArgs.from_dict(req.plan) == PLAN
    plain = c.attach_request("k0", float16=True, delta_tol=0.5, peers=False)
    assert plain.peers == {} and plain.peer_rows == {}


def test_alignment_counts_the_samples_that_couple_modalities():
    c = _coord(("a", ["m0"], ["s1", "s2", "s3"]), ("b", ["m1"], ["s2", "s3", "s4"]),
               ("c", ["m2"], ["s3"]), modalities=("m0", "m1", "m2"))
    assert c.alignment() == {"samples": 4, "per_modality": {"m0": 3, "m1": 3, "m2": 1},
                             "coupled": {"m0": 2, "m1": 2, "m2": 1},
                             "multimodal": 2, "complete": 1}


@pytest.mark.parametrize("sites,match", [
    ((("a", ["m0"], ["s1"]), ("a", ["m1"], ["s1"])), "two sites report the same name"),
    ((("a", ["m0", "m9"], ["s1"]), ("b", ["m1"], ["s1"])), r"modalities \['m9'\]"),
    ((("a", ["m0"], ["s1"]),), r"no connected site holds modalities \['m1'\]"),
    ((("a", ["m0"], ["s1", "s1"]), ("b", ["m1"], ["s1"])), "reported a sample twice"),
    ((("a", ["m0"], ["s1", "s2"]), ("b", ["m0", "m1"], ["s2"])),
     "modality 'm0' is held by both a and b"),
    ((("a", ["m0"], ["s1", "s2"]), ("b", ["m1"], ["x1", "x2"])),  # id schemes differ
     r"the sites \['a', 'b'\] share no sample"),
])
def test_invalid_federations_are_refused(sites, match):
    with pytest.raises(FederationError, match=match):
        _coord(*sites)


def test_route_gives_each_site_the_other_modalities_of_its_window_rows():
    c = _coord(("a", ["m0"], ["s0", "s1", "s2", "s3"]), ("b", ["m1"], ["s1", "s2", "s3"]))
    rows = c.window_rows(0)
    assert len(rows) == 2 and c.window_rows(99).size == 0
    table = {m: Posteriors(np.arange(4), np.full((4, 2), i, np.float32),
                           np.zeros((4, 2), np.float32)) for i, m in enumerate(["m0", "m1"])}
    routed = c.route(0, table)
    assert list(routed["k0"]) == ["m1"] and list(routed["k1"]) == ["m0"]
    assert routed["k0"]["m1"].rows.tolist() == rows.tolist()
    held_b = np.intersect1d(rows, [1, 2, 3])
    assert routed["k1"]["m0"].rows.tolist() == held_b.tolist()


def test_fedavg_is_the_sample_weighted_mean_of_the_holders():
    c = _coord(("a", ["m0"], ["s0"]), ("b", ["m0"], ["s1", "s2", "s3"]),
               ("c", ["m1"], ["s0", "s1", "s2", "s3"]))
    assert c.shared == {"m0": ["k0", "k1"]}
    w = {"k0": {"m0": {"p": np.array([1.0, 2.0], np.float32)}},
         "k1": {"m0": {"p": np.array([5.0, 6.0], np.float32)}}}
    out = c.fedavg(w)
    np.testing.assert_allclose(out["m0"]["p"], [0.25 * 1 + 0.75 * 5, 0.25 * 2 + 0.75 * 6])
    assert out["m0"]["p"].dtype == np.float32
    assert c.weights_for("k2", out) == {} and c.weights_for("k0", out) == out
    with pytest.raises(FederationError, match="other parameters"):
        c.fedavg({"k0": {"m0": {"p": w["k0"]["m0"]["p"]}}, "k1": {"m0": {"q": np.zeros(2)}}})
    with pytest.raises(FederationError, match="other parameters or shapes"):
        c.fedavg({"k0": w["k0"], "k1": {"m0": {"p": np.zeros(3, np.float32)}}})
    req = c.attach_request("k1", float16=False, delta_tol=None, peers=False)
    assert req.shared == {"m0": ["a", "b"]}


def test_fedavg_refuses_weights_it_must_not_average_naming_the_sender():
    """NaN, a dtype that is not a float the model uses, or (even when a holder is the
    only one that answered) other shapes than the modality's model: refused before the
    mean is made, saved or sent, with the sender's name (not the next victim's)."""
    c = _coord(("a", ["m0"], ["s0"]), ("b", ["m0"], ["s1"]),
               ("c", ["m1"], ["s0", "s1"]))
    ok = {"p": np.array([1.0, 2.0], np.float32)}
    c.fedavg({"k0": {"m0": ok}, "k1": {"m0": ok}})
    for arrays, match in (({"p": np.array([1.0, np.nan], np.float32)}, "non-finite"),
                          ({"p": np.ones(2, np.longdouble)}, "dtype float128"),
                          ({"p": np.ones(2, np.int64)}, "dtype int64"),
                          ({"p": np.array([1.0, 5000.0], np.float32)}, "beyond")):
        with pytest.raises(FederationError, match=f"site b sent .*{match}"):
            c.fedavg({"k0": {"m0": ok}, "k1": {"m0": arrays}})
    with pytest.raises(FederationError, match="site b sent weights of 'm0' with other"):
        c.fedavg({"k1": {"m0": {"p": np.ones(5, np.float32)}}})  # b alone, wrong shape


def test_held_of_is_the_intersection_with_the_rows_a_site_holds():
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(50)]
    a, b = (list(rng.choice(ids, size=k, replace=False)) for k in (40, 17))
    c = _coord(("a", ["m0"], a), ("b", ["m1"], b))
    for index in range(len(c.plan)):
        rows = c.window_rows(index)
        for key, site in c.sites.items():
            assert c.held_of(key, rows).tolist() == np.intersect1d(rows, site.held).tolist()
    assert c.held_of("k1", np.zeros(0, np.int64)).size == 0


def test_window_rows_are_the_plans_sorted_rows_and_cannot_be_written():
    c = _coord(("a", ["m0"], [f"s{i}" for i in range(30)]), ("b", ["m1"], ["s1", "s2"]))
    for index in (0, 1, 0, len(c.plan) - 1, 1):  # cached: the same answer when asked again
        rows = c.window_rows(index)
        assert rows.tolist() == sorted(set(c.plan[index].rows.tolist()))
        with pytest.raises(ValueError):
            rows[0] = -1
    assert c.window_rows(len(c.plan)).size == 0


def test_a_windows_metrics_are_checked_site_by_site():
    """Per-sample means over the window's rows; a site's malformed, huge, NaN or
    negative metrics stop the run naming that site (timings are only shown: odd
    ones count as 0)."""
    from mmvm.federation.messages import WindowReply
    from mmvm.federation.window_metrics import window_row

    c = _coord(("a", ["m0"], ["s0", "s1"]), ("b", ["m1"], ["s0", "s1"]))

    def reply(**metrics):
        return WindowReply(metrics={"rec_nll": 2.0, "reg": 1.0, "rows": 2, "rec_nll.m0": 2.0,
                                    "rec_nll.m1": 2.0, **metrics})

    row = window_row(0, c, {"k0": reply(), "k1": reply(train_s="nan")}, 10, 0.5)
    assert (row["rec_nll"], row["reg"], row["train_s"]) == (2.0, 0.5, 0.0)
    for bad, match in (({"rec_nll": float("nan")}, "not finite"),
                       ({"rows": -1}, "negative rows"),
                       ({"reg": 10 ** 400}, "malformed metrics"),
                       ({"reg": "x"}, "malformed metrics"),
                       ({"rec_nll.m1": float("inf")}, "not finite")):
        with pytest.raises(FederationError, match=f"window 0: site b sent .*{match}"):
            window_row(0, c, {"k0": reply(), "k1": reply(**bad)}, 10, 0.5)
