"""The federated round loop, written once against a small transport interface.

``run_federation`` is what the Flower ServerApp runs (with a transport made of Flower
Messages, ``server/app.py``) and what tests and benchmarks can run in one process (with
``LocalTransport``, which calls :class:`mmvm.federation.site.Site` objects directly).
Both move the same bytes: posterior tables as Arrow IPC, optionally float16.

Per window w: route to each site the other modalities' posteriors for its rows of w;
each site trains w and answers with its own posteriors for the rows of w+1 (computed
after its update: with one step per window they are exactly the current posteriors)
and, for modalities several sites hold, its weights, which are averaged (FedAvg) and
sent back with the next window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mmvm.federation.coordinator import Coordinator, SiteInfo
from mmvm.federation.delta import PosteriorCache
from mmvm.federation.posteriors import Posteriors, decode_table, encode_table


class Transport(Protocol):
    """How the server talks to sites; every method addresses several sites at once."""

    def describe(self) -> list[dict]: ...

    def attach(self, requests: Mapping[str, dict]) -> dict[str, dict]: ...

    def window(self, requests: Mapping[str, dict]) -> dict[str, dict]: ...

    def evaluate(self, requests: Mapping[str, dict]) -> dict[str, dict]: ...


@dataclass
class FederationResult:
    history: list[dict] = field(default_factory=list)
    evaluation: dict[str, dict] = field(default_factory=dict)
    bytes_total: int = 0
    seconds: float = 0.0
    sites: dict[str, dict] = field(default_factory=dict)
    model_state: dict[str, np.ndarray] | None = None


def run_federation(transport: Transport, modalities: list[str], *, batch_size: int,
                   seed: int, epochs: int, exchange: str = "step", k: int = 1,
                   local_epochs: int = 1, float16: bool = False, latent_dim: int | None = None,
                   collect_model: bool = False,
                   on_window: Callable[[dict], None] | None = None,
                   secure: bool = False, warmup: bool = False,
                   delta_tol: float | None = None) -> FederationResult:
    """Align, train every window of the plan, evaluate; returns metrics and bytes.

    ``secure``: the sealed protocol of :mod:`mmvm.federation.sealed` (pseudonymous
    alignment, end-to-end encrypted posteriors, masked FedAvg); the transport then
    needs an ``align`` method too. ``delta_tol`` (plaintext only): event-triggered
    exchange, see :mod:`mmvm.federation.delta`."""
    if secure and delta_tol is not None:
        raise ValueError("delta-tol (event-triggered exchange) is not available in secure mode")
    if secure:
        from mmvm.federation.sealed import run_sealed

        return run_sealed(transport, modalities, batch_size=batch_size, seed=seed,
                          epochs=epochs, exchange=exchange, k=k, local_epochs=local_epochs,
                          warmup=warmup, float16=float16, latent_dim=latent_dim,
                          collect_model=collect_model, on_window=on_window)
    t0 = time.perf_counter()
    infos = [SiteInfo(d["key"], d["site"], list(d["modalities"]), list(d["sample_ids"]))
             for d in transport.describe()]
    coord = Coordinator(infos, modalities, batch_size=batch_size, seed=seed, epochs=epochs,
                        exchange=exchange, k=k, local_epochs=local_epochs, warmup=warmup)
    result = FederationResult(sites={i.key: {"site": i.name, "modalities": i.modalities,
                                             "n": len(i.held)} for i in infos})
    replies = transport.attach({key: {"sample_ids": coord.ids, "plan": coord.plan_args,
                                      "float16": float16, "shared": sorted(coord.shared),
                                      "delta_tol": -1.0 if delta_tol is None else delta_tol}
                                for key in coord.sites})
    table, nbytes = _collect(replies, latent_dim, coord)
    cache = forwarded = None
    if delta_tol is not None:  # the server keeps the latest rows; forwards only news
        cache, forwarded = PosteriorCache(), {key: PosteriorCache() for key in coord.sites}
        cache.update(table)
    result.bytes_total += nbytes + sum(len(s) for s in coord.ids) * len(coord.sites)
    averaged: dict[str, dict[str, np.ndarray]] = {}
    for w in range(len(coord.plan)):
        tw = time.perf_counter()
        if cache is not None:
            table = cache.table(coord.window_ids(w))
        routed = coord.route(w, table)
        requests = {}
        for key, others in routed.items():
            if forwarded is not None:
                others = forwarded[key].changed(others, 0.0)
            blob = encode_table(others, float16)
            requests[key] = {"window": w, "others": blob,
                             "weights": _weights_for(coord, key, averaged)}
        sent = sum(len(r["others"]) + _nbytes(r["weights"]) for r in requests.values())
        replies = transport.window(requests)
        table, received = _collect(replies, latent_dim, coord)
        if cache is not None:
            cache.update(table)
        averaged = coord.fedavg({k2: r.get("weights", {}) for k2, r in replies.items()})
        received += sum(_nbytes(r.get("weights", {})) for r in replies.values())
        result.bytes_total += sent + received
        row = _window_row(w, coord, replies, sent + received, time.perf_counter() - tw)
        result.history.append(row)
        if on_window:
            on_window(row)
    final_evaluation(transport, coord, averaged, collect_model, result)
    result.seconds = time.perf_counter() - t0
    return result


def final_evaluation(transport, coord: Coordinator, averaged: Mapping[str, dict],
                     collect_model: bool, result: FederationResult) -> None:
    """Last message: sites load the averaged shared weights and evaluate; with
    ``collect_model`` their weights are assembled into ``result.model_state``."""
    result.evaluation = transport.evaluate(
        {key: {"weights": _weights_for(coord, key, averaged), "collect": collect_model}
         for key in coord.sites})
    if collect_model:
        result.model_state = {}
        for rep in result.evaluation.values():
            for arrays in rep.pop("model", {}).values():
                result.model_state.update(arrays)


def _weights_for(coord: Coordinator, key: str, averaged: Mapping[str, dict]) -> dict:
    return {m: a for m, a in averaged.items() if m in coord.sites[key].modalities}


def _nbytes(weights: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    return int(sum(a.nbytes for arrays in weights.values() for a in arrays.values()))


def _collect(replies: Mapping[str, dict], latent_dim: int | None,
             coord: Coordinator) -> tuple[dict[str, Posteriors], int]:
    tables, nbytes = [], 0
    for key, rep in replies.items():
        blob = rep.get("posteriors", b"")
        nbytes += len(blob)
        t = decode_table(blob, latent_dim=latent_dim, sender=coord.sites[key].name)
        foreign = set(t) - set(coord.sites[key].modalities)
        if foreign:
            raise ValueError(f"site {coord.sites[key].name} sent posteriors for modalities "
                             f"{sorted(foreign)} it does not hold")
        for m, p in t.items():
            stray = set(p.sample_ids) - coord.sites[key].held
            if stray:
                raise ValueError(f"site {coord.sites[key].name} sent posteriors for "
                                 f"sample {sorted(stray)[0]!r} of {m!r}, which it does not hold")
        tables.append(t)
    return Coordinator.merge(tables), nbytes


def _window_row(w: int, coord: Coordinator, replies: Mapping[str, dict], nbytes: int,
                seconds: float) -> dict:
    window = coord.plan[w]
    rows = sum(len(s.rows) for s in window.steps)
    rec = sum(float(r["metrics"]["rec_nll"]) for r in replies.values())
    reg_rows = sum(float(r["metrics"]["rows"]) for r in replies.values()) or 1.0
    reg = sum(float(r["metrics"]["reg"]) for r in replies.values()) / reg_rows
    return {"window": w, "epoch": window.steps[-1].epoch + 1, "step": window.steps[-1].step + 1,
            "rec_nll": rec / rows, "reg": reg, "bytes": nbytes, "seconds": seconds}
