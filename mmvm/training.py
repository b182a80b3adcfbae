"""The centralized trainer: the reference every federated run is measured against.

One Adam optimiser over all modalities' parameters; batches from
``mmvm.schedule.epoch_batches`` (or, with ``data.schedule = "grouped"``, the row-group
local ``epoch_batches_grouped``) and noise from ``mmvm.noise.step_noise``, so a run is a
deterministic function of its config. After every ``checkpoint_every`` epochs the
model, optimiser and counters are written atomically to ``<out_dir>/checkpoint.pt``;
a rerun with the same config resumes from there. Right after each checkpoint
``config.json`` and ``metrics.csv`` (one row per epoch) are written from it, so the
three describe one model; between checkpoints metrics.csv gains each epoch's row (so a
divergence's lead-up is on disk), except over an earlier run's checkpoint that this run
has not replaced yet: a ``resume=False`` run that fails or is stopped before its first
checkpoint leaves such a folder as it was. A resume rewrites the two from the
checkpoint it resumes (rows ahead of it are dropped). Ctrl-C and SIGTERM wait while a
checkpoint and its two companions are written (:func:`mmvm.interrupts.deferred_signals`),
so a stop never leaves metrics.csv behind the checkpoint; a model whose weights hold
NaN or inf is never checkpointed (:class:`TrainingDivergedError`), and the temp files
a killed run's writes left in ``out_dir`` are removed when the next run starts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset, default_collate

from mmvm import accel
from mmvm.atomic import sweep_temps
from mmvm.checkpoint import (
    MODEL_KEYS,
    RUN_FILES,
    check_run_folder,
    save_run,
    training_state,
    write_companions,
    write_metrics,
)
from mmvm.config import (
    DataConfig,
    ExperimentConfig,
    config_changes,
    config_from_dict,
    config_to_dict,
)
from mmvm.config_ranges import device_problem
from mmvm.finite import nonfinite_tensor
from mmvm.interrupts import deferred_signals
from mmvm.model import MultimodalVAE
from mmvm.noise import aux_noise, step_noise
from mmvm.objectives import alpha_schedule, compute_loss
from mmvm.progress import draws_live, epoch_line, epoch_text, progress_bar
from mmvm.provenance import environment
from mmvm.schedule import epoch_batches, epoch_batches_grouped


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; nothing of that step is saved."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:<n>`` and
    ``mps`` are taken as named, once this machine has them (ValueError otherwise)."""
    problem = device_problem(name)
    if problem:
        raise ValueError(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {name!r} requested but this machine has {count} CUDA "
                         f"device{'s' * (count != 1)} (cuda:0 to cuda:{count - 1})")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but Apple's MPS is not available on this "
                         "machine; use cpu or auto")
    return torch.device(name)


def build_model(cfg: ExperimentConfig, names: list[str] | None = None) -> MultimodalVAE:
    """The model for ``names`` (default: all modalities), initialised from the seed.

    Initialisation is per modality, so ``build_model(cfg, ["m1"])`` at a site holds
    exactly the weights of ``build_model(cfg)`` for m1.
    """
    all_names = [m.name for m in cfg.model.modalities]
    names = all_names if names is None else names
    specs = [m for m in cfg.model.modalities if m.name in names]
    return MultimodalVAE(specs, cfg.model.latent_dim, seed=cfg.train.seed, global_names=all_names,
                         private_dim=cfg.model.private_dim)


def count_parameters(cfg: ExperimentConfig, names: list[str] | None = None) -> int:
    """Parameters of ``build_model(cfg, names)``, counted on the meta device: no
    memory is allocated, so a config asking for a huge model can be refused."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg, names).parameters())


def iterate_batches(
    dataset: Dataset, batch_size: int, seed: int, epoch: int,
    schedule: str = "permutation", window: int = 4,
) -> Iterator[dict[str, Any]]:
    """Batches of one epoch in the schedule's order.

    ``schedule="permutation"`` (default): the shared full permutation
    (``epoch_batches``); ``"grouped"``: ``epoch_batches_grouped`` over
    ``dataset.row_groups()`` (a :class:`~mmvm.data.streaming.StreamingDataset`), with
    windows of ``window`` row groups. Uses ``dataset.batch(rows)`` when the dataset
    has it (one gather per modality), else collates ``dataset[i]`` items.
    """
    fast = getattr(dataset, "batch", None)
    if schedule == "permutation":
        batches = epoch_batches(len(dataset), batch_size, seed, epoch)
    elif schedule == "grouped":
        groups = getattr(dataset, "row_groups", None)
        if groups is None:
            raise ValueError("schedule 'grouped' needs a dataset with row groups "
                             "(data.streaming = true)")
        batches = epoch_batches_grouped(groups(), batch_size, seed, epoch, window)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose permutation or grouped")
    for rows in batches:
        yield fast(rows) if fast else default_collate([dataset[int(i)] for i in rows])


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False
              ) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {n: t.to(device, non_blocking=True) for n, t in v.items()}
            if channels_last:
                out[k] = {n: accel.to_channels_last(t) for n, t in out[k].items()}
        elif torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


@dataclass
class TrainResult:
    model: MultimodalVAE
    history: list[dict[str, float]] = field(default_factory=list)
    out_dir: Path = Path(".")
    start_epoch: int = 0  # epochs the checkpoint held before this call (0: from scratch)

    @property
    def trained_epochs(self) -> int:
        """Epochs this call trained (0: the checkpoint was already complete)."""
        return len(self.history) - self.start_epoch


def train_step(
    model: MultimodalVAE,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    cfg: ExperimentConfig,
    step: int,
    alpha: float,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One optimiser step on one batch; returns the batch's metrics. The forward pass
    runs under ``train.amp``'s autocast; ``scaler`` (float16) scales the gradients."""
    B = batch["mask"].shape[0]
    M, D = len(model.names), model.code_dim
    device = batch["mask"].device
    eps = step_noise(cfg.train.seed, step, B, M, D).to(device)
    aux = aux_noise(cfg.train.seed, step, B, M, model.private_dim).to(device) \
        if model.private_dim else None
    with accel.autocast(cfg.train.amp, device):
        terms = compute_loss(model, batch, cfg.model.method, cfg.train.beta, alpha, eps, aux)
    if not torch.isfinite(terms.loss):
        raise TrainingDivergedError(
            f"loss is {terms.loss.item()} at step 0, before any update, so not the "
            f"learning rate: check the data's scale (values far from 0, e.g. lab "
            f"values in clinical units: mmvm data prepare table --standardize; mmvm "
            f"train warns of them at its start)" if step == 0 else
            f"loss is {terms.loss.item()} at step {step}; lower train.lr or check the data"
        )
    optimizer.zero_grad(set_to_none=True)
    try:
        accel.step(optimizer, terms.loss, model, model.names, cfg.train.grad_clip, scaler)
    except accel.NonFiniteGradientError as err:
        raise TrainingDivergedError(f"step {step}: {err}; lower train.lr") from err
    weights = model.likelihood_weights.to(terms.rec_ll)
    return {
        "loss": terms.loss.item(),
        "rec_nll": -(terms.rec_ll * weights).sum(1).mean().item(),
        "reg": terms.reg.mean().item(),
    }


def train(
    cfg: ExperimentConfig,
    train_set: Dataset,
    *,
    resume: bool = True,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``train_set`` for ``cfg.train.epochs`` epochs.

    ``log`` (e.g. ``print``) is told when a checkpoint is resumed; ``on_checkpoint``
    is called with the epoch after each checkpoint (with its config.json and
    metrics.csv) is written. The progress bar shows the running mean loss of the
    epoch so far, which at the epoch's end is the epoch's ``loss`` in metrics.csv.
    Over an earlier run's checkpoint (``resume=False``) nothing is written before this
    run's first checkpoint; a resume rewrites config.json and metrics.csv at once.
    """
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    cfg_names = [m.name for m in cfg.model.modalities]
    names = list(getattr(train_set, "names", cfg_names))
    if names != cfg_names:
        raise ValueError(f"dataset modalities {names} differ from the config's {cfg_names}")
    if len(train_set) == 0:
        raise ValueError("the training data has no samples; training needs at least one")
    device = resolve_device(cfg.train.device)
    out_dir = Path(cfg.train.out_dir)
    check_run_folder(out_dir)
    swept = sweep_temps(out_dir, RUN_FILES)  # a killed run's (SIGKILL, power cut)
    if swept and log is not None:
        log(f"removed {len(swept)} temporary file{'s' * (len(swept) > 1)} an interrupted "
            f"write left in {out_dir} ({', '.join(p.name for p in swept)})")
    model = accel.prepare(build_model(cfg).to(device), channels_last=cfg.train.channels_last,
                          compile=cfg.train.compile)
    optimizer = accel.adam(model.parameters(), cfg.train.lr, cfg.train.adam)
    scaler = accel.grad_scaler(cfg.train.amp, device)
    accel.amp_dtype(cfg.train.amp, device)  # fails now, not at the first step
    alpha_at = alpha_schedule(
        cfg.train.alpha_schedule, cfg.train.alpha_start, cfg.train.alpha, cfg.train.alpha_steps
    )
    start_epoch, step, history = 0, 0, []
    ckpt_path = out_dir / "checkpoint.pt"
    own = not ckpt_path.exists()  # no earlier run's checkpoint to keep whole here
    if resume and ckpt_path.is_file():
        own = True
        state = _resume(ckpt_path, cfg, model, optimizer, scaler)
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        write_companions(out_dir, state)  # whatever an earlier run left: this model's
        if log is not None and start_epoch < cfg.train.epochs:
            log(f"resuming from epoch {start_epoch} of {cfg.train.epochs} ({ckpt_path})")

    n, b = len(train_set), cfg.train.batch_size
    n_batches = math.ceil(n / b) - (n > b and n % b == 1)  # as mmvm.schedule.cut cuts
    # nothing left to train (a finished run rerun): no empty "0/0" bar
    with progress_bar(show_progress and start_epoch < cfg.train.epochs) as bar:
        task = bar.add_task("train", total=(cfg.train.epochs - start_epoch) * n_batches)
        for epoch in range(start_epoch, cfg.train.epochs):
            model.train()
            t0, sums, count = time.perf_counter(), {"loss": 0.0, "rec_nll": 0.0, "reg": 0.0}, 0
            for batch in iterate_batches(train_set, cfg.train.batch_size, cfg.train.seed, epoch,
                                         cfg.data.schedule, cfg.data.schedule_window):
                batch = to_device(batch, device, cfg.train.channels_last)
                alpha = alpha_at(step)
                metrics = train_step(model, optimizer, batch, cfg, step, alpha, scaler)
                n = batch["mask"].shape[0]
                for k in sums:
                    sums[k] += metrics[k] * n
                count += n
                step += 1
                bar.update(task, advance=1,
                           description=epoch_text(epoch, cfg.train.epochs, sums, count))
            row = {"epoch": epoch + 1, "step": step, **{k: v / count for k, v in sums.items()},
                   "alpha": alpha_at(step), "seconds": time.perf_counter() - t0}
            history.append(row)
            if log is not None and show_progress and not draws_live(bar):
                log(epoch_line(row, cfg.train.epochs))  # a log or pipe: no live bar
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == cfg.train.epochs:
                _refuse_nonfinite(model, epoch + 1, step)
                with deferred_signals():  # checkpoint, companions, the caller's record
                    save_run(out_dir, _state(cfg, model, optimizer, epoch + 1, step, history,
                                             scaler))
                    own = True
                    if on_checkpoint is not None:
                        on_checkpoint(epoch + 1)
            elif own:  # rows ahead of the checkpoint: a divergence's lead-up stays on disk
                write_metrics(out_dir, history)
    model.eval()
    return TrainResult(model=model, history=history, out_dir=out_dir, start_epoch=start_epoch)


def _refuse_nonfinite(model: MultimodalVAE, epoch: int, step: int) -> None:
    """A model with NaN or inf weights is not checkpointed: the last one stays."""
    bad = nonfinite_tensor(model.state_dict())
    if bad:
        raise TrainingDivergedError(f"after epoch {epoch} (step {step}) the model's weight "
                                    f"{bad}; not checkpointed; lower train.lr")


def _state(cfg, model, optimizer, epoch, step, history, scaler=None) -> dict[str, Any]:
    return {
        "config": config_to_dict(cfg),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        # float16's loss scale and its growth count: a resume goes on from them
        "scaler": None if scaler is None else scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": list(history),
        # the process that trained it last (mmvm.provenance)
        "environment": environment(next(model.parameters()).device),
    }


_READ_ONLY_KEYS = ("streaming", "cache_row_groups", "decoded_dir")


def _resume(path: Path, cfg: ExperimentConfig, model, optimizer, scaler=None
            ) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against ``cfg`` and loaded into ``model``,
    ``optimizer`` and ``scaler`` (float16; a checkpoint without its state: a fresh
    scale, as before the scale was saved)."""
    try:
        state = training_state(path)
    except ValueError as err:
        if (path.parent / "results.json").is_file():  # a federated run's folder: keep it
            raise ValueError(f"{path} is a federated run's assembled model (no optimizer "
                             "state), which mmvm train does not continue; choose another "
                             "train.out_dir (--fresh there would replace the run's "
                             "checkpoint and metrics)") from None
        raise ValueError(f"{err}; start over with `mmvm train --fresh` (the file is "
                         "replaced when the new run's first checkpoint is written) or "
                         "choose another train.out_dir") from None
    raw = {k: v for k, v in dict(state["config"]).items() if k != "source"}
    # keys a checkpoint predating them lacks take their defaults (the old behaviour)
    if isinstance(raw.get("data", {}), dict):  # else config_from_dict names it
        raw["data"] = {**dataclasses.asdict(DataConfig()), **raw.get("data", {})}
    saved, now = config_to_dict(config_from_dict(raw, source=str(path))), config_to_dict(cfg)
    for d in (saved, now):  # the epoch budget may grow on resume; nothing else may change
        # ... and the run folder may have moved since (out_dir is where, not what)
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("epochs", "out_dir")}
        # how the data is read (streamed or in memory) never changes the result
        d["data"] = {k: v for k, v in d["data"].items() if k not in _READ_ONLY_KEYS}
        d.pop("source", None)
        d.pop("eval", None)  # how the model is scored afterwards never changes training
    if saved != now:
        changes = "; ".join(config_changes(saved, now))
        raise ValueError(
            f"checkpoint {path} was written with a different config ({changes}); "
            "use another train.out_dir, set those keys back, or start over and overwrite "
            "the checkpoint (mmvm train --fresh)"
        )
    if state["epoch"] > cfg.train.epochs:  # else the caller would get a longer-trained model
        raise ValueError(
            f"checkpoint {path} is already trained for {state['epoch']} epochs, more than "
            f"train.epochs = {cfg.train.epochs}; raise train.epochs, use another "
            "train.out_dir, or start over (mmvm train --fresh)"
        )
    _load_weights(model, state, path)
    try:
        accel.load_optimizer_state(optimizer, state["optimizer"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise ValueError(f"checkpoint {path}: its optimizer state does not fit the model "
                         f"({type(err).__name__}: {str(err)[:200]}); start over with "
                         "`mmvm train --fresh` or choose another train.out_dir") from None
    try:
        accel.load_scaler_state(scaler, state.get("scaler"))
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}; start over with `mmvm train "
                         "--fresh` or choose another train.out_dir") from None
    return state


def _load_weights(model: MultimodalVAE, state: dict[str, Any], path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:  # the weights do not fit the model its config builds
        first = str(err).splitlines()[0]
        raise ValueError(f"checkpoint {path}: its weights do not fit the model its "
                         f"config describes ({first})") from None


def load_trained_model(run_dir: str | Path, device: str = "cpu") -> tuple[MultimodalVAE, dict]:
    """Model and plain-dict config from a run folder's checkpoint."""
    from mmvm.config import config_from_dict

    path = Path(run_dir) / "checkpoint.pt"
    state = training_state(path, map_location=device, keys=MODEL_KEYS)
    raw = dict(state["config"])
    raw.pop("source", None)
    cfg = config_from_dict(raw, source=str(run_dir))
    model = MultimodalVAE(cfg.model.modalities, cfg.model.latent_dim,
                          private_dim=cfg.model.private_dim)
    _load_weights(model, state, path)
    return model.to(device).eval(), state
