"""Site data: the Parquet format (``store``), datasets over it, look-alikes, preparers.

:func:`open_dataset` is the one place that picks the dataset class for a config.
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
        ``cache_row_groups``).
    limit : keep the first ``limit`` samples (0 = all).
    """
    # imported here so that ``import mmvm.data.store`` does not pull in torch
    if data_cfg.streaming:
        from mmvm.data.streaming import StreamingDataset

        return StreamingDataset(paths, names, data_cfg.label, limit,
                                cache_row_groups=data_cfg.cache_row_groups)
    from mmvm.data.dataset import MultimodalDataset

    return MultimodalDataset.from_parquet(paths, names, data_cfg.label, limit)
