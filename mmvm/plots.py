"""The paper's figures (matplotlib, Agg backend: no display needed).

- :func:`mmvm.plot_generations.generation_grid`: cross-modal generation, each
  modality drawn as it reads best (images, heatmaps, curves);
- :func:`scatter_recon_vs` / :func:`scatter_runs`: reconstruction error (x) against
  probe accuracy or coherence (y), one point per (method, beta, settings) as ``mmvm
  report`` groups runs (seeds averaged), one colour per series, a line through a
  series' betas in increasing order;
- :func:`mmvm.plot_latents.latent_2d`: one panel per method, latents coloured by
  label (the hippocampus figure);
- :func:`loss_curves`: training curves from ``metrics.csv`` files.

Every function writes a PNG atomically and returns its path.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mmvm.atomic import atomic_write  # noqa: E402
from mmvm.metrics_csv import read_metrics  # noqa: E402
from mmvm.reporting.stats import Point  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (no half-written image) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return Path(path)


def as_image(t: torch.Tensor) -> np.ndarray:
    """[C, H, W] (C = 1 or 3) -> [H, W, 3] in [0, 1]; a matrix (e.g. neurons x time
    bins) -> itself as a heatmap, scaled to its own range; anything else -> a grey
    square of its values."""
    a = t.detach().float().cpu().numpy()
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = np.repeat(a, 3, 0) if a.shape[0] == 1 else a
        return np.clip(a.transpose(1, 2, 0), 0, 1)
    if a.ndim == 2:
        span = a.max() - a.min()
        unit = (a - a.min()) / span if span > 0 else np.zeros_like(a)
        return plt.get_cmap("viridis")(unit)[..., :3]
    flat = a.reshape(-1)
    span = flat.max() - flat.min()
    flat = (flat - flat.min()) / span if span > 0 else np.zeros_like(flat)
    side = math.ceil(math.sqrt(flat.size))
    grid = np.zeros(side * side, np.float32)
    grid[:flat.size] = flat
    return np.repeat(grid.reshape(side, side)[..., None], 3, -1)


def tile_rows(rows: list[list[np.ndarray]], pad: int = 1) -> tuple[np.ndarray, list[float]]:
    """Rows of [H, W, 3] images -> one canvas and each row's vertical centre. Each row
    is as tall as its tallest image (a modality of 8 neurons under one of 40 keeps
    its own height); images are centred in their cell."""
    heights = [max(im.shape[0] for im in r) for r in rows]
    w = max(im.shape[1] for r in rows for im in r)
    cols = max(len(r) for r in rows)
    tops = np.cumsum([pad] + [h + pad for h in heights[:-1]]).tolist()
    canvas = np.ones((sum(heights) + pad * (len(rows) + 1), cols * (w + pad) + pad, 3))
    for r, top, h in zip(rows, tops, heights, strict=True):
        for j, im in enumerate(r):
            y = top + (h - im.shape[0]) // 2
            x = pad + j * (w + pad) + (w - im.shape[1]) // 2
            canvas[y:y + im.shape[0], x:x + im.shape[1]] = im
    return canvas, [top + h / 2 for top, h in zip(tops, heights, strict=True)]


_Y_LABEL = {"probe": "latent probe accuracy (mean over modalities)",
            "coherence": "coherence (mean over pairs m != m')",
            "probe_all": "pooled probe accuracy (all modalities' latents, one classifier)",
            "probe_agg": "aggregated probe accuracy (mean over modalities)"}

_METRIC = {"probe": "probe", "coherence": "coherence", "probe_all": "probe_all",
           "probe_agg": "probe_aggregated"}  # --y -> the report's metric name


def scatter_recon_vs(results: Sequence[Mapping], path: str | Path, y: str = "probe",
                     title: str | None = None, sources: Sequence[str] | None = None,
                     chance: float | None = None,
                     log: Callable[[str], None] | None = None) -> Path:
    """Reconstruction NLL (x) vs ``y`` ("probe" | "coherence" | "probe_all" | "probe_agg").

    ``results``: flat rows (see :func:`mmvm.evaluation.summary_row`) or full
    :func:`~mmvm.evaluation.evaluate_run` dicts; ``sources``: the file each row came
    from (rows of different files are never averaged together). ``chance``: drawn as
    a dashed line (default: the rows' common ``"chance"``, if any). See
    :func:`scatter_runs` for how rows are grouped.
    """
    from mmvm.reporting.collect import ResultsFile, runs_from_rows

    if not results:
        raise ValueError("no results to plot")
    names = [str(s) for s in sources] if sources is not None else ["results"] * len(results)
    by_source: dict[str, list[dict]] = {}
    for row, src in zip(results, names, strict=True):
        by_source.setdefault(src, []).append(dict(row))
    runs = [run for src, rows in by_source.items()
            for run in runs_from_rows(ResultsFile(Path(src), rows))]
    return scatter_runs(runs, path, y, title, common_chance(results) if chance is None
                        else chance, log)


def scatter_runs(runs: Sequence, path: str | Path, y: str = "probe", title: str | None = None,
                 chance: float | None = None,
                 log: Callable[[str], None] | None = None) -> Path:
    """The trade-off figure of :class:`mmvm.reporting.runs.Run` s, grouped as ``mmvm
    report`` groups them (:func:`mmvm.reporting.stats.group_runs`): one point per
    (method, beta, settings), mean ± standard error over the seeds of runs that differ
    only in their seed. Runs of other settings are other series ("mmvm (settings B)",
    the settings written under the plot); rows of different results files too; runs
    repeating a seed are not averaged (each run its own series; ``log`` says so).
    """
    from mmvm.reporting.collect import deduplicate
    from mmvm.reporting.stats import group_runs, split_repeated_seeds, tradeoff_points

    if y not in _Y_LABEL:
        raise ValueError(f"y must be one of {sorted(_Y_LABEL)}, got {y!r}")
    notes: list[str] = []
    runs = deduplicate(tag_results_files(runs), notes)
    groups, split = split_repeated_seeds(group_runs(runs))
    series = tradeoff_points(groups, _METRIC[y])
    if not series:
        raise ValueError(f"none of the {len(runs)} results has both recon_nll and {y}")
    for note in notes + split:
        (log or _warn)(note)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    draw_tradeoff(ax, series)
    scale = y_scale(ax, series, chance)
    ax.set_xlabel("reconstruction error (test NLL per sample)")
    ax.set_ylabel(_Y_LABEL[y])
    ax.set_title(f"{title or f'reconstruction vs {y}'}\n({point_text(groups, y)}{scale})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _settings_footnote(fig, groups)
    return save_figure(fig, path)


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def common_chance(rows: Sequence[Mapping]) -> float | None:
    """The rows' ``"chance"`` (a number, or an ``evaluate_run`` dict's ``{"majority":
    ...}``) when every row gives the same one (a row without one may be of other data,
    whose chance another row's would misstate)."""
    found = {c.get("majority") if isinstance(c := r.get("chance"), Mapping) else c
             for r in rows}
    if not all(isinstance(c, (int, float)) and math.isfinite(c) for c in found):
        return None
    return float(found.pop()) if len(found) == 1 else None


def tag_results_files(runs: Sequence) -> list:
    """Results rows of several files get their file as a setting: their settings are
    mostly not recorded, so rows of two benchmarks could not be told apart."""
    files = {r.source.rpartition("#")[0] for r in runs if r.kind == "results row"}
    names = short_names(files)
    for r in runs:
        if r.kind == "results row" and len(files) > 1:
            r.settings["file"] = names[r.source.rpartition("#")[0]]
    return list(runs)


def short_names(paths: Collection[str]) -> dict[str, str]:
    """Each path by its fewest last parts that still tell it from the others
    (``a/x/results.csv``, ``b/x/results.csv`` -> ``a/x/results.csv``, ...)."""
    parts = {p: Path(p).parts for p in paths}
    for k in range(1, max(map(len, parts.values()), default=0) + 1):
        names = {p: "/".join(ps[-k:]) for p, ps in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {p: p for p in paths}


def point_text(groups: Sequence, y: str) -> str:
    """``"point labels: beta; bars: ± standard error over 3 seeds"`` (``y``: a
    figure's name, ``probe``, or a metric of the runs, ``coherence``)."""
    ns = sorted({e.n for g in groups if (e := g.estimate(_METRIC.get(y, y)))})
    if ns[-1] == 1:
        return "point labels: beta; 1 seed per point, no error bars"
    many = f"{ns[0]}-{ns[-1]}" if len(ns) > 1 else str(ns[0])
    return f"point labels: beta; bars: ± standard error over {many} seeds"


def y_scale(ax, series: Mapping[str, Sequence[Point]], chance: float | None) -> str:
    """A dashed line at ``chance``, if given; points all within 0.01 of each other are
    shown from 0 (a zoomed axis would make a tiny spread look large). Returns what
    the title should add."""
    said = ""
    if chance is not None:
        ax.axhline(chance, ls="--", lw=1, color="grey", label=f"chance ({chance:g})")
        said = f"; dashed: chance {chance:g}"
    ys = [p[2] for pts in series.values() for p in pts]
    spread = max(ys) - min(ys)
    if spread >= 0.01:
        return said
    low, high = ax.get_ylim()
    ax.set_ylim(min(0.0, low), max(high, 1.15 * max(ys)))
    return f"{said}; all points within {spread:.3f}: y axis from 0"


def _settings_footnote(fig, groups: Sequence) -> None:
    """What "settings A", "settings B" of the legend are, under the plot."""
    from mmvm.reporting.stats import variants_of

    lines = [textwrap.fill(f"settings {k}: " + ", ".join(f"{a}={b}" for a, b in s.items()),
                           110) for k, s in variants_of(groups).items()]
    if lines:
        fig.text(0.01, -0.01, "\n".join(lines), fontsize=6, va="top", ha="left")


def draw_tradeoff(ax, series: Mapping[str, Sequence[Point]]) -> None:
    """The paper's trade-off figure on ``ax``: per series (a method) a line through its
    points (one per beta, labelled), with standard-error bars where a point has one
    (none for a single seed). A method has its colour in every figure
    (:mod:`mmvm.method_styles`)."""
    from mmvm.method_styles import series_styles

    styles = series_styles(list(series))
    for name, points in series.items():
        color, line, marker = styles[name]
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.plot(xs, ys, color=color, ls=line, marker=marker, ms=5, label=name[:60])
        for label, x, y, ex, ey in points:
            if ex is not None or ey is not None:
                ax.errorbar([x], [y], xerr=None if ex is None else [ex],
                            yerr=None if ey is None else [ey], fmt="none", ecolor=color,
                            capsize=3, lw=1)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 3),
                        fontsize=7, color=color)


def _check_curve_keys(runs: Sequence[Mapping], paths: Sequence,
                      keys: Sequence[str]) -> None:
    """Raise ``ValueError`` for a run without epochs or a key no run has (a panel that
    would be empty), naming the columns there are."""
    if not keys:
        raise ValueError("no metrics to plot: give at least one column name")
    for run, p in zip(runs, paths, strict=True):
        if "epoch" not in run:
            raise ValueError(f"{p}: no 'epoch' column; is it a training metrics.csv?")
    have = list(dict.fromkeys(k for run in runs for k in run if k != "epoch"))
    unknown = [k for k in keys if k not in have]
    if unknown:
        where = "the metrics file" if len(runs) == 1 else "any of the metrics files"
        raise ValueError(f"{', '.join(map(repr, unknown))}: not a column of {where}; "
                         f"the columns are {', '.join(have)}")


def curve_axis(runs: Sequence[Mapping]) -> str:
    """"step" where a federated run (a row per window, several per epoch) is among
    ``runs`` (read metrics.csv columns) and every run has steps, else "epoch"."""
    return "step" if any("window" in r for r in runs) and all("step" in r for r in runs) \
        else "epoch"


def loss_curves(metrics_paths: Sequence[str | Path], path: str | Path,
                keys: Sequence[str] = ("loss", "rec_nll", "reg"),
                labels: Sequence[str] | None = None) -> Path:
    """One panel per metric, one line per run (label: the run folder's name).

    A run with few epochs is drawn with markers (one epoch: a single point). A key
    that no run has raises ``ValueError`` listing the columns there are. With a
    federated run among them the x axis is the optimiser step.
    """
    if not metrics_paths:
        raise ValueError("no metrics.csv given")
    runs = [read_metrics(p) for p in metrics_paths]
    _check_curve_keys(runs, metrics_paths, keys)
    labels = list(labels) if labels else [Path(p).parent.name or str(p) for p in metrics_paths]
    # a federated metrics.csv has a row per window, several per epoch: by step, as
    # its own curves.png (a centralized one has steps too, so both fit one axis)
    x = curve_axis(runs)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for i, (run, lab) in enumerate(zip(runs, labels, strict=False)):
            if key in run:  # a run keeps its colour in every panel, with or without it
                marker = "." if len(run[x]) < 50 else None
                ax.plot(run[x], run[key], marker=marker, label=lab, color=f"C{i % 10}")
        ax.set_xlabel("optimiser step" if x == "step" else "epoch")
        xs = {v for run in runs if key in run for v in run[x]}
        if len(xs) == 1:  # one point: a tick there (an axis around it would read
            ax.set_xticks(sorted(xs))  # 0.96 .. 1.04)
        else:  # no epoch 1.2; not a tick at every point (steps 10, 20 and 94 read "1020")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
    # name every run, on the fullest panel: a federated run of before its "loss"
    # column has no line under "loss"
    drawn = {(ln.get_label(), ln.get_color()): ln for a in axes[0] for ln in a.get_lines()}
    max(axes[0], key=lambda a: len(a.get_lines())).legend(
        drawn.values(), [lab for lab, _ in drawn], fontsize=7)
    return save_figure(fig, path)
