"""``mmvm report --generate``: pictures drawn from a run's checkpoint.

For a run folder with ``checkpoint.pt`` whose config points at data this machine can
read (``data.root``): the generation grid (:func:`mmvm.plots.generation_grid`) and,
when the data has labels, the 2-D latents coloured by label
(:func:`mmvm.plot_latents.latent_2d`; more than two latent dimensions are projected on their
first two principal components). Each returns PNG bytes, or raises
:class:`NotGenerated` with the reason the report prints.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmvm.reporting.runs import Run

MAX_SAMPLES = 1000  # test samples encoded for the latent plot


class NotGenerated(Exception):
    """Why a picture could not be drawn (no checkpoint, data not reachable, ...)."""


def load(run: Run):
    """``(model, method, test_set)`` of ``run``; NotGenerated when something lacks."""
    from mmvm.config import config_from_dict
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.training import load_trained_model

    if run.folder is None or run.checkpoint is None:
        raise NotGenerated("no checkpoint.pt")
    try:
        model, state = load_trained_model(run.folder)
        raw = dict(state["config"])
        raw.pop("source", None)
        cfg = config_from_dict(raw, source=str(run.checkpoint))
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise NotGenerated(f"checkpoint not usable ({err})") from None
    files = cfg.data.files("test")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise NotGenerated(f"test data not reachable from here ({', '.join(missing)})")
    try:
        test = MultimodalDataset.from_parquet(files, model.names, cfg.data.label,
                                              MAX_SAMPLES)
    except (ValueError, OSError) as err:
        raise NotGenerated(f"test data not readable ({err})") from None
    return model, cfg.model.method, test


def generations(model, method: str, test_set) -> bytes:
    from mmvm.plots import generation_grid

    with tempfile.TemporaryDirectory() as tmp:
        return generation_grid(model, test_set, Path(tmp) / "g.png", method=method
                               ).read_bytes()


def latents(model, title: str, test_set) -> bytes:
    """Every present modality's posterior mean of every test sample, coloured by label."""
    from mmvm.plot_latents import latent_2d
    from mmvm.run_pictures import present_latents

    if test_set.labels is None:
        raise NotGenerated("the data has no labels to colour latents by")
    points, labels = present_latents(model, test_set)
    with tempfile.TemporaryDirectory() as tmp:
        return latent_2d({title: points}, labels, Path(tmp) / "l.png").read_bytes()
