"""A site refused more than ``max-refused`` windows in a row is excluded from the rest
of the run (``mmvm/federation/attendance.py``, ``admission.check_left``), in one
process: real sites, endpoints and round loop. It is sent no more windows nor the
final evaluation, named on the console and in ``results.json``; the run stops only
when fewer than ``min-sites`` are left or a modality would lose what it needs, and a
resumed run sends the site windows again.
"""

from __future__ import annotations

import pytest

from mmvm.config import ConfigError
from mmvm.federation.attendance import Attendance
from mmvm.federation.coordinator import FederationError
from mmvm.federation.report import summary, window_line
from mmvm.federation.settings import app_run_config, load_settings
from tests.support.federate import (
    Spoiler,
    failing,
    federate,
    make_sites,
    plain_endpoints,
    sealed_endpoints,
    site_keys,
    split,
)


@pytest.mark.parametrize("limit", [0, 1])
def test_a_site_refused_more_than_max_refused_windows_in_a_row_is_excluded(
        cfg, tmp_path, tiny_polymnist, monkeypatch, limit):
    """n0, one of m0's two holders, fails every window: one more than ``max-refused``
    in a row and it is left out of the rest of the run (sent no more windows, said
    once), as a site away for good is; the run goes on with the three sites left
    (min-sites = 2). That stopped the run for everyone until a review of a hostile
    site (2026-12-07). Where the sites left are fewer than min-sites, or a modality
    would lose its last holder, the run stops, saying why."""
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=2)

    def failing_n0(layout_sites):
        failing(monkeypatch, layout_sites["n0"], {0, 1, 2},
                 OSError(28, "No space left on device"))
        return layout_sites

    sites = failing_n0(make_sites(cfg, specs, root))
    spy = Spoiler(plain_endpoints(sites))
    res = federate(cfg, {}, spy, exchange="step", max_refused=limit)
    name, history = sites["n0"].name, res.history
    why = (f"failed, or its reply was refused, {limit + 1} window{'s' * (limit > 0)} in a "
           f"row (max-refused = {limit}); the last time: failed: OSError: [Errno 28] No "
           f"space left on device")
    assert history[limit]["excluded"] == {name: why}
    assert f"({name} excluded from the rest of the run: it {why})" in window_line(
        history[limit], len(history), 1.0)
    later = history[limit + 1:]
    assert later and all(r["left_out"] == [name] and name in r["missed"] for r in later)
    assert f"(without {name}: excluded)" in window_line(later[0], len(history), 1.0)
    assert all((w, "n0") not in spy.requests for w in range(limit + 1, len(history)))
    assert len(history) == 3 and sorted(res.missed[name]) == [0, 1, 2]
    # nor is it asked to evaluate (it would have: only its training fails), its
    # weights being of the window it was excluded in
    assert res.not_evaluated == [name] and len(res.evaluation) == 3
    assert res.evaluation_errors[name] == f"excluded from the run: it {why}"
    assert f"sites excluded from the rest of the run (more than max-refused windows in " \
           f"a row): {name} after window {limit + 1}" in summary(res, "runs/x", {}, None)
    with pytest.raises(FederationError, match=(  # min-sites = 4: not without it
            rf"window {limit + 1}: site {name} failed, or its reply was refused, "
            rf"{limit + 1} windows? in a row \(max-refused = {limit}\); the last time: "
            rf"failed: OSError: \[Errno 28\] No space left .*\. 3 sites of 4 left, fewer "
            rf"than min-sites = 4")):
        federate(cfg, plain_endpoints(failing_n0(make_sites(cfg, specs, root))),
                 exchange="step", max_refused=limit, min_sites=4)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")  # n0: m0's only holder
    with pytest.raises(FederationError, match=(
            rf"window {limit + 1}: site site-m0 failed, .*\. Without it, modality 'm0' "
            rf"has 0 of its 1 holder\(s\) left, and no one trains it: the run stops. Fix "
            rf"it, then continue the run with resume=")):
        federate(cfg, plain_endpoints(failing_n0(make_sites(cfg, specs, root))),
                 exchange="step", max_refused=limit)


def test_attendance_counts_refusals_in_a_row():
    """Only a reply that was taken starts the count again: a window the site missed
    in between (it was away, or timed out) does not."""
    att = Attendance({"k0": "a", "k1": "b"}, min_sites=1, pause_timeout=1.0, max_refused=1)
    att.refuse(0, {"k1": "failed: x"}, ["k0"])
    att.refuse(1, {}, ["k0", "k1"])  # b's reply was taken: its count starts again
    att.refuse(2, {"k1": "failed: y"}, ["k0"])
    att.refuse(3, {}, ["k0"])  # b was away
    assert att.strikes == {"k0": 0, "k1": 1}
    why = ("failed, or its reply was refused, 2 windows in a row (max-refused = 1); "
           "the last time: failed: z")
    assert att.refuse(4, {"k1": "failed: z"}, ["k0"]) == {"b": why}  # a is enough
    assert att.excluded == {"k1": why}
    assert att.refuse(5, {}, ["k0"]) == {}  # said once
    pair = Attendance({"k0": "a", "k1": "b"}, min_sites=2, pause_timeout=1.0, max_refused=0)
    with pytest.raises(FederationError, match=r"window 1: site b failed, .* 1 site of 2 "
                                              r"left, fewer than min-sites = 2"):
        pair.refuse(0, {"k1": "failed: z"}, ["k0"])
    again = Attendance({"k0": "a", "k1": "b"}, min_sites=1, pause_timeout=1.0)
    again.recount([{"window": 0, "missed": ["b"], "refused": {"b": "x"}},
                   {"window": 1, "missed": [], "refused": {}},
                   {"window": 2, "missed": ["b"], "refused": {"b": "y"}},
                   {"window": 3, "missed": ["b"], "refused": {}}])
    assert again.strikes == {"k0": 0, "k1": 1}  # as a resumed run counts on
    again.recount([{"window": 4, "missed": ["b"], "refused": {"b": "z"},
                    "excluded": {"b": why}}, {"window": 5, "missed": ["b"]}])
    # a resumed run sends b windows again (fixed, it may answer); one more refusal
    # excludes it again at once, an answer starts its count anew
    assert again.excluded == {} and again.strikes["k1"] == 2


def test_max_refused_must_not_be_negative():
    with pytest.raises(ConfigError, match="max-refused = -1 must be >= 0"):
        load_settings(app_run_config(max_refused=-1))


def test_an_excluded_site_is_not_called_away_and_a_resumed_run_takes_it_back():
    """The pause and its failure name the sites that are away, and the excluded ones
    as excluded; results.json's excluded_sites drops a site that a resumed run sent
    windows again and that answered one (review of the exclusion, 2026-12-07)."""
    from mmvm.federation.report import excluded

    att = Attendance({"ka": "a", "kb": "b", "kc": "c"}, min_sites=2, pause_timeout=0.0,
                     poll=0.0, max_refused=0)
    assert att.refuse(0, {"kc": "failed: x"}, ["ka", "kb"]) == {
        "c": "failed, or its reply was refused, 1 window in a row (max-refused = 0); "
             "the last time: failed: x"}
    att.record(1, ["ka"])  # b away, c excluded (not asked)
    said = []
    with pytest.raises(FederationError, match=r"only 1 of the 3 sites are connected; c "
                                              r"excluded and the run needs min-sites = 2; "
                                              r"sites \['b'\] did not return"):
        att.wait_for_quorum(lambda: ["ka", "kc"], said.append)
    history = [{"window": 0, "missed": ["c"], "excluded": {"c": "x"}},
               {"window": 1, "missed": ["c"]}]
    assert excluded(history) == {"c": {"window": 0, "reason": "x"}}
    assert excluded([*history, {"window": 2, "missed": []}]) == {}  # back after a resume


def test_an_excluded_site_is_left_out_of_a_secure_psi_cross_site_evaluation(
        cfg, tmp_path, tiny_polymnist, monkeypatch):
    """Secure, PSI, groups of four holders; n0 fails every window and is excluded
    after the first, and it would fail the test ring too. It is asked nothing at
    the end: asked, it would have failed the test sets' PSI ring for everyone
    (review of the exclusion, 2026-12-07). The others' ring completes and they score
    each other."""
    from mmvm.federation.messages import SiteFailure
    from mmvm.federation.policy import SitePolicy
    from tests.support.federate import Tampering

    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=4)
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state",
                                 SitePolicy(eval_labels=()), align="psi")  # no judges
    failing(monkeypatch, sites["n0"], set(range(10)))

    name, sealed_to = sites["n0"].name, []

    def broken(requests, replies):  # n0 fails the ring's second step, as it fails
        req = requests.get("n0")    # its windows (a failure at the first only leaves
        if req is not None and req.kind == "heldout" and req.step == 2:  # it out)
            replies["n0"] = SiteFailure("n0", "RuntimeError: still broken")
        sealed_to.extend((r.window, k) for k, r in requests.items() if r.kind == "window"
                         and name in getattr(replies.get(k), "posteriors", {}))

    res = federate(cfg, endpoints, Tampering(endpoints, broken), exchange="step",
                   secure=True, align="psi", cross_eval="mean", max_refused=0)
    assert res.history[0]["excluded"] and res.not_evaluated == [name]
    # sealed to it in window 0, before it was excluded; never after (the server kept
    # envelopes it would never deliver, sealed to a site it had found at fault)
    assert sealed_to and {w for w, _ in sealed_to} == {0}
    assert res.cross_site["imputation"]["pairs"]
    assert res.cross_notes == {name: "excluded from the run"}
