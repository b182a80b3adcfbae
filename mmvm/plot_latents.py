"""Latents in the plane: one panel per method (or modality), points coloured by
label (the hippocampus paper's figure); latents with D > 2 are projected on their
first two principal components."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from mmvm.plots import plt, save_figure


def _pca2(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def latent_2d(mus: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray] | np.ndarray,
              path: str | Path, label_names: Sequence[str] | None = None,
              max_points: int = 5000, share_axes: bool = False) -> Path:
    """One panel per entry of ``mus`` (e.g. per method), points coloured by label.

    ``labels``: one array for all panels or one per key. D > 2: first two PCs.
    ``share_axes``: one x and y range for all panels (points in one coordinate system).
    Up to 10 classes: one colour each, and a legend; more (position bins along a
    track, an age in years): a sequential colour map over the class ids and a colour
    bar, since ``tab10`` repeats (bins 0 and 10 looked alike). Unknown labels (-1)
    are grey. Beyond ``max_points`` samples, a fixed random subset of them is drawn.
    """
    if not mus:
        raise ValueError("no latents to plot")
    n = len(mus)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False,
                             sharex=share_axes, sharey=share_axes)
    every = np.concatenate([np.ravel(labels[k] if isinstance(labels, Mapping) else labels)
                            for k in mus])
    classes = np.unique(every[every >= 0])
    ordinal = len(classes) > 10
    for ax, (key, mu) in zip(axes[0], mus.items(), strict=True):
        mu = np.asarray(mu, dtype=np.float64)
        lab = np.asarray(labels[key] if isinstance(labels, Mapping) else labels)
        if len(lab) != len(mu):
            raise ValueError(f"{key}: {len(mu)} latents but {len(lab)} labels")
        pts = mu[:, :2] if mu.shape[1] <= 2 else _pca2(mu)
        if pts.shape[1] == 1:
            pts = np.column_stack([pts[:, 0], np.zeros(len(pts))])
        shown = "" if len(pts) <= max_points else f", {max_points:,} of {len(pts):,}"
        if len(pts) > max_points:
            keep = np.sort(np.random.default_rng(0).choice(len(pts), max_points, False))
            pts, lab = pts[keep], lab[keep]
        scale = _scatter_classes(ax, pts, lab, ordinal, label_names, classes)
        ax.set_title(key + ("" if mu.shape[1] <= 2 else " (PCA)") + shown, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    if ordinal:
        bar = fig.colorbar(scale, ax=axes[0].tolist(), label="class id", fraction=0.05)
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    else:
        axes[0][-1].legend(fontsize=7, markerscale=3, loc="center left",
                           bbox_to_anchor=(1, 0.5))
    return save_figure(fig, path)


def _scatter_classes(ax, pts: np.ndarray, lab: np.ndarray, ordinal: bool,
                     label_names: Sequence[str] | None, classes: np.ndarray):
    """The points of one panel, by class: the mappable of the ordinal colour map."""
    unknown = lab < 0
    if unknown.any():
        ax.scatter(pts[unknown, 0], pts[unknown, 1], s=4, alpha=0.4, color="0.7",
                   label="unknown")
    if ordinal:
        return ax.scatter(pts[~unknown, 0], pts[~unknown, 1], s=4, alpha=0.6,
                          c=lab[~unknown], cmap="viridis", vmin=classes.min(),
                          vmax=classes.max())
    cmap = plt.get_cmap("tab10")
    for c in np.unique(lab[~unknown]):
        sel = lab == c
        name = label_names[int(c)] if label_names is not None and int(c) < len(
            label_names) else str(c)
        ax.scatter(pts[sel, 0], pts[sel, 1], s=4, alpha=0.6, color=cmap(int(c) % 10),
                   label=name)
    return None
