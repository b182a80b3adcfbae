"""Per-modality label classifiers for the coherence metric (docs/protocol.md).

Coherence asks whether a generated x_m' carries the label of the sample it was
generated from; the judge is a classifier of modality m' trained on *real* m' data
(the train split) and never on generations. One classifier per modality:

- images ``[C, H, W]``: a small CNN, three stages of two conv + batch-norm layers,
  widths ``w, 2w, 4w``, max pooling 28 -> 14 -> 7 -> 3, a global max pool and a
  linear head (translation-invariant, which the translated PolyMNIST digits need:
  on 3,000 translated images it lifts test accuracy from 0.89 to 0.91 at 10 epochs);
- vectors (any other shape): an MLP ``D -> h -> h -> classes`` with ReLU, h = 8w;
- token sequences (modalities of kind ``tokens``, e.g. CUB captions as word ids): an
  embedding of the vocabulary into 8w dimensions, two 1-D convolutions (kernel 3,
  batch-norm, ReLU) along the positions, max pooling over positions and a linear
  head. Generated captions are read as the decoder's most likely token per position
  (:meth:`mmvm.model.MultimodalVAE.generate`).

Training: AdamW (weight decay 1e-4), one-cycle learning rate peaking at ``lr`` (0.86
-> 0.89 over plain Adam at a constant rate). Image judges may train on shifted and
rotated copies (``mmvm/augment.py``): the look-alikes hold 9,000 digits where the
authors' judges see 60,000. ``members`` > 1 trains that many judges from consecutive
seeds and averages their log-probabilities (:class:`Ensemble`).

Inputs are the model's float inputs (stored values divided by ``scale``), so a
classifier reads real data and decoder outputs alike. Labels are joined by sample id
across site files (:mod:`mmvm.judges`); a modality without labelled rows gets none.

Trained classifiers are cached in ``<its folder>/classifiers/<modality>-<key>.pt``
(where that folder cannot be written, a read-only data mount, under
``$MMVM_CACHE/classifiers/<folder name>-<hash of its path>/``), ``key`` a hash of the
train and test files' metadata (dataset JSON, row count, the SHA-256 of the file's
bytes, the modality's tensor spec; the joined site files' too), the modality, the
label column and the :class:`ClassifierConfig`, so a regenerated dataset or a changed
config trains afresh (relabelled files of the same size were scored by the old
labels' judges). Files are written atomically; a corrupt cache file is retrained.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from mmvm.augment import random_rotate, random_shift
from mmvm.checkpoint import load_checkpoint, save_checkpoint
from mmvm.classifier_nets import Ensemble, ImageClassifier, build_classifier
from mmvm.config import EvalConfig
from mmvm.judges import (
    file_digest,
    holding,
    is_image,
    keep_only,
    labelled_count,
    labelled_rows,
    no_judge,
    site_files,
)

CLASSIFIER_VERSION = 3  # bump when the architectures or the training recipe change
PREDICT_ROWS = 512  # rows a judge scores at a time (predict)


@dataclass(frozen=True)
class ClassifierConfig:
    """The judges' training recipe (part of the cache key); defaults: ``[eval]``'s
    (:class:`mmvm.config.EvalConfig`), but a hand-built recipe asks no ``min_steps``."""

    epochs: int = EvalConfig.classifier_epochs  # (each field: EvalConfig's classifier_*)
    batch_size: int = EvalConfig.classifier_batch_size
    lr: float = EvalConfig.classifier_lr  # peak of the one-cycle schedule
    width: int = EvalConfig.classifier_width  # image: channels w; vector: 8 w units (>= 64)
    seed: int = 0
    shift: int = EvalConfig.classifier_shift
    rotate: float = EvalConfig.classifier_rotate
    members: int = EvalConfig.classifier_members  # seeds seed, seed + 1, ...
    min_steps: int = 0  # images: at least this many batches (:func:`recipe_for_rows`)


def recipe_for_rows(cfg: ClassifierConfig, n: int, image: bool) -> ClassifierConfig:
    """The recipe an image judge of ``n`` labelled rows trains with: enough epochs
    for ``cfg.min_steps`` batches. Three epochs of a few hundred images (nine batches)
    left 64 px X-ray judges at chance (0.463, majority 0.537), 30 epochs reached 1.000
    (walkthrough of 2026-12-05). Vector judges keep their epochs: the hippocampus's
    score lower at 40 epochs than at 3 (rat1 0.485 against 0.500, rat4 0.357/0.463)."""
    if not image or not cfg.min_steps:
        return dataclasses.replace(cfg, min_steps=0)
    per_epoch = max(math.ceil(n / cfg.batch_size), 1)
    return dataclasses.replace(cfg, epochs=max(cfg.epochs, math.ceil(cfg.min_steps /
                                                                      per_epoch)),
                               min_steps=0)


@dataclass
class TrainedClassifiers:
    """Classifiers per modality with their accuracy on the real test split;
    ``skipped``: modality -> why it has no judge (no labelled rows)."""

    models: dict[str, nn.Module]
    test_accuracy: dict[str, float]
    paths: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> nn.Module:
        return self.models[name]

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def keys(self):
        return self.models.keys()


# ------------------------------------------------------------------ training
def train_classifier(
    x: Tensor, y: Tensor, n_classes: int, cfg: ClassifierConfig = ClassifierConfig(),
    device: str | torch.device = "cpu", scale: float = 1.0, vocab: int = 0,
    on_step: Callable[[], None] | None = None,
) -> nn.Module:
    """Fit a classifier to (x [N, *shape], y [N]) with Adam and cross-entropy.

    ``x`` may be stored uint8; each batch is converted to float and divided by
    ``scale``, giving the model's input range. ``vocab`` > 0: ``x`` holds token ids
    of a vocabulary of that size (see :func:`build_classifier`). ``on_step()`` is
    called after every batch (:func:`training_steps` of them, members included).
    """
    if len(x) == 0:
        raise ValueError("no labelled rows to train a classifier on")
    if cfg.members > 1:
        return Ensemble([train_classifier(
            x, y, n_classes, dataclasses.replace(cfg, members=1, seed=cfg.seed + i),
            device, scale, vocab, on_step) for i in range(cfg.members)])
    # the whole fit under the recipe's seed (dropout draws from torch's global
    # generator), so a judge is a function of its data and recipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _fit(x, y, n_classes, cfg, device, scale, vocab, on_step)


def training_steps(n: int, cfg: ClassifierConfig) -> int:
    """Batches :func:`train_classifier` runs on ``n`` rows (all members together)."""
    return cfg.members * cfg.epochs * math.ceil(n / cfg.batch_size)


def _fit(x: Tensor, y: Tensor, n_classes: int, cfg: ClassifierConfig,
         device: str | torch.device, scale: float, vocab: int,
         on_step: Callable[[], None] | None = None) -> nn.Module:
    g = torch.Generator().manual_seed(cfg.seed)
    model = build_classifier(x.shape[1:], n_classes, cfg.width, vocab).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = max(cfg.epochs * math.ceil(len(x) / cfg.batch_size), 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    image = isinstance(model, ImageClassifier)
    shift, rotate = (cfg.shift, cfg.rotate) if image else (0, 0.0)
    model.train()
    for _ in range(cfg.epochs):
        for rows in torch.randperm(len(x), generator=g).split(cfg.batch_size):
            xb = x[rows].to(device).float().div_(scale)
            xb = random_shift(random_rotate(xb, rotate, g), shift, g)
            loss = loss_fn(model(xb), y[rows].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if on_step is not None:
                on_step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = PREDICT_ROWS,
            scale: float = 1.0) -> Tensor:
    """Predicted class per row of ``x`` [N, *shape] (float or stored dtype)."""
    device = next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device).float().div_(scale)).argmax(1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# ------------------------------------------------------------------ cache
def cache_key(train_path, test_path, name: str, cfg: ClassifierConfig, vocab: int = 0,
              label: str = "label") -> str:
    """Hash of the files' metadata, modality, label column and recipe (16 hex digits).
    Of site files joined by id, the first holding ``name`` is keyed as one file is, the
    others (whose rows and labels the judge reads too) under "joined"."""
    from mmvm.data.store import read_site_meta

    def facts(p: Path) -> dict:
        meta = read_site_meta(p)
        out = {"dataset": meta["dataset"], "rows": meta["num_rows"],
               "sha256": file_digest(p)}
        return out | ({"tensor": meta["tensors"][name]} if name in meta["tensors"] else {})

    split = [site_files(p) for p in (train_path, test_path)]
    held = [holding(files, name)[0] for files in split]
    recipe = dataclasses.asdict(cfg)
    for knob, off in (("shift", 0), ("rotate", 0.0), ("members", 1), ("min_steps", 0)):
        if recipe[knob] == off:  # keys of recipes without it stay as they were
            del recipe[knob]
    material = {"files": [facts(p) for p in held], "modality": name, "config": recipe,
                "version": CLASSIFIER_VERSION}
    # each only when there is one (the file digest replaced its size: judges retrain once)
    if vocab:
        material["vocab"] = vocab
    if joined := [facts(p) for files in split for p in files if p not in held]:
        material["joined"] = joined
    if label != "label":
        material["label"] = label
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_or_train(
    train_path, test_path, names: Sequence[str], *,
    label: str = "label", cfg: ClassifierConfig = ClassifierConfig(),
    cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
    log=None, tokens: Mapping[str, int] | None = None, progress: bool | None = None,
    decoded_dir: str = "",
) -> TrainedClassifiers:
    """The classifier of every modality in ``names`` with labelled rows, from the cache
    or trained now; the others are ``skipped`` (and logged) before any judge trains.

    Parameters
    ----------
    train_path, test_path : the real data's Parquet files (train fits, test scores);
        each one file or a list of site files joined by sample id (a modality's rows
        come from the files holding it, its labels from any file: :mod:`mmvm.judges`).
    cache_dir : where classifiers are kept, the latest of each modality only (a
        site's state folder); default ``classifiers/`` by its train file, every recipe's.
    log : optional ``callable(str)`` told what is loaded, trained or skipped.
    tokens : modality -> vocabulary size, for modalities of kind ``tokens``.
    progress : a bar per classifier trained; None: when stdout is a terminal.
    decoded_dir : train from a decoded copy there (a streaming site's: its rows read
        a batch at a time, never the whole file; :func:`mmvm.judges.labelled_rows`).
    """
    tokens = dict(tokens or {})
    if progress is None:  # stdout may be None or a wrapper without isatty
        progress = bool(getattr(sys.stdout, "isatty", lambda: False)())
    todo, skipped = {}, {}
    for name in names:  # every check first: no judge trains before another fails
        vocab = tokens.get(name, 0)
        # the labelled rows: for a floor on an image judge's batches, and to skip
        # one with none; a cached judge of a recipe without the floor needs neither
        floor = bool(cfg.min_steps) and is_image(train_path, name)
        rows = labelled_count(train_path, name, label) if floor else None
        recipe = recipe_for_rows(cfg, rows or 0, floor)
        file = f"{name}-{cache_key(train_path, test_path, name, recipe, vocab, label)}.pt"
        places = [Path(cache_dir)] if cache_dir else _default_places(train_path, name)
        path = next((d / file for d in places if (d / file).is_file()), places[0] / file)
        state = _read_cache(path)
        model = _restore(state) if state is not None else None
        if model is None and not (rows if rows is not None
                                  else labelled_count(train_path, name, label)):
            skipped[name] = no_judge(train_path, name, label)
            if log:
                log(f"warning: {skipped[name]}")
            continue
        todo[name] = (path, vocab, model, state, recipe)
    models, accs, paths = {}, {}, {}
    for name, (path, vocab, model, state, recipe) in todo.items():
        if model is None:
            if log:
                log(f"training the {name} classifier ({recipe.epochs} epochs) -> {path}")
            model, state = _train_judge(name, train_path, test_path, label, recipe,
                                        device, vocab, progress, decoded_dir)
            path = _save_judge(path, state, None if cache_dir else
                               _default_places(train_path, name)[1], log)
            if cache_dir:  # a site's state folder: its latest judge of each only
                keep_only(path, name)
        elif log:
            log(f"loaded the {name} classifier from {path}")
        models[name] = model.to(device).eval()
        accs[name] = float(state["test_accuracy"])
        paths[name] = path
    return TrainedClassifiers(models, accs, paths, skipped)


def _default_places(train_path, name: str) -> list[Path]:
    """Where a judge is kept: ``classifiers/`` beside the data it was trained on (later
    evaluations of that data find it), else, where that folder cannot be written (a
    read-only data mount), under the user's cache (``$MMVM_CACHE``), per data folder."""
    import hashlib

    from mmvm.data.polymnist import cache_dir

    folder = holding(train_path, name)[0].parent.resolve()
    tag = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return [folder / "classifiers", cache_dir() / "classifiers" / f"{folder.name}-{tag}"]


def _save_judge(path: Path, state: dict, fallback: Path | None, log) -> Path:
    """The judge saved at ``path``, or under ``fallback`` where ``path``'s folder
    cannot be written (it was trained already: the evaluation failed after it). A
    folder made here is 0700, as its files are 0600: a site's judges stay its own."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_checkpoint(path, state)
        return path
    except OSError as err:
        if fallback is None:
            raise
        other = fallback / path.name
        other.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_checkpoint(other, state)
        if log:
            log(f"cannot write {path.parent} ({err.strerror or err}): the classifier is "
                f"kept in {other}")
        return other


def _train_judge(name: str, train_paths, test_paths, label: str,
                 cfg: ClassifierConfig, device: str | torch.device, vocab: int,
                 progress: bool, decoded_dir: str = "") -> tuple[nn.Module, dict]:
    """Modality ``name``'s judge, trained and scored, and the state the cache keeps."""
    from mmvm.progress import counting_bar

    x, y, scale = labelled_rows(train_paths, name, label, decoded_dir)
    n_classes, text = int(y.max()) + 1, functools.partial(_judge_text, name, len(x), cfg)
    with counting_bar(training_steps(len(x), cfg), text, progress) as step:
        model = train_classifier(x, y, n_classes, cfg, device, scale, vocab, step)
    xt, yt, _ = labelled_rows(test_paths, name, label, decoded_dir)
    hits = (predict(model, xt, scale=scale) == yt).float()
    acc = float(hits.mean()) if len(yt) else math.nan
    state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
             "shape": list(x.shape[1:]), "n_classes": n_classes,
             "config": dataclasses.asdict(cfg), "test_accuracy": acc,
             "version": CLASSIFIER_VERSION, "vocab": vocab}
    return model, state


def _judge_text(name: str, n: int, cfg: ClassifierConfig, done: int) -> str:
    """``judge m2 epoch 3/5`` (``member 2/3`` too for ensembles) ``done`` batches in."""
    per_epoch = max(math.ceil(n / cfg.batch_size), 1)
    member, epoch = divmod(max(done - 1, 0) // per_epoch, cfg.epochs)
    text = f"judge {name} epoch {epoch + 1}/{cfg.epochs}"
    return text + (f" member {member + 1}/{cfg.members}" if cfg.members > 1 else "")


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except ValueError:
        return None  # corrupt: retrain and overwrite
    except FileNotFoundError:  # another run at the site kept its own judge only
        return None
    needed = {"state_dict", "shape", "n_classes", "config", "test_accuracy"}
    return state if isinstance(state, dict) and needed <= set(state) else None


def _restore(state: dict) -> nn.Module | None:
    """The cached classifier, or None when its weights no longer fit the architecture."""
    model = build_classifier(state["shape"], state["n_classes"], state["config"]["width"],
                             int(state.get("vocab", 0)),
                             int(state["config"].get("members", 1)))
    try:
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError):
        return None
    return model


def recipe_for(cfg) -> ClassifierConfig:
    """The judges' recipe of an :class:`~mmvm.config.ExperimentConfig` (its ``[eval]``)."""
    ev = cfg.eval
    return ClassifierConfig(epochs=ev.classifier_epochs, shift=ev.classifier_shift,
                            rotate=ev.classifier_rotate, members=ev.classifier_members,
                            width=ev.classifier_width, batch_size=ev.classifier_batch_size,
                            lr=ev.classifier_lr, min_steps=ev.classifier_min_image_steps)


def classifiers_for(cfg, device: str | torch.device = "cpu", log=None,
                    progress: bool | None = None) -> TrainedClassifiers:
    """Classifiers for an :class:`~mmvm.config.ExperimentConfig`'s data and modalities
    (``progress``: see :func:`load_or_train`)."""
    names = [m.name for m in cfg.model.modalities]
    return load_or_train(cfg.data.files("train"), cfg.data.files("test"), names,
                         label=cfg.data.label, cfg=recipe_for(cfg), device=device, log=log,
                         tokens=vocabularies(cfg), progress=progress)


def vocabularies(cfg) -> dict[str, int]:
    """Modality -> vocabulary size, for the config's modalities of kind ``tokens``
    (their judges embed token ids)."""
    return {m.name: m.classes for m in cfg.model.modalities if m.kind == "tokens"}
