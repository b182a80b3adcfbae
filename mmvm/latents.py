"""A dataset's latent representation: each sample's unimodal posterior parameters.

What a trained model (a centralized run, a federated run's assembled model, or one
site's own encoders after a federated run) makes of each sample, as one Parquet
table for downstream work (a classifier, a survival model, a plot): ``sample_id``,
per modality ``m`` the posterior mean ``mu.m`` and log-variance ``logvar.m``
(``latent_dim`` float32 each; null where the sample lacks m), and the data's label
(null where unknown). The mean of q(z | x_m) is the representation the paper's
probes read (``mmvm.evaluation.encode_dataset``; both come from
:func:`mmvm.evaluation.unimodal_posteriors`); MMVAE+ models give their shared part.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmvm.atomic import atomic_write
from mmvm.evaluation import unimodal_posteriors
from mmvm.model import MultimodalVAE


def latent_table(model: MultimodalVAE, dataset, batch_size: int = 256,
                 device: str | torch.device = "cpu",
                 step: Callable[[int, int], None] | None = None) -> pa.Table:
    """The table described in the module docstring, rows in the dataset's order.
    ``step(done, total)`` is called after each batch."""
    n, d = len(dataset), model.latent_dim
    held = [m for m in model.names if m in dataset.names]
    if not held:
        raise ValueError(f"the data holds none of the model's modalities {model.names} "
                         f"(it has {dataset.names})")
    mu = {m: np.full((n, d), np.nan, np.float32) for m in held}
    logvar = {m: np.full((n, d), np.nan, np.float32) for m in held}
    present = {m: np.zeros(n, bool) for m in held}
    for m, rows, mu_m, lv_m in unimodal_posteriors(model, dataset, batch_size, device):
        mu[m][rows] = mu_m[:, :d].cpu().numpy()
        logvar[m][rows] = lv_m[:, :d].cpu().numpy()
        present[m][rows] = True
        if step is not None:
            step(int(rows[-1]) + 1, n)
    if step is not None:
        step(n, n)
    cols = {"sample_id": pa.array(dataset.sample_ids, pa.string())}
    for m in held:
        for what, arr in (("mu", mu[m]), ("logvar", logvar[m])):
            cols[f"{what}.{m}"] = _lists(arr, present[m])
    if getattr(dataset, "labels", None) is not None:  # unknown (-1 in the data): null
        labels = dataset.labels.numpy()
        cols["label"] = pa.array(labels, pa.int64(), mask=labels < 0)
    return pa.table(cols)


def write_latents(path: str | Path, table: pa.Table, meta: dict) -> Path:
    """Write ``table`` to ``path`` atomically (nothing half-written), ``meta`` as the
    file's ``mmvm.latents`` metadata (where the model and data came from)."""
    import json

    table = table.replace_schema_metadata({b"mmvm.latents": json.dumps(meta).encode()})
    path = Path(path)
    atomic_write(path, lambda fh: pq.write_table(table, fh, compression="zstd"))
    return path


def _lists(arr: np.ndarray, valid: np.ndarray) -> pa.Array:
    """``[N, D]`` float32 as a fixed-size list column, null where not ``valid``."""
    n, d = arr.shape
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    return pa.Array.from_buffers(pa.list_(pa.float32(), d), n, [bitmap],
                                 children=[pa.array(arr.reshape(-1), pa.float32())],
                                 null_count=int(n - valid.sum()))


def read_latents(paths: list[str | Path], label: str = "label"
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Posterior means per (file, modality) of ``mmvm encode`` outputs, the samples
    that have the modality, and their ``label`` column (-1 where null; all 0 when the
    files have none)."""
    mus, labels = {}, {}
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such latents file (write one with mmvm "
                                    f"encode)")
        table = pq.read_table(p)
        cols = [c for c in table.column_names if c.startswith("mu.")]
        if not cols:
            raise ValueError(f"{p}: no mu.<modality> column; not an mmvm encode output")
        if label in table.column_names:
            lab = table.column(label).to_numpy(zero_copy_only=False)
            lab = np.where(np.isnan(lab.astype(float)), -1, lab).astype(np.int64)
        else:
            lab = np.zeros(table.num_rows, np.int64)
        for c in cols:
            col = table.column(c).combine_chunks()
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            d = col.type.list_size
            # every slot, null rows' too (flatten() would skip those), then the valid
            values = col.values.slice(col.offset * d, len(col) * d)
            values = values.to_numpy(zero_copy_only=False).reshape(-1, d)
            key = f"{p.stem}: {c[3:]}" if len(paths) > 1 else c[3:]
            if key in mus:
                raise ValueError(f"two files named {p.name} hold {c}: give the latents "
                                 f"files distinct names")
            mus[key], labels[key] = values[valid], lab[valid]
    return mus, labels


def common_2d(mus: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """The latents in two dimensions, all panels on the same axes: the first two
    principal components of all of them together (panels of per-panel PCA would be
    rotated against each other, hiding whether the modalities share a space).
    Returns the points and whether PCA was needed."""
    d = next(iter(mus.values())).shape[1]
    if d <= 2:
        return mus, False
    stacked = np.concatenate(list(mus.values())).astype(np.float64)
    centre = stacked.mean(0)
    _, _, vt = np.linalg.svd(stacked - centre, full_matrices=False)
    return {k: (v - centre) @ vt[:2].T for k, v in mus.items()}, True
