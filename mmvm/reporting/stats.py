"""Runs grouped by (method, beta, other settings) over seeds: mean ± standard error.

The standard error is the sample standard deviation (n - 1 in the denominator) over
sqrt(n). With one seed there is no spread to estimate: the number is shown as
"x (1 seed)" and figures draw no error bar, rather than a made-up one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mmvm.provenance import differences
from mmvm.reporting.runs import WHERE_DATA_LIES, Run

NOT_EVALUATED = "not evaluated"


@dataclass(frozen=True)
class Estimate:
    mean: float
    se: float | None  # None when n == 1
    n: int

    def __str__(self) -> str:
        if self.se is None:
            return f"{fmt(self.mean)} (1 seed)"
        return f"{fmt(self.mean)} ± {fmt(self.se, like=self.mean)}"


def fmt(value: float, like: float | None = None) -> str:
    """Three decimals for scores, one for large numbers such as an NLL of 3000;
    ``like``: format as that number would be (an error next to its mean)."""
    ref = abs(value if like is None else like)
    return f"{value:.1f}" if ref >= 100 else f"{value:.3f}"


def estimate(values: Iterable[float]) -> Estimate | None:
    """Mean ± standard error of ``values``; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return Estimate(mean, None, 1)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return Estimate(mean, math.sqrt(var / len(xs)), len(xs))


def show(est: Estimate | None, runs: int | None = None) -> str:
    """The estimate as a table shows it; ``runs``: the group's size, to say "n=2"
    when fewer of its runs have the number."""
    if est is None:
        return NOT_EVALUATED
    fewer = runs is not None and 1 < est.n < runs
    return f"{est} (n={est.n})" if fewer else str(est)


@dataclass
class Group:
    method: str | None
    beta: float | None
    settings: dict[str, str]  # the settings that tell this group from others
    runs: list[Run] = field(default_factory=list)
    variant: str = ""  # "A", "B", ...: a name for long settings (see name_variants)
    tag: str = ""  # tells apart groups of the same settings (see split_repeated_seeds)

    @property
    def setting_text(self) -> str:
        """The settings, or their variant's name when they are too long to repeat
        (then the tag, if any)."""
        shown = f"settings {self.variant}" if self.variant else ", ".join(
            f"{k}={v}" for k, v in self.settings.items())
        return "; ".join(t for t in (shown, self.tag) if t)

    @property
    def label(self) -> str:
        beta = "?" if self.beta is None else f"{self.beta:g}"
        extra = f" ({self.setting_text})" if self.setting_text else ""
        return f"{self.method or '?'} beta={beta}{extra}"

    def estimate(self, metric: str) -> Estimate | None:
        return estimate(r.metrics.get(metric) for r in self.runs)

    def modality_estimate(self, name: str, metric: str) -> Estimate | None:
        return estimate(r.per_modality.get(name, {}).get(metric) for r in self.runs)

    def label_estimate(self, name: str, label: str) -> Estimate | None:
        return estimate(r.per_label.get(name, {}).get(label) for r in self.runs)

    def seeds(self) -> str:
        """``"3 (seeds 0, 1, 2)"``; unknown seeds are shown as ``?``."""
        seeds = ", ".join("?" if r.seed is None else str(r.seed) for r in self.runs)
        return f"{len(self.runs)} (seed{'s' if len(self.runs) > 1 else ''} {seeds})"


# settings that belong to one method: MMVAE+'s modality-specific latent (the config
# allows it for MMVAE+ only, and mmvm compare gives it one): they vary only where runs
# of one method differ in them, so MMVAE+ is grouped and tested beside the others
METHOD_OWN = frozenset({"model.private_dim"})


def varying_settings(runs: Sequence[Run]) -> list[str]:
    """Settings recorded with more than one value (a run may not record a setting);
    one of :data:`METHOD_OWN` only where runs of one method differ in it.

    Never ``data.root``: the same data on two machines lies in two folders; runs on
    other data differ in another data setting (``dataset.variant``, sample counts, ...),
    and :func:`group_runs` then shows each group's ``data.root`` beside it.
    """
    keys = sorted({k for r in runs for k in r.settings} - {WHERE_DATA_LIES})
    return [k for k in keys if (len({(r.method, r.settings[k]) for r in runs
                                     if k in r.settings}) > len({r.method for r in runs})
                                if k in METHOD_OWN else
                                len({r.settings[k] for r in runs if k in r.settings}) > 1)]


def _show_data_root(group: Group) -> None:
    """Add the folder(s) the group's data was read from to its shown settings."""
    roots = dict.fromkeys(r.settings[WHERE_DATA_LIES] for r in group.runs
                          if WHERE_DATA_LIES in r.settings)
    if roots:
        group.settings = dict(sorted({**group.settings,
                                      WHERE_DATA_LIES: " | ".join(roots)}.items()))


def _agrees(group: Group, run: Run) -> bool:
    return (group.method, group.beta) == (run.method, run.beta) and all(
        group.settings.get(k, v) == v for k, v in run.settings.items())


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Groups in order of method, then beta; a group's runs differ only in seed.

    A run that does not record some setting in which the others differ (a benchmark
    row, say) joins the one group it agrees with, or else gets its own group. Where
    the runs' data differ, each group also shows the ``data.root`` it was read from.
    """
    keys = varying_settings(runs)
    groups: dict[tuple, Group] = {}
    partial = []
    for run in runs:
        if not all(k in run.settings for k in keys):
            partial.append(run)
            continue
        key = (run.method, run.beta, tuple(run.settings[k] for k in keys))
        shown = {k: run.settings[k] for k in keys}
        groups.setdefault(key, Group(run.method, run.beta, shown)).runs.append(run)
    for run in partial:
        fits = [g for g in groups.values() if _agrees(g, run)]
        if len(fits) == 1:
            fits[0].runs.append(run)
            continue
        key = (run.method, run.beta, tuple(run.settings.get(k) for k in keys))
        shown = {k: run.settings[k] for k in keys if k in run.settings}
        groups.setdefault(key, Group(run.method, run.beta, shown)).runs.append(run)
    if any(k.startswith(("data.", "dataset.")) for k in keys):  # runs on other data
        for group in groups.values():
            _show_data_root(group)
    ordered = sorted(groups.values(), key=lambda g: (
        g.method is None, g.method or "", g.beta is None, g.beta or 0.0,
        sorted(g.settings.items())))
    name_variants(ordered)
    return ordered


def split_repeated_seeds(groups: Sequence[Group]) -> tuple[list[Group], list[str]]:
    """A group whose runs repeat a (known) seed becomes one group per run, tagged with
    the run's name: two runs of one seed are not independent seeds, and the group's
    recorded settings evidently do not tell its runs apart, so which runs belong
    together cannot be guessed (pairing them by order would depend on the order the
    inputs were given). Returns the groups and a note for each group split."""
    out: list[Group] = []
    notes: list[str] = []
    for g in groups:
        seeds = [r.seed for r in g.runs if r.seed is not None]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if not repeated:
            out.append(g)
            continue
        verdicts = [f"; seed {seed}: {said}" for seed in repeated
                    if (said := reproduced([r for r in g.runs if r.seed == seed]))]
        notes.append(f"{g.label}: seed{'s' if len(repeated) > 1 else ''} "
                     f"{', '.join(map(str, repeated))} given more than once ("
                     f"{', '.join(r.name for r in g.runs if r.seed in repeated)}): their "
                     "settings as recorded do not tell them apart; each run drawn on its "
                     "own, not averaged as if they were independent seeds" + "".join(verdicts))
        out += [Group(g.method, g.beta, g.settings, [run], g.variant,
                      "; ".join(t for t in (g.tag, f"run {run.name}") if t))
                for run in g.runs]
    return out, notes


def reproduced(runs: Sequence[Run]) -> str | None:
    """Whether runs of one seed ended with the same weights (eval.json's
    weights_sha256), and if not, whether their recorded environments explain it; None
    where a run's evaluation predates the digest."""
    if len(runs) < 2 or any(r.weights is None for r in runs):
        return None
    if len({r.weights for r in runs}) == 1:
        return "the same weights in every run (weights_sha256), a reproduction"
    envs = [(r.name, trainer(r)) for r in runs]
    if all(env for _, env in envs):
        if differences(envs):
            return "other weights, trained in other environments (named above)"
        return ("other weights although trained alike (code, torch, CPU, threads, "
                "device as recorded): not deterministic here, or other data")
    return "other weights; their environments are not all recorded"


def trainer(run: Run) -> dict | None:
    """The environment that trained ``run``: eval.json's trained_with, or where
    evaluation and training were one process (a benchmark's row, which records no
    trained_with) the evaluator's; None where it is not recorded (a federated run:
    its sites')."""
    if "trained" in run.environment:
        return run.environment["trained"] or None
    return None if run.federated else run.environment.get("evaluated")


def series_of(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Groups by method and settings (one line through their betas), in group order:
    ``"mmvm"``, ``"mmvm (settings B)"``, ..."""
    out: dict[str, list[Group]] = {}
    for g in groups:
        extra = f" ({g.setting_text})" if g.setting_text else ""
        out.setdefault(f"{g.method or '?'}{extra}", []).append(g)
    return out


Point = tuple[str, float, float, float | None, float | None]  # label, x, y, x SE, y SE


def tradeoff_points(groups: Sequence[Group], y: str,
                    x: str = "recon_nll") -> dict[str, list[Point]]:
    """Per series (:func:`series_of`) one point per group having both metrics, in
    increasing beta: ``(beta label, x mean, y mean, x SE, y SE)``, SE None for n = 1."""
    series: dict[str, list[Point]] = {}
    for name, members in series_of(groups).items():
        pts = [(g, g.estimate(x), g.estimate(y)) for g in members]
        pts = sorted([p for p in pts if p[1] and p[2]], key=lambda p: p[0].beta or 0.0)
        if pts:
            series[name] = [("?" if g.beta is None else f"{g.beta:g}", ex.mean, ey.mean,
                             ex.se, ey.se) for g, ex, ey in pts]
    return series


def name_variants(groups: Sequence[Group], max_chars: int = 60) -> dict[str, dict[str, str]]:
    """When some group's settings are too long to repeat in every label, give each
    distinct settings a letter; returns letter -> settings (empty when not needed)."""
    if all(len(g.setting_text) <= max_chars for g in groups):
        return {}
    variants: dict[str, dict[str, str]] = {}
    for g in groups:
        key = next((v for v, s in variants.items() if s == g.settings), None)
        if key is None:
            key = _letters(len(variants))
            variants[key] = g.settings
        g.variant = key
    return variants


def _letters(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, ..."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def variants_of(groups: Sequence[Group]) -> dict[str, dict[str, str]]:
    """Letter -> settings, as :func:`name_variants` named them."""
    return {g.variant: g.settings for g in groups if g.variant}


def modality_names(groups: Sequence[Group]) -> list[str]:
    return list(dict.fromkeys(n for g in groups for r in g.runs for n in r.per_modality))
