"""A dataset's latent representation: each sample's unimodal posterior parameters.

What a trained model (a centralized run, a federated run's assembled model, or one
site's own encoders after a federated run) makes of each sample, as one Parquet
table for downstream work (a classifier, a survival model, a plot): ``sample_id``,
per modality ``m`` the posterior mean ``mu.m`` and log-variance ``logvar.m``
(``latent_dim`` float32 each; null where the sample lacks m), and every label column
of the data (``label``, ``label.<name>``; null where unknown). The mean of q(z | x_m) is the representation the paper's
probes read (``mmvm.evaluation.encode_dataset``; both come from
:func:`mmvm.evaluation.unimodal_posteriors`); MMVAE+ models give their shared part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmvm.atomic import atomic_write
from mmvm.data.store_format import GROUP_COLUMN, SAMPLE_ID, is_label_column
from mmvm.data.store_format import LATENTS_KEY as LATENTS_NAME
from mmvm.evaluation import unimodal_posteriors
from mmvm.model import MultimodalVAE

LATENTS_KEY = LATENTS_NAME.encode()  # schema metadata of every table write_latents writes


def latent_table(model: MultimodalVAE, dataset, batch_size: int = 256,
                 device: str | torch.device = "cpu",
                 step: Callable[[int, int], None] | None = None,
                 labels: Mapping[str, np.ndarray] | None = None,
                 groups: np.ndarray | None = None) -> pa.Table:
    """The table described in the module docstring, rows in the dataset's order.
    ``step(done, total)`` is called after each batch. ``labels``: column -> int64 per
    row (-1 unknown), e.g. :func:`data_labels`; default the dataset's own ``label``.
    ``groups``: each row's trial or patient (:func:`mmvm.data.groups.read_groups`),
    written as the column ``group`` (coded: :func:`group_codes`) for analyses that
    must keep a group together."""
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
    if labels is None and getattr(dataset, "labels", None) is not None:
        labels = {"label": dataset.labels.numpy()}
    for c, values in (labels or {}).items():  # unknown (-1 in the data): null
        values = np.asarray(values, np.int64)
        if len(values) != n:
            raise ValueError(f"label column {c!r}: {len(values)} values for {n} samples")
        cols[c] = pa.array(values, pa.int64(), mask=values < 0)
    if groups is not None:
        cols[GROUP_COLUMN] = pa.array(group_codes(dataset.sample_ids, groups), pa.string())
    return pa.table(cols)


def data_labels(paths: Sequence[str | Path], sample_ids: Sequence[str]
                ) -> dict[str, np.ndarray]:
    """Every label column of the site files ``paths`` (``label``, ``label.<name>``)
    for ``sample_ids``, joined by sample id across the files (-1 where unknown)."""
    from mmvm.data.labels import all_label_columns, read_labels

    return read_labels(paths, sample_ids, all_label_columns(paths))


def write_latents(path: str | Path, table: pa.Table, meta: dict) -> Path:
    """Write ``table`` to ``path`` atomically (nothing half-written), ``meta`` as the
    file's ``mmvm.latents`` metadata (where the model and data came from)."""
    import json

    table = table.replace_schema_metadata({LATENTS_KEY: json.dumps(meta).encode()})
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


def read_latents(paths: list[str | Path], label: str | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Posterior means per (file, modality) of ``mmvm encode`` outputs, the samples
    that have the modality, and their ``label`` column (-1 where null). ``None``: the
    ``label`` column, all -1 (unknown: grey, never a class's colour) in a file without
    it; a column a file does not have raises ``ValueError`` naming the label columns
    it has."""
    mus, labels = {}, {}
    for key, path, table, valid, values in _latent_sets(paths):
        mus[key], labels[key] = values[valid], _labels(table, path, label)[valid]
    if not mus:
        raise ValueError(f"{', '.join(map(str, paths))}: no sample has a posterior mean "
                         "(no rows, or every mu.<modality> is null)")
    return mus, labels


def read_latent_units(paths: list[str | Path]) -> dict[str, np.ndarray]:
    """What each sample of each (file, modality) set belongs to, as
    :func:`read_latents` orders them: its group (``mmvm encode`` of files prepared
    with groups: the group's first sample id), else its own sample id. Samples of
    one unit are one trial or one sample, whichever set holds them."""
    out = {}
    for key, _, table, valid, _ in _latent_sets(paths):
        ids = np.asarray(table.column(SAMPLE_ID).to_pylist(), dtype=object)
        groups = np.asarray(table.column(GROUP_COLUMN).to_pylist(), dtype=object) \
            if GROUP_COLUMN in table.column_names else np.full(len(ids), None)
        out[key] = np.where([bool(g) for g in groups], groups, ids)[valid]
    return out


def group_codes(ids: Sequence[str], groups: np.ndarray) -> list[str]:
    """Each sample's group written as its group's first sample id (in sorted order):
    which samples share a trial or patient, without the group's own name (a patient's
    record number) in a file that may be shared; a sample without a group: ''."""
    first: dict[str, str] = {}
    for i, g in sorted(zip(ids, groups, strict=True)):
        if g:
            first.setdefault(str(g), str(i))
    return [first[str(g)] if g else "" for g in groups]


def _latent_sets(paths: list[str | Path]):
    """``(key, file, table, valid rows, means [N, D])`` per (file, modality) with a
    sample;
    the key is the modality, ``<file stem>: <modality>`` for several files."""
    seen = set()
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such latents file (write one with mmvm "
                                    f"encode)")
        table = _readable(pq.read_table, p)
        cols = [c for c in table.column_names if c.startswith("mu.")]
        if not cols:
            raise ValueError(f"{p}: no mu.<modality> column; not an mmvm encode output")
        for c in cols:
            col = table.column(c).combine_chunks()
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            d = col.type.list_size
            # every slot, null rows' too (flatten() would skip those), then the valid
            values = col.values.slice(col.offset * d, len(col) * d)
            values = values.to_numpy(zero_copy_only=False).reshape(-1, d)
            key = f"{p.stem}: {c[3:]}" if len(paths) > 1 else c[3:]
            if key in seen:
                raise ValueError(f"two files named {p.name} hold {c}: give the latents "
                                 f"files distinct names")
            seen.add(key)
            _check_finite(values, valid, p, c)
            if valid.any():  # a modality no sample of the file has: no empty panel
                yield key, p, table, valid, values


def latents_label_names(paths: list[str | Path], label: str | None) -> list[str] | None:
    """The class names of label column ``label`` (None: ``label``) that ``mmvm encode``
    copied from the site files into the outputs' metadata, or None where none did."""
    import json

    for p in paths:
        raw = (latents_schema(p).metadata or {}).get(LATENTS_KEY)
        names = (json.loads(raw).get("label_names") or {}).get(label or "label") \
            if raw else None
        if isinstance(names, list):
            return [str(n) for n in names]
    return None


def latents_schema(path: str | Path):
    """The Parquet schema of an ``mmvm encode`` output, or an error naming it."""
    return _readable(pq.read_schema, path)


def _readable(read, path):
    """``read(path)`` (a pyarrow reader), or a ValueError that names the file: pyarrow's
    own words ("Parquet magic bytes not found") name none."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such latents file (write one with mmvm encode)")
    try:
        return read(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err}); write it again "
                         f"with mmvm encode") from None


def _check_finite(values: np.ndarray, valid: np.ndarray, path: Path, column: str) -> None:
    """A NaN mean (a diverged model's) would otherwise surface as "SVD did not
    converge" or as points missing from the picture."""
    bad = valid & ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {column} is NaN or infinite in {int(bad.sum())} rows "
                         f"(the first is row {int(bad.argmax())}); did the model that "
                         "encoded them diverge?")


def _labels(table: pa.Table, path: Path, label: str | None) -> np.ndarray:
    """The label column ``label`` of a latents table as int64, -1 where null."""
    have = [c for c in table.column_names if is_label_column(c)]
    if (label or "label") in have:
        lab = table.column(label or "label").to_numpy(zero_copy_only=False)
        return np.where(np.isnan(lab.astype(float)), -1, lab).astype(np.int64)
    if label is None:  # unknown, not class 0 (an unlabelled site read as 'effusion')
        return np.full(table.num_rows, -1, np.int64)
    raise ValueError(f"{path}: no label column {label!r}; its label columns: "
                     f"{', '.join(have) or 'none (the data mmvm encode read had none)'}")


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
