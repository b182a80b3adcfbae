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

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from mmvm.schedule import epoch_batches

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
    steps: tuple[Step, ...]

    @property
    def rows(self) -> torch.Tensor:
        """Sorted distinct rows the window touches (whose posteriors it needs)."""
        return torch.unique(torch.cat([s.rows for s in self.steps]))

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

    def plan(self, n: int) -> list[Window]:
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
                raise ValueError(f"plan argument {k} = {v!r} is not a {names[k]}")
        if d.get("quantize", "none") not in QUANTIZE or \
                d.get("delta_unit", "latent") not in ("latent", "std"):
            raise ValueError(f"plan arguments {d!r}: quantize must be one of "
                             f"{list(QUANTIZE)}, delta_unit 'latent' or 'std'")
        try:
            return cls(**d)
        except TypeError as err:
            raise ValueError(f"plan arguments {d!r}: {err}") from None


def exchange_plan(n: int, batch_size: int, seed: int, epochs: int, exchange: str = "step",
                  k: int = 1, local_epochs: int = 1, warmup: bool = False) -> list[Window]:
    """All windows of a run of ``epochs`` epochs over ``n`` aligned samples.

    With ``warmup`` (``round`` only) window lengths double, 1, 2, 4, ... epochs, up to
    ``local_epochs``: posteriors move fastest early in training, so early exchanges
    buy the most accuracy per byte.
    """
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {list(EXCHANGES)}, got {exchange!r}")
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs}")
    steps, t = [], 0
    for epoch in range(epochs):
        for rows in epoch_batches(n, batch_size, seed, epoch):
            steps.append(Step(t, epoch, rows))
            t += 1
    if exchange == "step":
        groups = [[s] for s in steps]
    elif exchange == "steps":
        if k < 1:
            raise ValueError(f"exchange-steps must be >= 1, got {k}")
        groups = [steps[i:i + k] for i in range(0, len(steps), k)]
    else:
        if local_epochs < 1:
            raise ValueError(f"local-epochs must be >= 1, got {local_epochs}")
        groups, first, length = [], 0, 1 if warmup else local_epochs
        while first < epochs:
            groups.append([s for s in steps if first <= s.epoch < first + length])
            first += length
            length = min(2 * length, local_epochs)
    return [Window(i, tuple(g)) for i, g in enumerate(groups)]


def window_counts(plan: list[Window], flags: np.ndarray) -> np.ndarray:
    """Per window, how many of the distinct rows it trains have ``flags[row]`` set
    (e.g. the rows a site holds). One pass over the plan: checks at attach look at
    every window of runs that may have hundreds of thousands."""
    out = np.zeros(len(plan), dtype=np.int64)
    single = [i for i, w in enumerate(plan) if len(w.steps) == 1]
    if single:
        parts = [plan[i].steps[0].rows.numpy() for i in single]  # a step's rows differ
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        hits = flags[np.concatenate(parts)].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        sums = np.add.reduceat(hits, starts) if len(hits) else np.zeros(len(parts), int)
        out[single] = np.where(sizes > 0, sums, 0)
    for i, w in enumerate(plan):
        if len(w.steps) > 1:
            out[i] = int(np.count_nonzero(flags[w.rows.numpy()]))
    return out


def checkpoint_windows(plan: list[Window], every: int, epochs_every: int) -> set[int]:
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
        after = plan[w + 1].steps[0].epoch if w + 1 < len(plan) else done + 1
        if (every and (w + 1) % every == 0) or \
                (not every and after // epochs_every > done // epochs_every):
            out.add(w)
        done = after
    return out
