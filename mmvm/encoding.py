"""A dataset's latents: each modality's posterior mean (and log-variance) for the rows
that hold it, what each decoder reads after the method's aggregation, and the labels
of the same rows, in the dataset's row order (what probes, coherence and
``mmvm encode`` read)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from mmvm.aggregation import aggregate
from mmvm.model import MultimodalVAE


def model_device(model: MultimodalVAE) -> torch.device:
    return next(model.parameters()).device


def row_chunks(n: int, batch_size: int):
    yield from (torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


# ------------------------------------------------------------------ latents
@torch.no_grad()
def unimodal_posteriors(model: MultimodalVAE, dataset, batch_size: int = 256,
                        device: str | torch.device | None = None
                        ) -> Iterator[tuple[str, np.ndarray, Tensor, Tensor]]:
    """Per batch of ``dataset`` and per modality of the model that the data holds:
    ``(name, rows, mu, logvar)`` of q(z | x_m) for the batch's rows that have m (their
    positions in the dataset, ascending). mu / logvar are the model's full outputs
    (MMVAE+ appends its private part to the shared ``latent_dim``). The mask column is
    looked up by name, so the data may hold its modalities in any order or extra ones.
    """
    device = torch.device(device) if device is not None else model_device(model)
    model.eval()
    held = [m for m in model.names if m in dataset.names]
    for rows in row_chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        for name in held:
            present = b["mask"][:, dataset.names.index(name)]
            if not bool(present.any()):
                continue
            mu, logvar = model.encode_modality(name, b["x"][name][present].to(device))
            yield name, rows[present].numpy(), mu, logvar


def encode_dataset(model: MultimodalVAE, dataset, batch_size: int = 256,
                   device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Unimodal posterior means mu_m [N_m, D] per modality, rows where m is present.

    Row order is the dataset's; :func:`present_labels` gives the matching labels.
    """
    out: dict[str, list[np.ndarray]] = {n: [] for n in model.names}
    for name, _, mu, _ in unimodal_posteriors(model, dataset, batch_size, device):
        out[name].append(mu[:, :model.latent_dim].cpu().numpy())  # the shared part
    return {n: np.concatenate(v) if v else np.zeros((0, model.latent_dim), np.float32)
            for n, v in out.items()}


@torch.no_grad()
def encode_aggregated(model: MultimodalVAE, dataset, method: str, batch_size: int = 256,
                      device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """What each modality's decoder reads after aggregation, at the mean: per modality
    m the slot m of ``aggregate(method, mu, logvar, mask, eps=0)`` over all present
    modalities, rows where m is present (the row order of :func:`encode_dataset`).

    For AVG / PoE every slot holds the joint posterior mean; MoE's and MoPoE's the
    mean of the component the reference's batch-slice rule selects (so it depends on
    ``batch_size``, as in training); MMVM and independent VAEs give mu_m.
    """
    device = torch.device(device) if device is not None else model_device(model)
    model.eval()
    out: dict[str, list[np.ndarray]] = {n: [] for n in model.names}
    for rows in row_chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        x = {k: v.to(device) for k, v in b["x"].items()}
        mask = b["mask"].to(device)
        mu, lv = model.encode(x, mask)
        z, _ = aggregate(method, mu, lv, mask, torch.zeros_like(mu), 0.0, model.private_dim)
        for j, name in enumerate(model.names):
            if bool(mask[:, j].any()):
                out[name].append(z[mask[:, j], j, :model.latent_dim].cpu().numpy())
    return {n: np.concatenate(v) if v else np.zeros((0, model.latent_dim), np.float32)
            for n, v in out.items()}


def present_labels(dataset, names: list[str]) -> dict[str, np.ndarray]:
    """Labels of the rows :func:`encode_dataset` returns, per modality (-1 = unknown)."""
    if dataset.labels is None:
        raise ValueError("the dataset has no labels; probes and coherence need them")
    labels = dataset.labels.numpy()
    return {n: labels[dataset.mask[:, dataset.names.index(n)].numpy()] for n in names}


def present_label_columns(dataset, names: list[str], paths, columns: list[str]
                          ) -> dict[str, dict[str, np.ndarray]]:
    """Label ``columns`` of the rows :func:`encode_dataset` returns, per modality:
    ``{m: {column: int64 [N_m]}}`` (-1 = unknown), read from the site files
    ``paths`` by the dataset's sample ids."""
    from mmvm.data.labels import read_labels

    cols = read_labels(paths, dataset.sample_ids, columns)
    out = {}
    for name in names:
        present = dataset.mask[:, dataset.names.index(name)].numpy()
        out[name] = {c: v[present] for c, v in cols.items()}
    return out
