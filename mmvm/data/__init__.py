"""Site data: the Parquet format (``store``), datasets over it, look-alikes, preparers.

:func:`open_dataset` is the one place that picks the dataset class for a config;
:func:`check_data_fits` checks a config's shapes and vocabulary sizes
(:func:`check_token_classes`) against the data's metadata;
:mod:`mmvm.data.labels` reads label columns for per-label probes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mmvm.config import DataConfig
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.streaming import StreamingDataset


def open_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    names: Sequence[str] | None,
    data_cfg: DataConfig,
    *,
    limit: int = 0,
) -> MultimodalDataset | StreamingDataset:
    """The dataset over ``paths`` that ``data_cfg`` asks for.

    ``data_cfg.streaming``: a :class:`~mmvm.data.streaming.StreamingDataset` reading
    row groups on demand (at most ``data_cfg.cache_row_groups`` decoded), for data that
    need not fit in memory; otherwise a
    :class:`~mmvm.data.dataset.MultimodalDataset` held in memory. Both join the files
    by sample id the same way and return identical batches.

    Parameters
    ----------
    paths : one site file or several (joined by sample id).
    names : the modalities to load, in this order; ``None`` = all the files hold.
    data_cfg : the experiment's ``[data]`` section (``label``, ``streaming``,
        ``cache_row_groups``, ``decoded_dir``).
    limit : keep ``limit`` samples chosen at random, reproducibly by sample id (0 = all;
        :func:`mmvm.subsample.keep_ids`).
    """
    # imported here so that ``import mmvm.data.store`` does not pull in torch
    if data_cfg.streaming:
        from mmvm.data.streaming import StreamingDataset

        return StreamingDataset(paths, names, data_cfg.label, limit,
                                cache_row_groups=data_cfg.cache_row_groups,
                                decoded_dir=data_cfg.decoded_dir)
    from mmvm.data.dataset import MultimodalDataset

    return MultimodalDataset.from_parquet(paths, names, data_cfg.label, limit)


def check_data_fits(specs: Sequence, paths: str | os.PathLike | Sequence,
                    source: str = "the config") -> None:
    """Check, from the files' metadata and before any row is read, that each
    configured modality a file holds has the config's shape (a mismatch would
    otherwise surface at the first batch, naming neither file nor config) and each
    ``tokens`` modality its vocabulary size (:func:`check_token_classes`)."""
    from mmvm.data.store import DataError, read_site_meta

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    for p in paths:
        held = read_site_meta(p)["tensors"]
        bad = [f"{s.name} is {list(held[s.name]['shape'])} there, {list(s.shape)} in "
               f"{source} (model.modalities.{s.name}.shape)"
               for s in specs if s.name in held
               and tuple(held[s.name]["shape"]) != tuple(s.shape)]
        if bad:
            raise DataError(f"{p}: " + "; ".join(bad))
    check_token_classes(specs, paths)
    from mmvm.data.label_names import check_label_names

    check_label_names(paths)


def check_token_classes(specs: Sequence, paths: str | os.PathLike | Sequence) -> None:
    """Check each ``tokens`` modality's ``classes`` against the vocabulary its data
    was prepared with (``vocab`` in the file's ``mmvm.dataset`` metadata, as
    :mod:`mmvm.data.prepare.cub` writes it); a mismatch raises
    :class:`~mmvm.data.store.DataError` saying which value to set. Files without a
    ``vocab`` are not checked (the encoder still rejects out-of-range ids)."""
    from mmvm.data.store import DataError, read_site_meta

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    for spec in specs:
        if spec.kind != "tokens":
            continue
        for p in paths:
            meta = read_site_meta(p)
            vocab = meta["dataset"].get("vocab")
            if vocab is not None and not (isinstance(vocab, list)
                                          and all(isinstance(t, str) for t in vocab)):
                raise DataError(f"{p}: metadata 'mmvm.dataset' key 'vocab' must be a list "
                                f"of token strings, got {type(vocab).__name__}")
            if spec.name in meta["tensors"] and vocab is not None \
                    and len(vocab) != spec.classes:
                raise DataError(
                    f"{p}: modality {spec.name!r} was prepared with a vocabulary of "
                    f"{len(vocab)} tokens, the config says classes = {spec.classes}; set "
                    f"model.modalities.{spec.name}.classes = {len(vocab)}")
