"""A window's loss per sample from the sites' sums, with and without every site
(``mmvm/federation/window_metrics.py``). The same in a federation where a site is
refused: tests/federation/test_admission.py."""

from __future__ import annotations

import math

import pytest
import torch

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.messages import WindowReply
from mmvm.federation.plan import PlanArgs
from mmvm.federation.window_metrics import (
    RESTORED,
    restored_after,
    step_sums,
    window_means,
    zero_sums,
)

IDS = [f"s{i}" for i in range(8)]


def _coord() -> Coordinator:
    """One window of all 8 rows. m0 is held by a (6 rows) and b (2 rows); m1 by c."""
    plan = PlanArgs(batch_size=8, seed=0, epochs=1, exchange="step")
    return Coordinator([SiteInfo("ka", "a", ["m0"], IDS[:6]),
                        SiteInfo("kb", "b", ["m0"], IDS[6:]),
                        SiteInfo("kc", "c", ["m1"], IDS)], ["m0", "m1"], plan)


def _reply(m: str, nll: float, rows: int, reg: float = 1.0) -> WindowReply:
    return WindowReply(metrics={"rec_nll": nll, "reg": reg, "rows": rows,
                                f"rec_nll.{m}": nll})


SUMS = {"ka": _reply("m0", 60.0, 6), "kb": _reply("m0", 30.0, 2), "kc": _reply("m1", 16.0, 8)}


def test_with_every_site_the_window_is_the_sites_sum_per_row():
    got = window_means(_coord(), 0, SUMS)
    assert got == {"rec_nll": (60 + 30 + 16) / 8, "reg": 3 / 16, "estimated": 0}


def test_an_absent_holder_is_stood_for_by_the_others_mean_per_row():
    """b (2 of m0's 8 rows) is absent: m0's 60 over a's 6 rows is 10 per row, so 80
    for all 8; m1 is complete."""
    got = window_means(_coord(), 0, {k: SUMS[k] for k in ("ka", "kc")})
    assert got["rec_nll"] == pytest.approx((80 + 16) / 8)
    assert got["estimated"] == 1
    biased = (60 + 16) / 8  # what the sum over the answering sites alone would say
    assert got["rec_nll"] > biased


def test_a_modality_no_answering_site_holds_leaves_the_window_unknown():
    got = window_means(_coord(), 0, {k: SUMS[k] for k in ("ka", "kb")})
    assert math.isnan(got["rec_nll"]) and got["estimated"] == 1
    assert got["reg"] == pytest.approx(2 / 8)  # a mean over the rows that reported
    none = window_means(_coord(), 0, {})
    assert math.isnan(none["rec_nll"]) and math.isnan(none["reg"])


def test_a_site_must_report_each_of_its_modalities():
    bad = WindowReply(metrics={"rec_nll": 1.0, "reg": 1.0, "rows": 8})
    with pytest.raises(FederationError, match="site c sent malformed metrics.*rec_nll.m1"):
        window_means(_coord(), 0, {**SUMS, "kc": bad})


def test_step_sums_split_the_total_by_modality():
    nll = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.5, 4.0]])  # 0: not observed
    got = step_sums(["x", "y"], nll, torch.tensor([1.0, 2.0, 3.0]), 0.25)
    assert got == {"rec_nll": 10.5, "reg": 6.0, "rows": 3, "steps": 1, "ahead_s": 0.25,
                   "rec_nll.x": 4.5, "rec_nll.y": 6.0}
    assert set(zero_sums(["x", "y"])) == set(got)


def _coord_round() -> Coordinator:
    """One-step windows of 2 rows over 9. a and b hold m0 and m1 for
    half the rows each, c holds m2 for all, d holds m0 for one row of its own."""
    plan = PlanArgs(batch_size=2, seed=0, epochs=1, exchange="step")
    sites = [SiteInfo("ka", "a", ["m0", "m1"], IDS[:4]), SiteInfo("kb", "b", ["m0", "m1"], IDS[4:]),
             SiteInfo("kc", "c", ["m2"], IDS), SiteInfo("kd", "d", ["m0"], ["s8"])]
    return Coordinator(sites, ["m0", "m1", "m2"], plan)


def _two(m0: float, m1: float, rows: int) -> WindowReply:
    return WindowReply(metrics={"rec_nll": m0 + m1, "reg": 0.0, "rows": rows,
                                "rec_nll.m0": m0, "rec_nll.m1": m1})


def test_a_site_holding_two_modalities_is_stood_for_in_each():
    """b is absent from a window: each of its modalities is scaled by the rows of the
    window its holders hold over those a holds."""
    from mmvm.federation.plan import PlanArgs as Args

    c = _coord_round()
    c.plan = Args(batch_size=4, seed=0, epochs=1, exchange="round").plan(len(c.ids))
    steps = c.plan[0].steps
    assert len(steps) == 2 and sum(len(s.rows) for s in steps) == 9  # one window: all rows
    got = window_means(c, 0, {"ka": _two(40.0, 20.0, 4), "kc": _reply("m2", 18.0, 8),
                              "kd": WindowReply(metrics={"rec_nll": 3.0, "reg": 0.0, "rows": 1,
                                                         "rec_nll.m0": 3.0})})
    # m0: a's 40 and d's 3 over a's 4 + d's 1 rows, of 9 held: 43 * 9 / 5; m1: 20 * 8 / 4
    assert got["rec_nll"] == pytest.approx((43 * 9 / 5 + 20 * 8 / 4 + 18) / 9)
    assert got["estimated"] == 1


def test_an_absent_site_without_rows_in_the_window_leaves_it_exact():
    c = _coord_round()
    w = next(w for w in range(len(c.plan)) if not c.holds("kd", c.window_rows(w)).any())
    rows = c.window_rows(w)
    a, b = int(c.holds("ka", rows).sum()), int(c.holds("kb", rows).sum())
    got = window_means(c, w, {"ka": _two(1.0 * a, 2.0 * a, a), "kb": _two(1.0 * b, 2.0 * b, b),
                              "kc": _reply("m2", 4.0 * len(rows), len(rows))})
    assert (got["rec_nll"], got["estimated"]) == (pytest.approx(7.0), 0)


def test_per_modality_sums_that_do_not_add_up_are_refused():
    with pytest.raises(FederationError, match="site a sent metrics whose rec_nll per "
                                              "modality sum to 1e\\+300"):
        window_means(_coord_round(), 0, {"ka": WindowReply(metrics={
            "rec_nll": 1.0, "reg": 0.0, "rows": 2, "rec_nll.m0": 1e300, "rec_nll.m1": 0.0})})


@pytest.mark.parametrize("value, want", [
    (None, None), (-1.0, -1), (3.0, 3), (4.0, None), (-2.0, None), (2.5, None),
    (float("nan"), None), ("x", None), (float("inf"), None)])
def test_a_restart_is_taken_only_as_a_window_before_the_last(value, want):
    """``restored_after`` of a reply to window 5: the last window the site's state had,
    from attach (-1) up to window 3 (4 is no gap); anything else is ignored, not
    recorded (a site's number is not the server's to trust)."""
    metrics = {"rec_nll": 1.0} if value is None else {"rec_nll": 1.0, RESTORED: value}
    assert restored_after(WindowReply(metrics=metrics), 5) == want


def test_withheld_fractions_do_not_give_the_test_size_back():
    """Security reviews (2026-12-06): with report-losses off a site sends no size, yet
    probe = 8/96, majority = 13/96 and a coherence of 37/96, exact, gave the server
    96 as their smallest common denominator; rounded to 0.01, a test set of 24 rows
    still did (0.08, 0.17, 0.38, 0.92 fit 24 first). Rounded to 0.05, the smallest
    size that fits is not the site's, for 20 rows or more."""
    import numpy as np

    from mmvm.federation.window_metrics import FRACTION_STEP, evaluation_withheld

    def fits(sent: list[float]) -> list[int]:
        near = lambda k, n: round(round(k / n / FRACTION_STEP) * FRACTION_STEP, 2)  # noqa: E731
        return [n for n in range(1, 300) if all(any(near(k, n) == v for k in range(n + 1))
                                                for v in sent)]

    exact = {"probe/m0": 8 / 96, "majority/m0": 13 / 96, "coherence/m1->m0": 37 / 96,
             "judge_accuracy/m0": 90 / 96, "classes/m0": 10.0, "n_test": 96.0}
    sent = evaluation_withheld(exact)
    assert "n_test" not in sent and sent["classes/m0"] == 10.0
    assert fits([v for k, v in sent.items() if k != "classes/m0"])[0] != 96
    rng = np.random.default_rng(0)
    for n in (20, 24, 30, 50, 100):
        for _ in range(5):
            hits = rng.integers(0, n + 1, 4)
            got = evaluation_withheld({f"probe/m{i}": h / n for i, h in enumerate(hits)})
            assert fits([v for k, v in got.items() if k.startswith("probe")])[0] != n
