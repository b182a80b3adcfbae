"""One site of the federation: its data, its encoders/decoders, its optimizer.

A site never sees another site's data, only the other modalities' posterior
parameters (mu, logvar) for the rows of the current window. For each step it computes
``mmvm.objectives.site_loss`` on the batch rows it holds, scaled so that the gradient
equals the centralized one (the centralized loss is a mean over all B rows of the
batch), and applies its own Adam step. Rows are the federation's aligned order
(:class:`~mmvm.federation.link.Link`); nothing here knows of Flower or encryption."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mmvm import accel
from mmvm.checkpoint import checked_optimizer_state, load_torch, write_torch
from mmvm.config import ExperimentConfig
from mmvm.data import check_data_fits, open_dataset
from mmvm.data.store import DataError, read_site_meta
from mmvm.federation import peer_inputs
from mmvm.federation.coordinator import FLOATS, FederationError
from mmvm.federation.link import Link
from mmvm.federation.lookahead import Lookahead, forward_ahead, start_ahead, step_inputs
from mmvm.federation.plan import PlanArgs, Step, window_counts
from mmvm.federation.posteriors import PosteriorError, Posteriors
from mmvm.federation.progress import PRE_ATTACH, Progress
from mmvm.federation.reply_cache import ReplyCache
from mmvm.federation.settings import check_federable
from mmvm.federation.site_data import check_same_data, data_record
from mmvm.federation.site_encode import encode_rows, step_groups
from mmvm.federation.window_metrics import step_sums, zero_sums
from mmvm.noise import modality_noise
from mmvm.objectives import alpha_schedule, site_loss
from mmvm.provenance import environment
from mmvm.training import TrainingDivergedError, build_model, resolve_device


class Site:
    """State of one site: data, model, optimizer, link to the federation."""

    def __init__(self, cfg: ExperimentConfig, name: str, train_path: str | Path,
                 test_path: str | Path | None = None, overlap: bool = True,
                 admit: Callable[[list[str]], None] | None = None) -> None:
        """``admit(names)`` may refuse the model of ``names`` (raise) before it is built."""
        check_federable(cfg)
        self.cfg, self.name = cfg, name
        self.global_names = [m.name for m in cfg.model.modalities]
        held = read_site_meta(train_path)["tensors"]
        self.names = [m for m in self.global_names if m in held]
        if not self.names:
            raise DataError(f"{train_path}: site {name!r} holds none of the configured "
                            f"modalities {self.global_names} (file has {list(held)})")
        self.train_path, self.test_path = str(train_path), test_path and str(test_path)
        check_data_fits([s for s in cfg.model.modalities if s.name in self.names],
                        [train_path], cfg.source)
        if admit is not None:
            admit(self.names)
        self.data = open_dataset(train_path, self.names, cfg.data)
        self.device = resolve_device(cfg.train.device)
        self.model = self._seeded()
        self._optimizer: torch.optim.Optimizer | None = None  # built at the first step
        self._optimizer_state: dict | None = None  # restored, not yet applied
        self.scaler = accel.grad_scaler(cfg.train.amp, self.device)
        accel.amp_dtype(cfg.train.amp, self.device)  # fails here, not at the first step
        self.alpha_at = alpha_schedule(cfg.train.alpha_schedule, cfg.train.alpha_start,
                                       cfg.train.alpha, cfg.train.alpha_steps)
        self.windows_done = 0
        self.link: Link | None = None
        self.progress = Progress()  # where the site is in the run's protocol
        self.replies = ReplyCache()  # last window/unmask replies, for a restarted server
        self.lookahead = True  # one-step windows: encode the next batch once (lookahead.py)
        # ... and run its decoder half in a thread while the server routes
        self.overlap = overlap
        self._pool: ThreadPoolExecutor | None = None  # its one thread, made on first use
        self._ahead: Lookahead | None = None
        self.forwards_reused = 0  # steps that took over the pass of the message before
        self.halves_reused = 0  # ... and its decoder half
        self.waited_s = 0.0  # for it to end (see settle)
        self.encoded_s = 0.0  # in all, in encode_window (model compute of a reply)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Adam over the site's parameters, built (and given its restored state) on
        first use. Why lazily: torch's optimizers import ``torch._dynamo`` (~1-2 s of
        CPU) when built, and a deployment's ClientApp is a fresh process per message, so
        messages that do not train (describe, align, attach, unmask, evaluate) skip it."""
        if self._optimizer is None:
            t = self.cfg.train
            opt = accel.adam(self.model.parameters(), t.lr, t.adam)
            if self._optimizer_state is not None:  # raises: the state stays
                accel.load_optimizer_state(opt, self._optimizer_state)
            self._optimizer, self._optimizer_state = opt, None
        return self._optimizer

    def settle(self) -> None:
        """Wait until work started after the last reply (the decoder half of the
        next step, :mod:`mmvm.federation.lookahead`) is done with the model."""
        if self._ahead is not None:
            t = time.perf_counter()
            self._ahead.settle()
            self.waited_s += time.perf_counter() - t

    def abandon_window(self) -> None:
        """After a failed window, in a process that keeps this site: what its steps
        applied stays (as at a site whose reply came too late), nothing else does."""
        self.settle()
        self._ahead = None
        self.model.zero_grad(set_to_none=True)
        if self.scaler is not None:  # its per-step stage (unscaled or not) starts afresh
            scale, self.scaler = self.scaler.state_dict(), accel.grad_scaler(
                self.cfg.train.amp, self.device)
            self.scaler.load_state_dict(scale)

    def take_waited(self) -> float:
        """Seconds spent waiting in :meth:`settle` since the last call."""
        waited, self.waited_s = self.waited_s, 0.0
        return waited

    def _optimizer_state_dict(self) -> dict | None:
        """What :meth:`save` writes: the live optimizer's state, else the restored
        state as it was read, else None (never stepped: a fresh Adam)."""
        if self._optimizer is not None:
            return self._optimizer.state_dict()
        return self._optimizer_state

    # ------------------------------------------------------------------ alignment
    def attach(self, n: int, rows: list[int], positions: np.ndarray, plan: PlanArgs,
               **options) -> None:
        """Adopt the federation's row order: dataset row ``positions[i]`` is aligned
        row ``rows[i]``. ``options``: float16, shared, delta_tol (see :class:`Link`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(positions):
            raise FederationError(f"site {self.name}: the server assigned {len(rows)} rows "
                                  f"to {len(positions)} samples")
        if len(rows) and (rows.min() < 0 or rows.max() >= n
                          or len(np.unique(rows)) != len(rows)):
            raise FederationError(f"site {self.name}: the server assigned invalid or "
                                  f"repeated rows (of {n})")
        local_of = np.full(n, -1, dtype=np.int64)
        local_of[rows] = positions
        self.link = Link(int(n), local_of, plan, **options)

    def linked(self) -> Link:
        if self.link is None:
            raise FederationError(f"site {self.name}: not attached to a federation yet")
        return self.link

    def window_rows(self, index: int) -> np.ndarray:
        """Sorted aligned rows window ``index`` trains on (empty past the last)."""
        plan = self.linked().plan
        return plan[index].rows.numpy() if index < len(plan) else np.zeros(0, np.int64)

    def own_rows(self, modalities: Sequence[str] = ()) -> np.ndarray:
        """How many of this site's rows each window of the plan trains (distinct):
        column 0 all of them, column ``1 + j`` those holding ``modalities[j]``; one
        pass over the plan for all columns."""
        link = self.linked()
        own = link.local_of >= 0
        flags = np.zeros((len(own), 1 + len(modalities)), dtype=bool)
        flags[:, 0] = own
        cols = [self.names.index(m) for m in modalities]
        flags[own, 1:] = self.data.mask.numpy()[link.local_of[own]][:, cols]
        return window_counts(link.plan, flags)

    def check_window(self, index: int) -> None:
        plan = self.linked().plan
        if not 0 <= index < len(plan):
            raise FederationError(f"site {self.name}: window {index} is not in the plan "
                                  f"({len(plan)} windows)")

    # ------------------------------------------------------------------ encode
    def encode(self, index: int) -> dict[str, Posteriors]:
        """Own posteriors for the rows of window ``index`` this site holds, each pass
        one step's batch of them (:mod:`mmvm.federation.site_encode`)."""
        self.settle()
        link = self.linked()
        if index >= len(link.plan):
            return {}
        return encode_rows(self.model, self.data,
                           step_groups(link.plan[index].steps, link.local_of), self.device)

    @property
    def pass_rows(self) -> int:
        """Rows per forward pass outside a step (encoding a window's rows, evaluation):
        the plan's batch, which the site's max-step-gib admitted, and at most 512."""
        return min(512, self.linked().plan.batch_size if self.link else
                   self.cfg.train.batch_size)

    def encode_window(self, index: int) -> dict[str, Posteriors]:
        """Own posteriors for the rows of window ``index``. A window of one step gets
        them from that step's own encoder pass, run now with autograd on and kept for
        the step to take over (:mod:`mmvm.federation.lookahead`); with ``overlap`` the
        step's decoder half then runs in a thread while the reply travels."""
        self.settle()
        t = time.perf_counter()
        try:
            return self._encode_window(index)
        finally:
            self.encoded_s += time.perf_counter() - t

    def _encode_window(self, index: int) -> dict[str, Posteriors]:
        self._ahead = None
        link = self.linked()
        if not (self.lookahead and not link.shared and index < len(link.plan)
                and len(link.plan[index].steps) == 1):  # shared: FedAvg lands in between
            return self.encode(index)
        step = link.plan[index].steps[0]
        rows = step.rows.numpy()
        local = link.local_of[rows]
        where = np.flatnonzero(local >= 0)
        if not len(where):
            return {}
        t = self.cfg.train
        ahead = forward_ahead(self.model, self.data, step.step, local[where], self.device,
                              t.amp, t.channels_last)
        if self.overlap and not t.compile:  # compiled modules: not from two threads
            self.model.zero_grad(set_to_none=True)  # the half fills the decoders'
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmvm-decoder-half")
            ahead.decoded = start_ahead(
                self._pool, self.model, ahead, self.global_names, self.cfg.model.method,
                t.beta, self.alpha_at(step.step), self._noise(step.step, len(rows), where),
                len(where) / len(rows), t.amp, self.scaler)
        self._ahead, rows, out = ahead, rows[where], {}
        for j, m in enumerate(self.names):
            keep = np.flatnonzero(ahead.mask[:, j].numpy())
            keep = keep[np.argsort(rows[keep], kind="stable")]  # as encode(): row order
            if len(keep):
                mu, lv = (v[keep, j].detach().float().cpu().numpy()
                          for v in (ahead.mu, ahead.logvar))
                out[m] = Posteriors(rows[keep], mu, lv)
        return out

    # ------------------------------------------------------------------ train
    def train_window(self, index: int, others: dict[str, Posteriors]) -> dict:
        """Run window ``index`` of the plan with the other modalities' posteriors fixed."""
        self.check_window(index)
        self.settle()
        foreign = set(others) - (set(self.global_names) - set(self.names))
        if foreign:
            raise PosteriorError(f"site {self.name}: posteriors for modalities "
                                 f"{sorted(foreign)} (own or unknown)")
        self.model.train()
        sums = zero_sums(self.names)
        for step in self.link.plan[index].steps:
            m = self._step(step, others)
            for k in sums:
                sums[k] += m[k]
        self.windows_done += 1
        return sums

    def _step(self, step: Step, others: dict[str, Posteriors]) -> dict:
        rows = step.rows.numpy()
        B, D = len(rows), self.model.latent_dim
        local = self.link.local_of[rows]
        where = np.flatnonzero(local >= 0)
        if not len(where):
            return {**zero_sums(self.names), "steps": 1}
        dev, t = self.device, self.cfg.train
        ahead, self._ahead, reconstruct, ahead_s = self._ahead, None, None, 0.0
        if ahead is not None and ahead.valid_for(self.model, step.step, local[where]):
            own_mask, x, own = ahead.mask, ahead.x, (ahead.mu, ahead.logvar)
            reconstruct = ahead.reconstruct()  # the decoder half, if it ran
            self.forwards_reused += 1
            if reconstruct is not None:  # it ran while the server routed
                self.halves_reused += 1
                ahead_s = ahead.ahead_seconds
        else:
            ahead = None  # its graph goes now, not after this step's
            x, own_mask = step_inputs(self.data, local[where], dev, t.channels_last)
            own = None
        mask, mu_all, lv_all = peer_inputs.gather(others, rows[where], self.global_names,
                                                  self.names, own_mask, D)
        eps = self._noise(step.step, B, where)
        with accel.autocast(t.amp, dev):
            terms = site_loss(self.model, x, mask.to(dev), mu_all.to(dev), lv_all.to(dev),
                              self.global_names, self.cfg.model.method, t.beta,
                              self.alpha_at(step.step), eps.to(dev), own, reconstruct)
        loss = terms.loss * (len(where) / B)  # the centralized loss is a mean over B rows
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"site {self.name}: loss {loss.item()} at step "
                                        f"{step.step}; nothing of this step is applied")
        if reconstruct is None:  # else the decoders' gradients are in, the rest is not
            self.optimizer.zero_grad(set_to_none=True)
        try:
            accel.step(self.optimizer, loss, self.model, self.names, t.grad_clip,
                       self.scaler)
        except accel.NonFiniteGradientError as err:
            raise TrainingDivergedError(f"site {self.name}, step {step.step}: {err}"
                                        f"{peer_inputs.ranges(others, rows[where])}") from err
        w = self.model.likelihood_weights.to(terms.rec_ll)
        own = [self.global_names.index(n) for n in self.names]
        return step_sums(self.names, -(terms.rec_ll[:, own] * w), terms.reg, ahead_s)

    def _noise(self, step: int, B: int, where: np.ndarray) -> torch.Tensor:
        """The step's reparameterization noise [len(where), M, D], as centrally."""
        D, M = self.model.latent_dim, len(self.global_names)
        return torch.stack([modality_noise(self.cfg.train.seed, step, g, B, D)[where]
                            for g in range(M)], 1)

    # ------------------------------------------------------------------ weights
    def weights(self, modality: str) -> dict[str, np.ndarray]:
        """Encoder and decoder parameters of ``modality`` (for FedAvg among holders)."""
        self.settle()
        sd = {f"encoders.{modality}.{k}": v for k, v in
              self.model.encoders[modality].state_dict().items()}
        sd.update({f"decoders.{modality}.{k}": v for k, v in
                   self.model.decoders[modality].state_dict().items()})
        return {k: v.detach().cpu().numpy().copy() for k, v in sd.items()}  # no alias

    def shared_weights(self, modality: str) -> dict[str, np.ndarray]:
        """What FedAvg averages of ``modality``: its float tensors (a BatchNorm's batch
        count stays the site's: unused with a momentum, too large for the fixed point)."""
        return {k: v for k, v in self.weights(modality).items() if v.dtype.kind == "f"}

    def load_weights(self, modality: str, arrays: dict[str, np.ndarray],
                     checked: bool = False) -> None:
        """Replace ``modality``'s shared parameters by ``arrays`` (all, same shapes;
        ``checked``: :meth:`check_weights` passed them already)."""
        if not checked:  # (which also waited for the decoder half: settle)
            self.check_weights(modality, arrays)
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in arrays.items()},
                                   strict=False)

    def check_weights(self, modality: str, arrays: dict[str, np.ndarray]) -> None:
        """Refuse ``arrays`` that are not all of ``modality``'s shared parameters, of
        their shapes, native floats, finite."""
        self.settle()
        own = self.shared_weights(modality)
        if set(arrays) != set(own):
            raise FederationError(f"site {self.name}: weights for {modality!r} name "
                                  f"parameters {sorted(set(arrays) ^ set(own))[:3]} that do "
                                  f"not match its model")
        for k, v in arrays.items():
            if v.dtype not in FLOATS:  # torch takes no float128, nor big-endian
                raise FederationError(f"site {self.name}: parameter {k} is {v.dtype.str}, "
                                      f"not float16, float32 or float64 in native order")
            if tuple(v.shape) != own[k].shape or not np.isfinite(v).all():
                raise FederationError(f"site {self.name}: parameter {k} has shape "
                                      f"{tuple(v.shape)} (expected {own[k].shape}) or "
                                      f"non-finite values")

    def _seeded(self) -> torch.nn.Module:
        cfg = self.cfg  # the model the config's seed builds, as every process builds it
        return accel.prepare(build_model(cfg, self.names).to(self.device),
                             channels_last=cfg.train.channels_last, compile=cfg.train.compile)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Model, optimizer (and float16's loss scale), counters and link, written
        atomically. Before attach no model or optimizer: the model is still the one
        the config's seed builds, and whoever starts runs could otherwise have the
        site write one a run (a review)."""
        self.settle()
        began = self.link is not None or self.windows_done > 0 \
            or self.progress.phase not in PRE_ATTACH
        state = {"model": self.model.state_dict() if began else None,
                 "optimizer": self._optimizer_state_dict() if began else None,
                 "scaler": None if self.scaler is None else self.scaler.state_dict(),
                 "windows_done": self.windows_done, "names": self.names,
                 "link": None if self.link is None else self.link.state(),
                 "progress": self.progress.state(), "replies": self.replies.state(),
                 "environment": environment(self.device),  # this host's: never sent
                 **data_record(self.data)}
        write_torch(path, state)

    def restore(self, path: str | Path) -> None:
        self.settle()
        state = load_torch(path, self.device)  # its bytes checked: damage is caught
        if state["names"] != self.names:
            raise ValueError(f"{path}: saved for modalities {state['names']}, this site "
                             f"holds {self.names}")
        check_same_data(self.name, self.train_path, self.data, state, path)
        if state["model"] is None:  # before attach: the seed's (see save), built anew
            self.model = self._seeded()  # (this process may hold another run's)
        else:
            self.model.load_state_dict(state["model"])
        self._ahead = None
        self._optimizer, self._optimizer_state = None, checked_optimizer_state(
            state["optimizer"], len(list(self.model.parameters())), path)
        try:  # float16's loss scale
            accel.load_scaler_state(self.scaler, state.get("scaler"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        self.windows_done = int(state["windows_done"])
        self.link = None if state["link"] is None else Link.from_state(state["link"])
        self.progress = Progress.from_state(state["progress"])
        self.replies = ReplyCache.from_state(state.get("replies", {}))
