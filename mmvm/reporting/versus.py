"""Each method against MMVM, as a reader of the summary table would test it: Welch's
t-test over seeds at the same beta and settings, with the p-values adjusted for the
number of comparisons (Holm), so that six baselines at 5 % each do not make one
chance "win" look like a finding.

With 3 seeds a test has little power: a p-value above 0.05 says the seeds do not
tell the two apart, not that they are equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmvm.reporting.document import Paragraph, Section, Table
from mmvm.reporting.runs import METRICS
from mmvm.reporting.stats import Group, fmt

REFERENCE = "mmvm"
TESTED = ("probe", "coherence", "recon_nll", "probe_all", "probe_aggregated",
          "imputation_nll")


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest p times (m - k + 1), kept
    non-decreasing in that order and at most 1. Controls the chance of any false
    finding among the m tests at the nominal level, whatever their dependence."""
    m = len(ps)
    out = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda j: ps[j])):
        running = max(running, min(1.0, (m - k) * ps[i]))
        out[i] = running
    return out


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean of ``a`` minus mean of ``b``, its standard error, Welch's t and its
    two-sided p (Welch-Satterthwaite degrees of freedom); where both samples are
    constant the test is undefined: se 0, and t and p as the limit (0 and 1 where
    equal, inf and 0 where not), which :func:`comparisons` does not report."""
    from scipy import stats

    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se = math.sqrt(va / na + vb / nb)
    if se == 0:
        return ma - mb, 0.0, 0.0 if ma == mb else math.copysign(math.inf, ma - mb), \
            1.0 if ma == mb else 0.0
    t = (ma - mb) / se
    df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return ma - mb, se, t, float(2 * stats.t.sf(abs(t), df))


def _values(group: Group, metric: str) -> list[float]:
    return [float(v) for r in group.runs
            if (v := r.metrics.get(metric)) is not None and math.isfinite(v)]


def comparisons(groups: Sequence[Group], reference: str = REFERENCE) -> list[list[str]]:
    """Per metric, one row per group of another method that has a ``reference``
    group of the same beta, settings and tag, with at least 2 seeds on both sides;
    Holm's adjustment over the rows of one metric (one question: is the reference
    better or worse than the others on it)."""
    refs = {_key(g): g for g in groups if g.method == reference}
    rows = []
    for metric in TESTED:
        found = []
        for g in groups:
            ref = refs.get(_key(g))
            if g.method == reference or ref is None:
                continue
            a, b = _values(g, metric), _values(ref, metric)
            if len(a) >= 2 and len(b) >= 2:
                found.append((g, len(a), len(b), sum(b) / len(b), *welch(a, b)))
        # no spread on either side (a probe at 1.000 for every seed): no test
        tested = [i for i, row in enumerate(found) if row[5] > 0]
        adjusted = dict(zip(tested, holm([found[i][-1] for i in tested]), strict=True))
        better = "higher" if METRICS[metric][1] else "lower"
        for i, (g, na, nb, like, diff, se, t, p) in enumerate(found):
            q = adjusted.get(i)
            test = [f"{t:.2f}", f"{p:.3g}", f"{q:.3g} ({len(tested)})" + " *" * (q < 0.05)] \
                if q is not None else ["-", "no spread over seeds: no test", "-"]
            rows.append([METRICS[metric][0], g.label, f"{na} / {nb}",
                         f"{fmt(diff, like=like)} ± {fmt(se, like=like)}", *test,
                         f"{better} is better"])
    return rows


def _key(g: Group) -> tuple:
    return g.beta, tuple(sorted(g.settings.items())), g.tag


def untested(groups: Sequence[Group], reference: str = REFERENCE) -> list[str]:
    """The groups of other methods that no ``reference`` group matches (another beta
    or setting): said under the table, so that a method left out is not read as one
    the reference beat."""
    refs = {_key(g) for g in groups if g.method == reference}
    return [g.label for g in groups if g.method != reference and _key(g) not in refs]


def versus_section(groups: Sequence[Group], reference: str = REFERENCE) -> Section | None:
    """The table, or None where no method has a reference group to compare with."""
    if not any(g.method == reference for g in groups):
        return None
    rows = comparisons(groups, reference)
    section = Section(f"Against {reference.upper()}")
    left = untested(groups, reference)
    if left:
        section.add(Paragraph(
            f"Not tested, for want of a {reference.upper()} group at the same beta and "
            f"settings: {', '.join(left)}.", note=True))
    if not rows:
        return section.add(Paragraph(
            f"No comparison with {reference.upper()}: a test needs at least 2 seeds of "
            f"a method and of {reference.upper()} at the same beta and settings.",
            note=True))
    return section.add(Table(
        ["metric", "group", "seeds (group / reference)",
         f"difference (group - {reference}) ± SE", "Welch t", "p",
         "p, Holm (over n tests) *: < 0.05", "direction"], rows,
        caption=f"Welch's t-test of each method against {reference.upper()} at the "
        f"same beta and settings, over seeds; p adjusted with Holm's method over the "
        f"n comparisons of the same metric. With few seeds a test has little power: "
        f"p above 0.05 means the seeds do not tell the two apart, not that they are "
        f"equal."))
