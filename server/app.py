"""The server: a Flower ServerApp whose round loop is ``mmvm.federation.driver``.

This file only turns the driver's requests into Flower Messages and back, waits for
the sites, and writes the run's results (metrics.csv, results.json, the assembled
model as a checkpoint ``mmvm evaluate`` reads, and a plot of the training curves).

With ``secure = true`` the driver runs the sealed protocol (``mmvm.federation.sealed``):
this process then handles pseudonyms, envelopes and masked arrays only. Two
test-only run-config keys: ``test-dump-messages`` (a path: every message content
sent and received is appended there, in Flower's wire encoding) and
``test-tamper-window`` (flip one byte of one envelope routed in that window).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from client.wire import append_dump, from_record, to_record
from mmvm.federation.coordinator import FederationError
from mmvm.federation.driver import run_federation
from mmvm.federation.results import evaluate_assembled, write_results
from mmvm.federation.sealed import secure_settings
from mmvm.federation.settings import load_settings

app = ServerApp()


class FlowerTransport:
    """The driver's transport over a Flower Grid; node ids are the site keys."""

    def __init__(self, grid: Grid, num_sites: int, timeout: float, *, dump: str = "",
                 tamper_window: int = -1) -> None:
        self.grid, self.num_sites, self.timeout = grid, num_sites, timeout
        self.names: dict[str, str] = {}
        self.sent = 0
        self.dump, self.tamper_window = dump, tamper_window

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.num_sites:
                return nodes[: self.num_sites] if len(nodes) == self.num_sites else nodes
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(nodes)} of {self.num_sites} sites "
                                      f"connected within {self.timeout:.0f} s")
            time.sleep(1.0)

    def _exchange(self, kind: str, requests: Mapping[str, dict], stage: str) -> dict:
        msgs = [Message(to_record(req), dst_node_id=int(key), message_type=kind,
                        group_id=stage) for key, req in requests.items()]
        if self.dump:
            for m in msgs:
                append_dump(self.dump, stage, "sent", str(m.metadata.dst_node_id),
                            m.content)
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout))
        if self.dump:
            for r in replies:
                if r.has_content():
                    append_dump(self.dump, stage, "received", str(r.metadata.src_node_id),
                                r.content)
        out: dict[str, dict] = {}
        for r in replies:
            key = str(r.metadata.src_node_id)
            who = self.names.get(key, f"node {key}")
            if r.has_error():
                raise FederationError(f"{stage}: site {who} failed: {r.error.reason}")
            out[key] = from_record(r.content)
        silent = [self.names.get(k, k) for k in requests if k not in out]
        if silent:
            raise FederationError(f"{stage}: no reply from sites {silent} within "
                                  f"{self.timeout:.0f} s; their state is kept on disk")
        return out

    def describe(self) -> list[dict]:
        nodes = self._wait_for_nodes()
        replies = self._exchange("query.describe", {str(n): {} for n in nodes}, "describe")
        self.names = {k: r["site"] for k, r in replies.items()}
        return [{"key": k, **r} for k, r in replies.items()]

    def align(self, requests):
        return self._exchange("train.align", requests, "align")

    def attach(self, requests):
        return self._exchange("train.attach", requests, "attach")

    def window(self, requests):
        w = next(iter(requests.values()))["window"]
        if w == self.tamper_window:  # test only: corrupt one routed envelope
            key = min((k for k, r in requests.items() if r.get("sealed")), key=int)
            sender = min(requests[key]["sealed"])
            blob = bytearray(requests[key]["sealed"][sender])
            blob[-1] ^= 0x01
            requests[key]["sealed"][sender] = bytes(blob)
            print(f"mmvm: TEST tamper: flipped a byte of {sender}'s envelope to "
                  f"{self.names.get(key, key)} in window {w}", flush=True)
        return self._exchange("train.window", requests, f"window {w}")

    def evaluate(self, requests):
        return self._exchange("evaluate", requests, "evaluate")


@app.main()
def main(grid: Grid, context: Context) -> None:
    s = load_settings(context.run_config)
    cfg = s.experiment
    out_dir = Path(s.out_dir) / f"run-{context.run_id}"
    sec = secure_settings(context.run_config)
    transport = FlowerTransport(grid, s.num_sites, s.reply_timeout,
                                dump=sec.dump_messages, tamper_window=sec.tamper_window)
    print(f"mmvm: {s.num_sites} sites, method {cfg.model.method}, exchange {s.exchange}, "
          f"{cfg.train.epochs} epochs, secure {sec.secure}; results will be in {out_dir}",
          flush=True)

    def log(row: dict) -> None:
        print(f"window {row['window'] + 1}: epoch {row['epoch']} rec_nll {row['rec_nll']:.1f} "
              f"reg {row['reg']:.2f} {row['bytes'] / 1e6:.2f} MB {row['seconds']:.1f} s",
              flush=True)

    result = run_federation(
        transport, [m.name for m in cfg.model.modalities], batch_size=cfg.train.batch_size,
        seed=cfg.train.seed, epochs=cfg.train.epochs, exchange=s.exchange,
        k=s.exchange_steps, local_epochs=s.local_epochs, warmup=s.warmup, float16=s.float16,
        delta_tol=s.delta_tol,
        latent_dim=cfg.model.latent_dim, collect_model=s.collect_model, on_window=log,
        secure=sec.secure)
    paths = write_results(out_dir, s, result)
    eval_data = _eval_data(context.run_config, s)
    if eval_data and result.model_state:
        paths.update(evaluate_assembled(cfg, result.model_state, eval_data, out_dir))
    print(json.dumps({k: v for k, v in result.evaluation.items()}, indent=1, default=str))
    print("mmvm: results written:", *(f"  {k}: {v}" for k, v in paths.items()), sep="\n",
          flush=True)


def _eval_data(rc, s) -> str | None:
    """Where the server may read evaluation data: ``eval-data`` = "" (nowhere), a folder
    with train/test.parquet, or "default": the simulation's own look-alike data."""
    value = str(rc.get("eval-data", ""))
    if value != "default":
        return value or None
    from mmvm.data.default import ensure_default_sites

    names = tuple(m.name for m in s.experiment.model.modalities)
    try:
        sites, files = ensure_default_sites(s.data_dir, s.layout, s.shards, s.missing,
                                            s.n_train, s.n_test, seed=s.experiment.train.seed,
                                            modalities=names)
    except ValueError as err:  # a deployment on its own data: nothing to evaluate here
        print(f"mmvm: no server-side evaluation ({err})", flush=True)
        return None
    return str(Path(files[sites[0].name]["train"]).parents[2])
