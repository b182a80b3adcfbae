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
from dataclasses import dataclass
from pathlib import Path

from mmvm.reporting.runs import Run

MAX_SAMPLES = 1000  # test samples encoded for the latent plot


class NotGenerated(Exception):
    """Why a picture could not be drawn (no checkpoint, data not reachable, ...)."""


@dataclass(frozen=True)
class Loaded:
    """A run's model and test set, and how its labels are named in pictures."""

    model: object
    method: str
    test: object  # MultimodalDataset
    label: str  # the label column (titles)
    label_names: list[str] | None  # class names the files store, id order


def load(run: Run) -> Loaded:
    """``run``'s model and test set; NotGenerated when something lacks."""
    from mmvm.config import config_from_dict
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.data.label_names import label_names_for
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
        names = label_names_for(files, cfg.data.label)
    except (ValueError, OSError) as err:
        raise NotGenerated(f"test data not readable ({err})") from None
    return Loaded(model, cfg.model.method, test, cfg.data.label, names)


def generations(run: Loaded) -> bytes:
    """The generation grid, titled by the label column's class names where known."""
    from mmvm.plot_generations import generation_grid

    with tempfile.TemporaryDirectory() as tmp:
        return generation_grid(run.model, run.test, Path(tmp) / "g.png",
                               method=run.method, label_name=run.label,
                               label_names=run.label_names).read_bytes()


def latents(run: Loaded, title: str) -> bytes:
    """The test samples' posterior means coloured by label, a panel per modality as
    the run folder's own picture (the legend names the classes where the files do)."""
    from mmvm.run_pictures import latent_panels

    if run.test.labels is None:
        raise NotGenerated("the data has no labels to colour latents by")
    with tempfile.TemporaryDirectory() as tmp:
        return latent_panels(run.model, run.test, Path(tmp) / "l.png", title,
                             run.label_names).read_bytes()
