"""The server: a Flower ServerApp whose round loop is ``mmvm.federation.loop``.

This file only carries the loop's typed messages as Flower Messages (``wire``),
waits for the sites, and writes the run's results (metrics.csv, results.json, the
assembled model as a checkpoint ``mmvm evaluate`` reads, a plot of the training
curves, and, where the server may read evaluation data, eval.json and pictures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from mmvm.federation.coordinator import FederationError
from mmvm.federation.loop import run_federation
from mmvm.federation.messages import MessageError
from mmvm.federation.results import evaluate_assembled, write_results
from mmvm.federation.settings import FederationSettings, load_settings
from wire.records import flower_type, reply_from_record, to_record

app = ServerApp()


class FlowerTransport:
    """The loop's transport over a Flower Grid; node ids (as text) are the site keys."""

    def __init__(self, grid: Grid, num_sites: int, timeout: float) -> None:
        self.grid, self.num_sites, self.timeout = grid, num_sites, timeout
        self.names: dict[str, str] = {}

    def nodes(self) -> list[str]:
        deadline = time.monotonic() + self.timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.num_sites:
                return [str(n) for n in nodes]
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(nodes)} of {self.num_sites} sites "
                                      f"connected within {self.timeout:.0f} s")
            time.sleep(1.0)

    def exchange(self, requests: Mapping) -> dict:
        kind = next(iter(requests.values())).kind
        stage = f"window {requests[next(iter(requests))].window}" if kind == "window" \
            else kind
        msgs = [Message(to_record(req), dst_node_id=int(key), message_type=flower_type(req),
                        group_id=stage) for key, req in requests.items()]
        out: dict = {}
        for r in self.grid.send_and_receive(msgs, timeout=self.timeout):
            key = str(r.metadata.src_node_id)
            who = self.names.get(key, f"node {key}")
            if r.has_error():
                raise FederationError(f"{stage}: site {who} failed: {r.error.reason}")
            try:
                out[key] = reply_from_record(kind, r.content)
            except MessageError as err:
                raise FederationError(f"{stage}: site {who}: {err}") from None
            if kind == "describe":
                self.names[key] = out[key].site
        silent = [self.names.get(k, k) for k in requests if k not in out]
        if silent:
            raise FederationError(f"{stage}: no reply from sites {silent} within "
                                  f"{self.timeout:.0f} s; their state is kept on disk")
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    s = load_settings(context.run_config)
    out_dir = Path(s.out_dir) / f"run-{context.run_id}"
    cfg = s.experiment
    print(f"mmvm: {s.num_sites} sites, method {cfg.model.method}, exchange {s.exchange}, "
          f"{cfg.train.epochs} epochs, secure {s.secure}; results will be in {out_dir}",
          flush=True)

    def log(row: dict) -> None:
        print(f"window {row['window'] + 1}: epoch {row['epoch']} rec_nll {row['rec_nll']:.1f} "
              f"reg {row['reg']:.2f} {row['bytes'] / 1e6:.2f} MB {row['seconds']:.1f} s",
              flush=True)

    transport = FlowerTransport(grid, s.num_sites, s.reply_timeout)
    result = run_federation(transport, s, on_window=log)
    if result.kept_weights:
        print(f"mmvm: sites {result.kept_weights} keep their final weights (their policy "
              f"says allow-collect = false): no assembled checkpoint", flush=True)
    paths = write_results(out_dir, s, result)
    eval_data = _eval_data(s)
    if eval_data and result.model_state:
        paths.update(evaluate_assembled(cfg, result.model_state, eval_data, out_dir))
    print(json.dumps(result.evaluation, indent=1, default=str))
    print("mmvm: results written:", *(f"  {k}: {v}" for k, v in paths.items()), sep="\n",
          flush=True)


def _eval_data(s: FederationSettings) -> str | None:
    """Where the server may read evaluation data: ``eval-data`` = "" (nowhere), a folder
    with train/test.parquet, or "default": the simulation's own look-alike data."""
    if s.eval_data != "default":
        return s.eval_data or None
    from mmvm.data.default import ensure_default_sites

    try:
        sites, files = ensure_default_sites(s.data_dir, s.layout, s.shards, s.missing,
                                            s.n_train, s.n_test, seed=s.experiment.train.seed,
                                            modalities=tuple(s.modalities),
                                            variant=s.data_variant)
    except ValueError as err:  # a deployment on its own data: nothing to evaluate here
        print(f"mmvm: no server-side evaluation ({err})", flush=True)
        return None
    return str(Path(files[sites[0].name]["train"]).parents[2])
