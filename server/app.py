"""The server: a Flower ServerApp whose round loop is ``mmvm.federation.loop``.

This file runs the loop over Flower's grid (``server/transport.py`` carries its
typed messages as Flower Messages and waits for the sites) and writes the run's results (metrics.csv, results.json, the
assembled model as a checkpoint ``mmvm evaluate`` reads, a plot of the training
curves, and, where the server may read evaluation data, eval.json and pictures).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import ExitStack
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mmvm.atomic import WriteError
from mmvm.config import ConfigError
from mmvm.data.store import DataError
from mmvm.federation.coordinator import FederationError
from mmvm.federation.eval_data import eval_data_problem
from mmvm.federation.loop import FederationResult, RunStopped, run_federation
from mmvm.federation.messages import MessageError
from mmvm.federation.posteriors import PosteriorError
from mmvm.federation.progress import COMPLETE
from mmvm.federation.report import alignment_line, summary, window_line
from mmvm.federation.results import evaluate_assembled, write_results
from mmvm.federation.server_state import STATE_FILE, load_server_state
from mmvm.federation.settings import FederationSettings, load_settings
from mmvm.federation.site_dirs import joined_experiment
from mmvm.federation.stop_request import StopRequest
from mmvm.folder_lock import folder_lock
from mmvm.secure.errors import SecurityError
from server.transport import FlowerTransport, simulated

app = ServerApp()


class RunFailed(RuntimeError):
    """A run that stopped for a reason the console already stated in one line."""


class _NoTraceback(logging.Filter):
    """Flower logs a ServerApp's exception with its traceback; for RunFailed the one
    line mmvm printed says everything, so the traceback is dropped (narrowly: only
    for this exception type)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RunFailed):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("flwr").addFilter(_NoTraceback())
# WriteError: the server's own file (server_state.pt, results) could not be written
# (a full disk, a folder made read-only): one line naming it, and where to resume from
EXPECTED = (FederationError, ConfigError, SecurityError, MessageError, PosteriorError,
            DataError, WriteError)


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        run(grid, context)
    except EXPECTED as err:
        print(f"mmvm: run failed: {err}", flush=True)
        hint = None if COMPLETE in str(err) else resume_hint(context)
        if hint:
            print(hint, flush=True)
        raise RunFailed(str(err)) from None
    except Exception as err:  # a bug, or Flower's grid giving up: the traceback follows
        print(f"mmvm: run failed: unexpected {type(err).__name__}: {err}", flush=True)
        hint = resume_hint(context)
        if hint:
            print(hint, flush=True)
        raise


def exactness_note(s: FederationSettings) -> str | None:
    """``exchange = "step"`` is centralized training bit for bit only where the
    posteriors travel as float32 (a walkthrough found 1.5e-3 apart after 10 steps
    with the default float16, and said nothing told it)."""
    if s.exchange != "step" or not (s.float16 or s.quantize != "none"):
        return None
    sent = "int8" if s.quantize == "int8" else "float16"
    return (f"mmvm: note: exchange 'step' with posteriors sent as {sent}: close to "
            f"centralized training, not bit for bit (float16=false quantize='none' for "
            f"that)")


def state_path(s: FederationSettings, run_id: int) -> Path:
    """The server's state of the run: in the first run's folder, also while a resumed
    run continues it, because the sites keep their state under that run's id
    (``client/site_node.py`` ``_run_id``); so a resumed run that fails is resumed
    again with the same id."""
    return Path(s.out_dir) / f"run-{s.first_run(run_id)}" / STATE_FILE


def resume_hint(context: Context) -> str | None:
    """Where a failed run can continue from: the server's state after its last
    completed window (or after attach), if it got that far."""
    try:
        s = load_settings(context.run_config)
        path = state_path(s, context.run_id)
        if not path.is_file():
            return None
        done = load_server_state(path, s).window + 1
    except Exception:  # noqa: BLE001 (a hint only: the failure line said what went wrong)
        return None
    where = f"after window {done}" if done else "after the sites attached"
    return (f"mmvm: its state {where} is in {path}; once the cause is fixed, continue it "
            f"with the same run config and resume='{s.first_run(context.run_id)}'")


def start_line(s: FederationSettings, run_id: int, out_dir: Path) -> str:
    """The run's first line: what trains, and where its results go (a resume's are
    its own run's folder; its state stays in the first run's, which it names)."""
    cfg = s.experiment
    resumes = f"; it resumes run {s.resume}, whose state stays in " \
        f"{state_path(s, run_id).parent}" if s.resume else ""
    return (f"mmvm: {s.num_sites} sites, method {cfg.model.method}, exchange "
            f"{s.exchange}, {cfg.train.epochs} epoch{'s' * (cfg.train.epochs != 1)}, "
            f"secure {'on' if s.secure else 'off'}; results will be in {out_dir}{resumes}")


def run(grid: Grid, context: Context) -> None:
    s = load_settings(context.run_config)
    out_dir = Path(s.out_dir) / f"run-{context.run_id}"
    cfg = s.experiment
    if s.eval_data not in ("default", "") and s.collect_model:
        problem = eval_data_problem(cfg, s.eval_data)
        if problem:
            raise ConfigError(f"run config: {problem}")
    print(start_line(s, context.run_id, out_dir), flush=True)
    if note := exactness_note(s):
        print(note, flush=True)
    result = _federate(grid, context, s)
    if result is not None:  # None: stopped, and said so
        _finish(grid, context, s, result, out_dir)


def _federate(grid: Grid, context: Context, s: FederationSettings
              ) -> FederationResult | None:
    """The federation itself, windows printed as they end; None where it was stopped
    on request (``mmvm run``'s Ctrl-C), saying how to continue it."""
    first: list[tuple[float, int]] = []  # when the first window of this process began

    def log(row: dict) -> None:
        now = time.perf_counter()
        first[:] = first or [(now - row["seconds"], row["window"])]
        print(window_line(row, row["windows"], now - first[0][0],
                          row["window"] - first[0][1] + 1), flush=True)

    transport = FlowerTransport(grid, s.num_sites, s.reply_timeout, s.connect_timeout,
                                s.reply_poll or None)
    state = state_path(s, context.run_id)
    stop = StopRequest(state.parent, context.run_id)  # `mmvm run`'s Ctrl-C
    try:
        with ExitStack() as held:  # one ServerApp at a time writes a run's state (two
            try:  # resumes of one run raced, the second blaming a pruned state folder)
                # a resume may come while the ServerApp it continues is still ending
                # (its SuperLink was restarted): that one gets connect-timeout to go
                held.enter_context(folder_lock(
                    state.parent, f"a ServerApp of run {s.first_run(context.run_id)}",
                    wait=s.connect_timeout if s.resume else 0.0))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            stop.clear_stale()
            result = run_federation(transport, s, on_window=log, on_align=lambda al: print(
                alignment_line(al, s.num_sites), flush=True),
                log=lambda line: print(line, flush=True), checkpoint=state,
                resume_from=state if s.resume else None, should_stop=stop.asked,
                flower_run=str(context.run_id))
    except RunStopped as err:
        print(f"mmvm: run {err}; " + ("nothing to resume" if err.window is None else
              f"its state is in {state}: continue it with the same run config and "
              f"resume='{s.first_run(context.run_id)}'"), flush=True)
        return None
    finally:
        stop.answer()  # the answer `mmvm run` waits for, whichever way the run ends
    return result


def _finish(grid: Grid, context: Context, s: FederationSettings,
            result: FederationResult, out_dir: Path) -> None:
    """The trained run's results written, the assembled model evaluated where the
    server may, and the summary printed."""
    cfg = s.experiment
    joined = _site_dirs_experiment(s, result)
    if joined is not None:  # the simulated sites' folders, joined: evaluated and recorded
        s, cfg = dataclasses.replace(s, experiment=joined), joined
    eval_data = _eval_data(s, result, joined is not None) if result.model_state else None
    paths = write_results(out_dir, s, result, eval_data, simulated=simulated(grid))
    assembled, failed = None, ""
    if eval_data and result.model_state:
        try:
            written, assembled = evaluate_assembled(
                cfg, result.model_state, eval_data, out_dir,
                log=lambda line: print(line, flush=True),
                epoch=result.history[-1]["epoch"] if result.history else 0)
            paths.update(written)
        except Exception as err:  # noqa: BLE001 (out of memory too): the trained run stays
            print(f"mmvm: server-side evaluation failed ({type(err).__name__}: {err}); the "
                  f"trained model is in {paths.get('checkpoint', out_dir)}: evaluate it "
                  f"with `mmvm evaluate --run {out_dir} --config "
                  f"{context.run_config['config']}` and a --set for what this names "
                  f"(--set data.root=<a data folder> for data this machine lacks)",
                  flush=True)
            failed = type(err).__name__
    print(summary(result, str(out_dir), paths, assembled), flush=True)
    if failed:  # said again after the summary, where a reader of a long run looks
        print(f"mmvm: warning: the server's evaluation of the assembled model failed "
              f"({failed}, above): the training completed, its evaluation did not",
              flush=True)
    if s.secure and simulated(grid) and result.model_state:
        print("mmvm: note: a simulation has no node configs: its sites gave the server "
              "their weights (allow-collect, a test bed's default); deployed sites with "
              "keys keep them unless their node config says allow-collect = true",
              flush=True)


def _eval_data(s: FederationSettings, result: FederationResult, joined: bool = False
               ) -> str | None:
    """Where the server may read evaluation data: ``eval-data`` = "" (nowhere), a folder
    with train/test.parquet, or "default": the simulation's own look-alike data, used
    only when the sites are the simulation's (a deployment's sites bring their own)."""
    if s.eval_data != "default":
        return s.eval_data or None
    if s.site_dirs:  # ``joined``: s.experiment reads the simulated sites' folders
        problem = eval_data_problem(s.experiment, s.experiment.data.root) if joined \
            else "the sites that ran are not the folders of site-dirs"
        if problem:
            print(f"mmvm: no server-side evaluation ({problem})", flush=True)
            return None
        return s.experiment.data.root
    from mmvm.data.default import ensure_default_sites
    from mmvm.data.sites import site_layout

    try:
        expected = {x.name for x in site_layout(s.layout, tuple(s.modalities), s.shards)}
    except ValueError:
        expected = set()
    if {info["site"] for info in result.sites.values()} != expected:
        print("mmvm: no server-side evaluation (eval-data = 'default' is the simulation's "
              "look-alike data; these sites bring their own: set eval-data to a folder "
              "or '')", flush=True)
        return None

    try:
        sites, files = ensure_default_sites(s.data_dir, s.layout, s.shards, s.missing,
                                            s.n_train, s.n_test, seed=s.experiment.train.seed,
                                            modalities=tuple(s.modalities),
                                            variant=s.data_variant,
                                            hippocampus=s.hippocampus)
    except ValueError as err:  # a deployment on its own data: nothing to evaluate here
        print(f"mmvm: no server-side evaluation ({err})", flush=True)
        return None
    return str(Path(files[sites[0].name]["train"]).parents[2])


def _site_dirs_experiment(s: FederationSettings, result: FederationResult):
    """The experiment reading a simulation's ``site-dirs`` joined by sample id, where
    the sites that ran are those folders' and the server evaluates on them
    (``eval-data = "default"``); else None (a deployment's sites are its own)."""
    if not s.site_dirs or s.eval_data != "default":
        return None
    if {info["site"] for info in result.sites.values()} != {Path(d).name for d in s.site_dirs}:
        return None
    return joined_experiment(s.experiment, s.site_dirs)
