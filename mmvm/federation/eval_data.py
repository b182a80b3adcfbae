"""Whether the server can evaluate on an ``eval-data`` folder: a check of paths only,
made before the first window (and by ``mmvm run`` before Flower starts), so it imports
no torch."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def eval_data_problem(cfg, data_dir: str | Path) -> str | None:
    """Why the server could not evaluate on ``data_dir`` (a file the config reads
    there is missing), or None. Checked before the first window: a typo in
    ``eval-data`` must not cost a run its evaluation after hours of training."""
    # what is read below: the probes' training rows, every test row
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, root=str(data_dir), max_train=cfg.eval.probe_train, max_test=0))
    missing = [str(p) for split in ("train", "test") for p in cfg.data.files(split)
               if not p.is_file()]
    if not missing:
        return None
    return (f"eval-data = {str(data_dir)!r}: no {missing[0]}"
            + (f" (and {len(missing) - 1} more of the config's files)" * (len(missing) > 1))
            + "; give a folder with the config's train and test files, 'default' (the "
              "simulation's data) or '' (no server-side evaluation)")
