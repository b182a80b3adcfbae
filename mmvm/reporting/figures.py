"""The report's figures from grouped runs, as PNG bytes (matplotlib, Agg backend).

- :func:`scatter`: reconstruction error (x) against a score (y), one point per group
  (method, beta, settings) with standard-error bars in both directions (none for one
  seed), a line through a method's betas: the paper's trade-off figure;
- :func:`coherence_bars`: cross- and self-coherence per group, with error bars;
- :func:`coherence_heatmaps`: each group's coherence matrix (mean over its seeds);
- :func:`curves`: training curves of the runs' ``metrics.csv`` (:func:`mmvm.plots.loss_curves`).
"""

from __future__ import annotations

import io
import math
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmvm.reporting.runs import METRICS  # noqa: E402
from mmvm.reporting.stats import Group, tradeoff_points  # noqa: E402


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _errors(ax, xs, ys, xerr, yerr, color) -> None:
    """Error bars where there is a standard error (n > 1); none for one seed."""
    for x, y, ex, ey in zip(xs, ys, xerr, yerr, strict=True):
        if ex is not None or ey is not None:
            ax.errorbar([x], [y], xerr=None if ex is None else [ex],
                        yerr=None if ey is None else [ey], fmt="none", ecolor=color,
                        capsize=3, lw=1)


def shared_chance(groups: Sequence[Group]) -> float | None:
    """The groups' chance (the commonest test label's share) where every group has
    the same one: a line for all of them (runs of other data have another)."""
    found = [e.mean if (e := g.estimate("chance")) else None for g in groups]
    if not found or None in found or max(found) - min(found) > 1e-9:
        return None
    return round(found[0], 4)


def scatter(groups: Sequence[Group], y: str) -> bytes | None:
    """Reconstruction NLL vs ``y`` with error bars and, where the groups share one,
    a dashed chance line; points all within 0.01 are drawn from 0 (a zoomed axis
    made methods all at chance look ranked); None when no group has both."""
    from mmvm.plots import draw_tradeoff, point_text, y_scale

    series = tradeoff_points(groups, y)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    draw_tradeoff(ax, series)
    scale = y_scale(ax, series, shared_chance(groups))
    ax.set_xlabel(METRICS["recon_nll"][0] + "  (lower is better)")
    ax.set_ylabel(METRICS[y][0])
    ax.set_title(f"reconstruction vs {METRICS[y][0]}\n({point_text(groups, y)}{scale})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(fig)


def coherence_bars(groups: Sequence[Group]) -> bytes | None:
    """Cross- and self-coherence per group; None when no group has coherence."""
    shown = [g for g in groups if g.estimate("coherence") or g.estimate("coherence_self")]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(shown) + 2), 3.8))
    x = np.arange(len(shown))
    for offset, metric, color in ((-0.2, "coherence", "C0"), (0.2, "coherence_self", "C1")):
        est = [g.estimate(metric) for g in shown]
        ax.bar(x + offset, [e.mean if e else 0.0 for e in est], width=0.4, color=color,
               hatch=None if metric == "coherence" else "//", label=METRICS[metric][0])
        _errors(ax, x + offset, [e.mean if e else 0.0 for e in est], [None] * len(est),
                [e.se if e else None for e in est], "black")
    ax.set_xticks(x, [textwrap.fill(g.label, 48) for g in shown], rotation=40, ha="right",
                  fontsize=7)
    chance = shared_chance(shown)
    if chance is not None:
        ax.axhline(chance, ls="--", lw=1, color="grey", label=f"chance ({chance:g})")
    ax.set_ylabel("coherence (fraction judged right)")
    ax.set_title("coherence per method and beta (bars: ± standard error over seeds)",
                 fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _mean_matrix(group: Group) -> tuple[list[str], np.ndarray] | None:
    found = [r.coherence_matrix for r in group.runs if r.coherence_matrix]
    if not found:
        return None
    names = found[0][0]
    same = [np.array(m, dtype=float) for n, m in found if n == names]
    return names, np.nanmean(np.stack(same), axis=0) if len(same) > 1 else same[0]


MAX_HEATMAPS = 24


def coherence_heatmaps(groups: Sequence[Group]) -> bytes | None:
    """One heat map per group (the first MAX_HEATMAPS): source modality (rows) ->
    generated modality (columns)."""
    panels = [(g, m) for g in groups if (m := _mean_matrix(g))][:MAX_HEATMAPS]
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols + 0.8, 3.2 * rows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, (g, (names, matrix)) in zip(axes.flat, panels, strict=False):
        image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=45)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("generated", fontsize=7)
        ax.set_ylabel("from", fontsize=7)
        beta = "?" if g.beta is None else f"{g.beta:g}"
        # whole: two groups may differ only in a setting's last characters
        setting = textwrap.fill(g.setting_text, 36) + "\n" if g.setting_text else ""
        title = f"{g.method or '?'} beta={beta}\n{setting}n={len(g.runs)}"
        ax.set_title(title, fontsize=8)
        if len(names) <= 6:
            for (i, j), v in np.ndenumerate(matrix):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.5 else "black")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    return png_bytes(fig)


def curves(paths: Sequence[Path], labels: Sequence[str],
           keys: Sequence[str] = ("loss", "rec_nll", "reg")) -> bytes:
    """Training curves, one line per run; columns a run lacks are skipped."""
    from mmvm.plots import loss_curves

    with tempfile.TemporaryDirectory() as tmp:
        out = loss_curves(list(paths), Path(tmp) / "curves.png", list(keys), list(labels))
        return out.read_bytes()
