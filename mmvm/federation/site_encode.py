"""A site's posteriors for rows it sends, in passes of bounded size.

A window of several steps (``steps`` or ``round`` exchange) needs the posteriors of
all its rows at its start: with ``round`` that may be the site's whole data. One
forward pass over them all would need memory no step was checked for (the site's
``max-step-gib`` admits passes of the plan's batch), so rows go through in chunks.
The encoders run in training mode (BatchNorm on each chunk's statistics, as in a
step), their running statistics left as they were.
"""

from __future__ import annotations

import numpy as np
import torch

from mmvm.federation.posteriors import Posteriors
from mmvm.model import MultimodalVAE, norm_stats_frozen


@torch.no_grad()
def encode_rows(model: MultimodalVAE, data, rows: np.ndarray, local: np.ndarray,
                size: int, device: torch.device) -> dict[str, Posteriors]:
    """Posteriors of every modality of ``model`` for aligned ``rows`` (dataset rows
    ``local``), ``size`` rows per pass; a modality no row holds is left out."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    with norm_stats_frozen(model):  # the training step runs each encoder once
        for a in range(0, len(rows), size):
            batch = data.batch(local[a:a + size])
            for j, m in enumerate(model.names):
                keep = batch["mask"][:, j].numpy()
                if keep.any():
                    mu, lv = model.encode_modality(m, batch["x"][m][keep].to(device))
                    parts.setdefault(m, []).append(
                        (rows[a:a + size][keep], mu.cpu().numpy(), lv.cpu().numpy()))
    return {m: Posteriors(*(np.concatenate(c) for c in zip(*p, strict=True)))
            for m, p in parts.items()}
