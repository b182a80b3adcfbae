"""What an evaluation was made with, for eval.json's "settings" and the report's
tables: the ``[eval]`` section, the data keys it read, and what the data files say
they are."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmvm.config import ExperimentConfig
    from mmvm.data.dataset import MultimodalDataset


# the data settings an evaluation reads (the rest of [data] is how the trainer reads)
EVAL_DATA_KEYS = ("root", "folders", "train", "test", "label", "max_train", "max_test")
# what the data files say they are (mmvm.dataset metadata), as far as they say it
DATASET_KEYS = ("name", "variant", "seed")


def evaluated_with(cfg: ExperimentConfig, train_set: MultimodalDataset,
                   test_set: MultimodalDataset) -> dict:
    """The settings an evaluation used, for eval.json's "settings" (and the report's
    tables): the ``[eval]`` section and the data keys it read with (not the training
    run's), and the data files' name, variant and sample counts."""
    from mmvm.data.store import read_site_meta

    data = dataclasses.asdict(cfg.data)
    metas = [read_site_meta(p).get("dataset") or {} for p in cfg.data.files("train")]
    dataset = {k: "+".join(dict.fromkeys(str(m[k]) for m in metas if k in m))
               for k in DATASET_KEYS if any(k in m for m in metas)}
    dataset.update(train_samples=len(train_set), test_samples=len(test_set))
    return {"data": {k: data[k] for k in EVAL_DATA_KEYS}, "eval": dataclasses.asdict(cfg.eval),
            "dataset": dataset}
