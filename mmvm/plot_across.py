"""The decoding-across matrix (:mod:`mmvm.latents_across`) as a heat map: rows the
latents a probe was fitted on, columns those it was scored on, each cell its
accuracy, the colour scale from the column's chance level (below it: red) to 1."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mmvm.plots import plt, save_figure


def across_heatmap(result: dict, path: str | Path) -> Path:
    """Write the heat map of ``result`` (:func:`~mmvm.latents_across.across_matrix`
    plus its ``label``) as a PNG at ``path``."""
    names, matrix = result["names"], np.array(result["matrix"], dtype=float)
    chance = np.array([result["chance"][n] for n in names])
    # each cell against its column's chance: 0 at chance, 1 at perfect, < 0 below
    lift = (matrix - chance[None, :]) / np.maximum(1 - chance[None, :], 1e-9)
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 3.0, 0.9 * k + 1.8))
    image = ax.imshow(lift, vmin=-1, vmax=1, cmap="RdBu")
    for (i, j), v in np.ndenumerate(matrix):
        if math.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(lift[i, j]) > 0.6 else "black")
    ax.set_xticks(range(k), [f"{n}\n(chance {c:.2f})" for n, c in zip(names, chance,
                                                                       strict=True)],
                  fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("scored on")
    ax.set_ylabel("fitted on")
    ax.set_title(f"probe of {result['label']} across latents ({result['folds']}-fold "
                 f"cross-validated by sample or group)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label="above chance (0: chance, 1: all right)")
    return save_figure(fig, path)
