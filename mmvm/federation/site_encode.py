"""A site's posteriors for the rows of a window, one step's batch per pass.

A window of several steps (``steps`` or ``round`` exchange) needs the posteriors of
all its rows at its start: with ``round`` that may be the site's whole data. The
encoders run in training mode, so BatchNorm normalises each pass by the pass's own
statistics, as a step does; each pass is therefore one step's batch (the site's rows
of it), the batch that step will train on: the posteriors a site sends are what its
steps would compute with the window's starting weights, not those of chunks of
sorted rows (which can hold one class each: sample ids are often class-sorted). The
memory of a pass is that of the step's forward, which the site's ``max-step-gib``
admitted; the running statistics are left as they were.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from mmvm.federation.plan import Step
from mmvm.federation.posteriors import Posteriors
from mmvm.model import MultimodalVAE, norm_stats_frozen


def step_groups(steps: Iterable[Step], local_of: np.ndarray
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per step, ``(aligned rows, dataset rows)`` of the site's rows in its batch, each
    row at the first step that trains it (a window of several epochs meets a row
    again: its posterior is sent once)."""
    done = np.zeros(len(local_of), dtype=bool)
    groups = []
    for step in steps:
        rows = step.rows.numpy()
        rows = rows[(local_of[rows] >= 0) & ~done[rows]]
        if len(rows):
            done[rows] = True
            groups.append((rows, local_of[rows]))
    return groups


@torch.no_grad()
def encode_rows(model: MultimodalVAE, data, groups: list[tuple[np.ndarray, np.ndarray]],
                device: torch.device) -> dict[str, Posteriors]:
    """Posteriors of every modality of ``model`` for each group's aligned rows (its
    dataset rows), one pass per group, sorted by row; a modality no row holds is
    left out."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    with norm_stats_frozen(model):  # the training step runs each encoder once
        for rows, local in groups:
            batch = data.batch(local)
            for j, m in enumerate(model.names):
                keep = batch["mask"][:, j].numpy()
                if keep.any():
                    mu, lv = model.encode_modality(m, batch["x"][m][keep].to(device))
                    parts.setdefault(m, []).append((rows[keep], mu.cpu().numpy(),
                                                    lv.cpu().numpy()))
    out = {}
    for m, p in parts.items():
        rows, mu, lv = (np.concatenate(c) for c in zip(*p, strict=True))
        order = np.argsort(rows, kind="stable")
        out[m] = Posteriors(rows[order], mu[order], lv[order])
    return out
