"""The picture a run folder gets with its evaluation: the cross-modal generation grid
when some modality is an image (``generations.png``), else the latents coloured by
label (``latents.png``): vector data (spike counts, say) drawn as grey images would
show nothing a person can read. ``mmvm evaluate`` and the federated server's
evaluation both write it; ``mmvm report --generate`` draws the same from a
checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def present_latents(model, test_set, batch_size: int = 256
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every present modality's posterior mean of every labelled sample of
    ``test_set`` and its sample's label (``[points, d]``, ``[points]``), encoded in
    batches on the model's device."""
    device = next(model.parameters()).device
    points, labels = [], []
    for start in range(0, len(test_set), batch_size):
        b = test_set.batch(range(start, min(start + batch_size, len(test_set))))
        with torch.no_grad():
            mu, _ = model.encode({k: v.to(device) for k, v in b["x"].items()},
                                 b["mask"].to(device))
        keep = b["mask"].bool() & (b["label"] >= 0)[:, None]  # -1: unknown, no colour
        points.append(mu.cpu()[keep].numpy())
        labels.append(b["label"][:, None].expand_as(keep)[keep].numpy())
    return (np.concatenate(points) if points else np.zeros((0, 0), np.float32),
            np.concatenate(labels) if labels else np.zeros(0, np.int64))


def run_picture(model, cfg, test_set, out: Path, title: str) -> dict[str, Path]:
    """``{"generations": path}`` or ``{"latents": path}`` written in ``out``; ``{}``
    for vector data without labels to colour by."""
    from mmvm.plots import generation_grid, latent_2d

    if any(m.kind == "image" for m in cfg.model.modalities):
        return {"generations": generation_grid(model, test_set, out / "generations.png",
                                               method=cfg.model.method)}
    if test_set.labels is None:
        return {}
    points, labels = present_latents(model, test_set)
    return {"latents": latent_2d({title: points}, labels, out / "latents.png")}
