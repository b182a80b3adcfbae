"""Cross-modal generation, drawn as each modality reads best.

Per source modality m a block whose first row is the input x_m and whose next rows
are the generations of every modality m' decoded from q(z | x_m) (the latent
:func:`mmvm.evaluation.conditional_latent` gives for m', its mean), shown as the
likelihood's mean (``MultimodalVAE.generate``). Each row has its own panel:

- images ([C, H, W]) keep their aspect ratio and grey levels (a 80 x 64 view is not
  stretched to the panel);
- matrices (neurons x time bins) are heatmaps, each scaled to its own range;
- vectors (lab values, features) are curves over their dimensions, one slot per
  sample, with the sample's own values in grey behind a generated one where the
  sample has that modality, so a reader sees how close the generation comes;
- token ids (captions) are a grey square of their values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmvm.plots import as_image, plt, save_figure, tile_rows

_VECTOR_ROW_INCHES = 0.7
_MATRIX_ROW_INCHES = 0.9
_TITLE_INCHES = 0.6  # between blocks, for the next block's title and class names
_TRUE_COLOUR = "0.65"


def row_kind(spec) -> str:
    """How a modality's rows are drawn: "image", "matrix", "vector" or "square"."""
    if spec.kind == "image":
        return "image"
    if spec.kind == "vector":
        return "matrix" if len(spec.shape) == 2 else "vector"
    return "square"


def _row_inches(kind: str, shape: Sequence[int], n: int, width: float) -> float:
    """A row's height: an image row is as tall as its images at the panels' width."""
    if kind == "image":
        return width * shape[-2] / (n * (shape[-1] + 1))
    if kind == "square":
        return width / n
    return _MATRIX_ROW_INCHES if kind == "matrix" else _VECTOR_ROW_INCHES


def draw_vectors(ax, values: torch.Tensor, truth: torch.Tensor | None = None) -> None:
    """Each sample's vector a curve in its own slot; ``truth`` (same shape, NaN rows
    where a sample lacks the modality) in grey behind it."""
    vals = values.detach().float().cpu().reshape(len(values), -1).numpy()
    d = vals.shape[1]
    marker = "." if d <= 32 else None
    for j, v in enumerate(vals):
        xs = j * (d + 1) + np.arange(d)
        if truth is not None:
            ax.plot(xs, truth[j].reshape(-1).cpu().numpy(), color=_TRUE_COLOUR, lw=1,
                    marker=marker, ms=2)
        ax.plot(xs, v, color="C0", lw=1, marker=marker, ms=2)
        if j:
            ax.axvline(j * (d + 1) - 1, color="0.85", lw=0.8)
    ax.set_xlim(-1, len(vals) * (d + 1) - 1)
    ax.set_yticks([])


def draw_row(ax, kind: str, cells: torch.Tensor, truth: torch.Tensor | None = None) -> None:
    """One row of a block: ``cells`` [k, *shape] drawn as ``kind`` says."""
    if kind == "vector":
        draw_vectors(ax, cells, truth)
    else:
        canvas, _ = tile_rows([[as_image(c) for c in cells]])
        ax.imshow(canvas, interpolation="nearest",
                  aspect="auto" if kind == "matrix" else "equal")
        ax.set_yticks([])
    ax.set_xticks([])


def column_centres(kind: str, shape: Sequence[int], k: int) -> list[float]:
    """Where each of ``k`` samples' cells is centred along a row of ``kind``, in the
    row's x coordinates (an image row's pixels: :func:`mmvm.plots.tile_rows` puts a
    1 px gap before each cell; a vector row: a slot of d + 1 values)."""
    if kind == "vector":
        d = int(np.prod(shape))
        return [j * (d + 1) + (d - 1) / 2 for j in range(k)]
    w = shape[-1] if kind != "square" else as_image(torch.zeros(*shape)).shape[1]
    return [1 + j * (w + 1) + w / 2 - 0.5 for j in range(k)]


def _truth(batch: dict, names: Sequence[str], target: str) -> torch.Tensor:
    """The samples' own x_target, NaN where a sample lacks it."""
    x = batch["x"][target].float().clone()
    x[~batch["mask"][:, list(names).index(target)].bool()] = float("nan")
    return x


def generation_grid(model, dataset, path: str | Path, n: int = 8, method: str = "mmvm",
                    rows: Sequence[int] | None = None, label_name: str = "label",
                    label_names: Sequence[str] | None = None) -> Path:
    """:func:`generation_figure` written as a PNG at ``path`` (atomically)."""
    return save_figure(generation_figure(model, dataset, n, method, rows, label_name,
                                         label_names), path)


@torch.no_grad()
def generation_figure(model, dataset, n: int = 8, method: str = "mmvm",
                      rows: Sequence[int] | None = None, label_name: str = "label",
                      label_names: Sequence[str] | None = None):
    """Conditional generations (see the module): per source m, the input row then one
    row per target. Samples: ``rows`` or the first ``n`` samples having the source
    modality; their labels (the column ``label_name``) are named in the title, by the
    class names the files store (``label_names``, id order) where given, else by id."""
    from mmvm.evaluation import conditional_latent

    model.eval()
    device = next(model.parameters()).device
    names = list(model.names)
    kinds = {t: row_kind(model.specs[t]) for t in names}
    k = len(rows) if rows is not None else n
    # a tile per sample: 0.9 in, wider for larger images up to their own pixels (dpi
    # 120: a 224 px X-ray shown at 224 px, not shrunk to ~100)
    widest = max([model.specs[t].shape[-1] for t in names if kinds[t] == "image"] or [0])
    width = k * max(0.9, min(widest, 224) / 120)  # the panels'; row names go left
    row = {t: _row_inches(kinds[t], model.specs[t].shape, k, width) for t in names}
    blocks = [[row[src]] + [row[t] for t in names] for src in names]
    total = sum(map(sum, blocks))
    fig = plt.figure(figsize=(width, total * 1.1 + _TITLE_INCHES * len(names)))
    outer = fig.add_gridspec(len(names), 1, height_ratios=list(map(sum, blocks)),
                             hspace=_TITLE_INCHES / (total / len(names)),
                             left=0, right=1, top=1, bottom=0)
    for b_i, src in enumerate(names):
        inner = outer[b_i].subgridspec(len(names) + 1, 1, height_ratios=blocks[b_i],
                                       hspace=0.1)
        panel = [fig.add_subplot(cell) for cell in inner]
        have = dataset.mask[:, dataset.names.index(src)].nonzero().flatten()
        pick = torch.as_tensor(rows, dtype=torch.long) if rows is not None else have[:n]
        if len(pick) == 0:
            for ax in panel:
                ax.set_axis_off()
            panel[0].set_title(f"from {src}: no samples have it", fontsize=9)
            continue
        batch = dataset.batch(pick)
        x = batch["x"][src].to(device)
        post = model.encode_modality(src, x)
        draw_row(panel[0], kinds[src], x.cpu())
        panel[0].set_ylabel(f"input {src}", rotation=0, ha="right", va="center")
        for ax, t in zip(panel[1:], names, strict=True):
            gen = model.generate(t, conditional_latent(model, method, src, x,
                                                       posterior=post, target=t))
            truth = _truth(batch, dataset.names, t) if kinds[t] == "vector" else None
            draw_row(ax, kinds[t], gen.cpu(), truth)
            own = " (reconstruction)" if t == src else ""
            ax.set_ylabel(f"-> {t}{own}", rotation=0, ha="right", va="center")
        labelled = "label" in batch
        if labelled:  # each sample's class above its own column
            panel[0].set_xticks(column_centres(kinds[src], model.specs[src].shape,
                                               len(pick)),
                                class_labels(batch["label"].tolist(), label_names),
                                fontsize=7)
            panel[0].tick_params(top=False, bottom=False, labeltop=True,
                                 labelbottom=False)
        shown = f" (above each: {label_name})" if labelled else ""
        panel[0].set_title(f"{method}: generated from {src}{shown}", fontsize=9)
    if "vector" in kinds.values():
        fig.text(0, -0.01, "vectors: generated (blue), the sample's own values (grey)",
                 fontsize=7, color="0.3", va="top")
    return fig


def class_labels(ids: Sequence[int], names: Sequence[str] | None) -> list[str]:
    """Each id by its class name (``?``: unknown) where the files name their classes,
    else the ids themselves."""
    if not names:
        return [str(i) for i in ids]
    return [names[i] if 0 <= i < len(names) else "?" for i in ids]
