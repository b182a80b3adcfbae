"""The exchange plan: which optimiser steps run between two posterior exchanges.

Training is the centralized schedule (``mmvm.schedule.epoch_batches`` over the aligned
sample ids, the same seed) cut into *windows*. At the start of a window every site
has the other sites' posterior parameters for the rows the window trains on; inside a
window a site trains alone. The exchange period sets the window length:

- ``step``: one step per window. Posteriors are always current: the federated run
  reproduces centralized training exactly (vertical partitions).
- ``steps``: ``k`` steps per window; posteriors up to k-1 steps stale. Fewer messages,
  the same bytes (every row's posterior still travels once per epoch).
- ``round``: ``local_epochs`` whole epochs per window on posteriors fetched once at
  the window start; the bytes per epoch fall by ``local_epochs`` (and 2x more with
  float16), at the price of staleness.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from mmvm.config_ranges import MAX_SEED
from mmvm.schedule import batch_starts, batches_per_epoch, epoch_permutation

EXCHANGES = ("step", "steps", "round")
QUANTIZE = ("none", "fp16", "int8")  # how posterior values travel


@dataclass(frozen=True)
class Step:
    step: int  # global optimiser step (drives noise and the alpha schedule)
    epoch: int
    rows: torch.Tensor  # int64 [B] rows of the aligned sample-id list


@dataclass(frozen=True)
class Window:
    index: int
    steps: Steps  # made when read

    @property
    def rows(self) -> torch.Tensor:
        """Sorted distinct rows the window touches (whose posteriors it needs)."""
        return self.steps.rows()

    @property
    def epochs(self) -> tuple[int, int]:
        return self.steps[0].epoch, self.steps[-1].epoch


@dataclass(frozen=True)
class PlanArgs:
    """What fixes the plan besides the number of aligned rows: the server sends these
    and every site derives the same batches itself (batches never travel). With them
    travels how the plan's exchanges are encoded, which both ends of every exchange
    must agree on: ``quantize`` ("none", "fp16", "int8") and ``delta_unit``, the unit
    of the event-triggered tolerance ("latent" or "std", :mod:`mmvm.federation.delta`)."""

    batch_size: int
    seed: int
    epochs: int
    exchange: str = "step"
    k: int = 1
    local_epochs: int = 1
    warmup: bool = False
    quantize: str = "none"
    delta_unit: str = "latent"

    def plan(self, n: int) -> Plan:
        return exchange_plan(n, self.batch_size, self.seed, self.epochs, self.exchange,
                             self.k, self.local_epochs, self.warmup)

    def to_dict(self) -> dict:
        """Encoding keys at their defaults are left out: such a plan reads the same
        as before they existed (server fingerprints, sites of earlier versions)."""
        d = asdict(self)
        for key, default in (("quantize", "none"), ("delta_unit", "latent")):
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PlanArgs:
        """Strict: unknown or missing keys and wrong types raise ValueError."""
        names = {f.name: f.type for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - set(names):
            raise ValueError(f"plan arguments {d!r}: expected keys {sorted(names)}")
        kinds = {"int": int, "str": str, "bool": bool}
        for k, v in d.items():
            if type(v) is not kinds[names[k]]:
                raise ValueError(f"plan argument {k} = {v!r:.40} is not a {names[k]}")
            if type(v) is int and not -(2 ** 63) <= v < 2 ** 63:  # kept in state files
                raise ValueError(f"plan argument {k}: an integer beyond 64 bits")
        if not 0 <= d.get("seed", 0) <= MAX_SEED:  # seed * 100_003 + epoch: a generator's
            raise ValueError(f"plan argument seed = {d['seed']} is not in 0..{MAX_SEED}")
        low = [k for k in ("batch_size", "epochs", "k", "local_epochs") if d.get(k, 1) < 1]
        if low or d.get("exchange", "step") not in EXCHANGES:
            raise ValueError(f"plan arguments {d!r}: {', '.join(low) or 'exchange'} "
                             f"out of range (>= 1; exchange one of {list(EXCHANGES)})")
        if d.get("quantize", "none") not in QUANTIZE or \
                d.get("delta_unit", "latent") not in ("latent", "std"):
            raise ValueError(f"plan arguments {d!r}: quantize must be one of "
                             f"{list(QUANTIZE)}, delta_unit 'latent' or 'std'")
        try:
            return cls(**d)
        except TypeError as err:
            raise ValueError(f"plan arguments {d!r}: {err}") from None


def exchange_plan(n: int, batch_size: int, seed: int, epochs: int, exchange: str = "step",
                  k: int = 1, local_epochs: int = 1, warmup: bool = False) -> Plan:
    """All windows of a run of ``epochs`` epochs over ``n`` aligned samples.

    With ``warmup`` (``round`` only) window lengths double, 1, 2, 4, ... epochs, up to
    ``local_epochs``: posteriors move fastest early in training, so early exchanges
    buy the most accuracy per byte.
    """
    return Plan(n, batch_size, seed, epochs, exchange, k, local_epochs, warmup)


class Plan(Sequence[Window]):
    """The windows of a run, made when asked for: only where each window starts is
    kept (8 bytes a window) and the batches of the last epochs read, so a site or
    server holds O(n) of the plan, not O(epochs x n) (a million steps as objects
    took ~1 GB, rebuilt at every message of a fresh ClientApp process)."""

    def __init__(self, n: int, batch_size: int, seed: int, epochs: int,
                 exchange: str = "step", k: int = 1, local_epochs: int = 1,
                 warmup: bool = False) -> None:
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {list(EXCHANGES)}, got {exchange!r}")
        if epochs <= 0:
            raise ValueError(f"epochs must be positive, got {epochs}")
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"need n > 0 and batch_size > 0, got n={n}, "
                             f"batch_size={batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = batches_per_epoch(n, batch_size)
        total = epochs * self.per_epoch
        if exchange == "step":
            starts = np.arange(total + 1, dtype=np.int64)
        elif exchange == "steps":
            if k < 1:
                raise ValueError(f"exchange-steps must be >= 1, got {k}")
            starts = np.append(np.arange(0, total, k, dtype=np.int64), total)
        else:
            if local_epochs < 1:
                raise ValueError(f"local-epochs must be >= 1, got {local_epochs}")
            bounds, first, length = [0], 0, 1 if warmup else local_epochs
            while first < epochs:
                first, length = min(epochs, first + length), min(2 * length, local_epochs)
                bounds.append(first)
            starts = np.asarray(bounds, dtype=np.int64) * self.per_epoch
        self._starts = starts
        self._epochs: dict[int, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = _position(index, len(self), "window", "a plan")
        return Window(index, Steps(self, int(self._starts[index]),
                                   int(self._starts[index + 1])))

    def first_epoch(self, index: int) -> int:
        """The epoch window ``index`` starts in (without making the window)."""
        return int(self._starts[index]) // self.per_epoch

    def _order(self, epoch: int) -> torch.Tensor:
        with self._lock:  # a site's threads may read the plan
            got = self._epochs.get(epoch)
            if got is None:
                if len(self._epochs) >= 2:  # the current epoch and the one before
                    self._epochs.pop(next(iter(self._epochs)))
                got = self._epochs[epoch] = epoch_permutation(self.n, self.seed, epoch)
            return got

    def rows(self, step: int) -> torch.Tensor:
        """The rows of global step ``step`` (a view of its epoch's permutation)."""
        epoch, j = divmod(step, self.per_epoch)
        return self.batches(epoch, j, j + 1)

    def batches(self, epoch: int, first: int, end: int) -> torch.Tensor:
        """The rows of batches ``first .. end - 1`` of ``epoch``, in order: one slice
        of its permutation (the last batch ends at ``n``: a trailing one joined it)."""
        b = end * self.batch_size if end < self.per_epoch else self.n
        return self._order(epoch)[first * self.batch_size:b]

    def step_counts(self, flags: np.ndarray) -> np.ndarray:
        """Per step of the run, how many of its rows have ``flags[row]`` set (per
        column for 2-D ``flags``); one epoch's permutation at a time."""
        # int32: a batch is far below 2**31 rows, and a site checks 10^7-step plans
        out = np.zeros((int(self._starts[-1]),) + flags.shape[1:], dtype=np.int32)
        starts = batch_starts(self.n, self.batch_size)
        for epoch in range(len(out) // self.per_epoch):
            hits = flags[epoch_permutation(self.n, self.seed, epoch).numpy()]
            out[epoch * self.per_epoch:(epoch + 1) * self.per_epoch] = \
                np.add.reduceat(hits.astype(np.int32), starts, axis=0)
        return out


class Steps(Sequence[Step]):
    """The steps of one window, made when read: a window of whole epochs at batch 1
    would otherwise hold a Step (~1 KB) per sample."""

    def __init__(self, plan: Plan, first: int, end: int) -> None:
        self.plan, self.first, self.end = plan, first, end

    def __len__(self) -> int:
        return self.end - self.first

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        t = self.first + _position(i, len(self), "step", "a window")
        return Step(t, t // self.plan.per_epoch, self.plan.rows(t))

    def rows(self) -> torch.Tensor:
        """Sorted distinct rows of all the steps: one slice of each epoch's
        permutation, not a tensor per step."""
        per, parts, t = self.plan.per_epoch, [], self.first
        while t < self.end:
            epoch, j = divmod(t, per)
            stop = min(self.end, (epoch + 1) * per)
            parts.append(self.plan.batches(epoch, j, stop - epoch * per))
            t = stop
        return torch.unique(torch.cat(parts))


def _position(i: int, n: int, what: str, of: str) -> int:
    """Sequence index ``i`` (negative from the end) of ``n`` items, checked."""
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        raise IndexError(f"{what} {i} of {of} of {n}")
    return j


def window_counts(plan: Plan, flags: np.ndarray) -> np.ndarray:
    """Per window, how many of the distinct rows it trains have ``flags[row]`` set
    (e.g. the rows a site holds); 2-D ``flags`` ``[n, c]`` count ``c`` sets of rows
    in one pass (``[windows, c]``). Checks at attach look at every window of runs
    that may have millions: the steps' counts come one epoch at a time, and a window
    within one epoch (a permutation's batches: no row twice) sums its steps'."""
    per_step = plan.step_counts(flags)
    starts = plan._starts
    out = np.add.reduceat(per_step, starts[:-1], axis=0, dtype=np.int64) \
        if len(per_step) else np.zeros((len(plan),) + flags.shape[1:], np.int64)
    spans = np.flatnonzero(starts[:-1] // plan.per_epoch
                           != (starts[1:] - 1) // plan.per_epoch)
    for i in spans:  # over an epoch boundary: a row may come twice, count it once
        out[i] = np.count_nonzero(flags[plan[int(i)].rows.numpy()], axis=0)
    return out


def checkpoint_windows(plan: Plan, every: int, epochs_every: int) -> set[int]:
    """Windows the server checkpoints after (and sites keep a snapshot of).

    ``every > 0``: every ``every``-th window; ``every == 0``: each window that
    completes a multiple of ``epochs_every`` epochs (the centralized trainer's
    ``train.checkpoint_every``; ``round`` windows may complete several). The last
    window always."""
    if every < 0 or epochs_every < 1:
        raise ValueError(f"checkpoint every {every} windows / {epochs_every} epochs")
    out = {len(plan) - 1} if plan else set()
    done = 0  # epochs complete before the window
    for w in range(len(plan)):
        # the next window's first epoch = epochs complete after this one
        after = plan.first_epoch(w + 1) if w + 1 < len(plan) else done + 1
        if (every and (w + 1) % every == 0) or \
                (not every and after // epochs_every > done // epochs_every):
            out.add(w)
        done = after
    return out
