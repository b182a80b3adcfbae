"""Each method against MMVM: Welch's t-test and Holm's adjustment, checked against
their closed forms, and the report's table of them."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from mmvm.reporting.versus import holm, welch
from tests.reporting.pages import PROBES, RECON, write_report


def test_holm_multiplies_the_kth_smallest_p_by_m_minus_k_plus_1_and_stays_monotone():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.3]) == [0.3]  # one test: its own p
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_welch_is_the_closed_form_and_scipys():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    diff, se, t, p = welch(a, b)
    # variances 1 and 4: se = sqrt(1/3 + 4/3); df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2)
    assert (diff, se) == pytest.approx((-2.0, math.sqrt(5 / 3)))
    assert t == pytest.approx(-2.0 / math.sqrt(5 / 3))
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 50 / 17))
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch([1.0, 1.0], [1.0, 1.0])[3] == 1.0  # no spread, no difference
    assert welch([2.0, 2.0], [1.0, 1.0])[3] == 0.0


def test_the_report_tests_each_method_against_mmvm_per_metric(tmp_path, fake_runs):
    _, page = write_report(tmp_path, *fake_runs)
    table = next(t for t in page.tables if t[0][0] == "metric")
    header, *rows = table
    got = {(r[0], r[1]): dict(zip(header, r, strict=True)) for r in rows}
    probe = got[("latent probe (mean over modalities)", "poe beta=1")]
    _, _, t, p = welch(PROBES["poe"], PROBES["mmvm"])
    assert probe["Welch t"] == f"{t:.2f}" and probe["p"] == f"{p:.3g}"
    assert probe["seeds (group / reference)"] == "3 / 3"
    diff = statistics.mean(PROBES["poe"]) - statistics.mean(PROBES["mmvm"])
    assert probe["difference (group - mmvm) ± SE"].startswith(f"{diff:.3f} ± ")
    assert probe["p, Holm (over n tests) *: < 0.05"].startswith(f"{p:.3g} (1)")
    recon = got[("reconstruction NLL (test, per sample, summed over modalities)", "poe beta=1")]
    assert recon["direction"] == "lower is better"
    assert recon["Welch t"] == f"{welch(RECON['poe'], RECON['mmvm'])[2]:.2f}"
    assert not any(k[1].startswith("mmvm") for k in got)  # not against itself


def test_with_one_seed_the_report_says_why_nothing_is_tested(tmp_path, fake_runs):
    one_seed = [r for r in fake_runs if r.name.endswith("seed0")]
    text, page = write_report(tmp_path, *one_seed)
    assert "No comparison with MMVM: a test needs at least 2 seeds" in text
    assert not [t for t in page.tables if t[0][0] == "metric"]


def test_no_spread_on_either_side_is_not_tested():
    """A hospital walkthrough's probes were 1.000 for every seed of both methods:
    the table read 't 0.00, p 1', a test that is undefined there."""
    from mmvm.reporting.runs import Run
    from mmvm.reporting.stats import Group
    from mmvm.reporting.versus import comparisons

    def group(method, probes, recon):
        runs = [Run(f"{method}{i}", "x", "results row", metrics={"probe": p, "recon_nll": r})
                for i, (p, r) in enumerate(zip(probes, recon, strict=True))]
        return Group(method, 1.0, {}, runs)

    rows = comparisons([group("mmvm", [1.0, 1.0, 1.0], [10.0, 11.0, 12.0]),
                        group("independent", [1.0, 1.0, 1.0], [9.0, 9.5, 9.7])])
    probe = next(r for r in rows if r[0].startswith("latent probe"))
    assert probe[4:7] == ["-", "no spread over seeds: no test", "-"]
    recon = next(r for r in rows if r[0].startswith("reconstruction"))
    assert recon[6].startswith(f"{recon[5]} (1)")  # the only test: Holm leaves its p


def test_mmvaeplus_own_latent_does_not_keep_it_from_the_tests():
    """mmvm compare gives MMVAE+ a modality-specific latent (model.private_dim) that
    no other method may have; grouped by it, MMVAE+ matched no MMVM group and left
    the tests without a word (a researcher's walkthrough: the one method that beat
    MMVM's probe). A setting that does differ is named under the table."""
    from mmvm.reporting.runs import Run
    from mmvm.reporting.stats import group_runs
    from mmvm.reporting.versus import comparisons, untested, versus_section

    def runs(method, private, probes, lr="0.001"):
        return [Run(f"{method}{i}", "x", "results row", method=method, beta=1.0, seed=i,
                    settings={"model.private_dim": private, "train.lr": lr},
                    metrics={"probe": p}) for i, p in enumerate(probes)]

    groups = group_runs(runs("mmvm", "0", [0.80, 0.82, 0.85])
                        + runs("mmvaeplus", "8", [0.90, 0.91, 0.93])
                        + runs("poe", "0", [0.7, 0.72, 0.71], lr="0.01"))
    labels = {g.method: g.label for g in groups}
    assert "private_dim" not in labels["mmvaeplus"] + labels["mmvm"]
    tested = [r[1] for r in comparisons(groups) if r[0].startswith("latent probe")]
    assert tested == [labels["mmvaeplus"]]
    assert untested(groups) == [labels["poe"]]  # another learning rate: said
    section = versus_section(groups)
    assert any(f"Not tested, for want of a MMVM group at the same beta and settings: "
               f"{labels['poe']}." in getattr(b, "text", "") for b in section.blocks)
    own = group_runs(runs("mmvaeplus", "8", [0.9, 0.91]) + runs("mmvaeplus", "16", [0.9, 0.9]))
    assert len(own) == 2  # one method's runs that differ in it: two groups
