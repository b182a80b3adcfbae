"""The server: a Flower ServerApp whose round loop is ``mmvm.federation.loop``.

This file only carries the loop's typed messages as Flower Messages (``wire``),
waits for the sites, and writes the run's results (metrics.csv, results.json, the
assembled model as a checkpoint ``mmvm evaluate`` reads, a plot of the training
curves, and, where the server may read evaluation data, eval.json and pictures).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from mmvm.atomic import WriteError
from mmvm.config import ConfigError
from mmvm.data.store import DataError
from mmvm.federation.coordinator import FederationError
from mmvm.federation.eval_data import eval_data_problem
from mmvm.federation.loop import FederationResult, RunStopped, run_federation
from mmvm.federation.messages import MessageError, SiteFailure
from mmvm.federation.posteriors import PosteriorError
from mmvm.federation.progress import COMPLETE
from mmvm.federation.report import alignment_line, summary, window_line
from mmvm.federation.results import evaluate_assembled, write_results
from mmvm.federation.server_state import STATE_FILE, load_server_state
from mmvm.federation.settings import FederationSettings, load_settings
from mmvm.federation.site_dirs import joined_experiment
from mmvm.federation.site_errors import refused_by_protection, site_reason, untagged
from mmvm.federation.stop_request import StopRequest
from mmvm.folder_lock import folder_lock
from mmvm.secure.errors import SecurityError
from wire.records import flower_type, reply_from_record, to_record

app = ServerApp()


class FlowerTransport:
    """The loop's transport over a Flower Grid; node ids (as text) are the site keys."""

    def __init__(self, grid: Grid, num_sites: int, timeout: float, connect_timeout: float
                 ) -> None:
        self.grid, self.num_sites, self.timeout = grid, num_sites, timeout
        self.connect_timeout = connect_timeout
        self.names: dict[str, str] = {}

    def nodes(self) -> list[str]:
        """The sites' node ids once exactly ``num-sites`` are connected."""
        deadline = time.monotonic() + self.connect_timeout
        n = self.num_sites
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) > n:
                raise FederationError(
                    f"{len(nodes)} SuperNodes are connected but this run expects "
                    f"num-sites = {n}: in a simulation pass --federation-config "
                    f"'num-supernodes={n}' (or set num-sites), in a deployment stop the "
                    f"extra SuperNodes")
            if len(nodes) == n:
                return [str(x) for x in nodes]
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} of the {n} sites this run expects (num-sites = "
                    f"{n}) connected within connect-timeout = {self.connect_timeout:.0f} "
                    f"s: in a simulation pass --federation-config 'num-supernodes={n}' "
                    f"(or set num-sites), in a deployment start the missing SuperNodes")
            time.sleep(0.5)

    def online(self) -> list[str]:
        """Node ids (as text) the SuperLink counts as connected now."""
        return [str(x) for x in self.grid.get_node_ids()]

    def exchange(self, requests: Mapping, wait: float | None = None, need: int = 1
                 ) -> dict:
        """Send one message per site and collect the replies.

        ``wait=None``: every site must answer within ``reply-timeout``. ``wait=s``:
        the replies that came within ``s`` seconds, or later, up to ``2 s``, while
        fewer than ``need`` came (a slow window is not a dropout); a site that is
        away (no reply, or Flower reports its node, message or ClientApp process
        gone) is left out; a site that failed, or whose reply does not decode, is a
        :class:`SiteFailure`, unless its protection refused the request (that fails
        the run). Its message expires at the SuperLink after the longest wait
        (twice ``site-timeout``, while a quorum is missing): a site that crashed and
        is back before then may still train a window the server went on from (its
        reply is not used; Flower 1.41 cannot withdraw a message). A resume
        (set-up) waits up to ``reply-timeout`` while fewer than ``need`` answered: a
        site may first finish the window it was in when the server went."""
        kind = next(iter(requests.values())).kind
        stage = f"window {requests[next(iter(requests))].window}" \
            if kind in ("window", "confirm", "unmask") else kind
        soft = self.timeout if wait is None else min(wait, self.timeout)
        hard = self.timeout if wait is None or kind == "resume" \
            else min(2 * wait, self.timeout)
        msgs = [Message(to_record(req), dst_node_id=int(key), message_type=flower_type(req),
                        group_id=stage, ttl=hard)
                for key, req in requests.items()]
        ids = list(self.grid.push_messages(msgs))
        asked = dict(zip(ids, requests, strict=True))
        out: dict = {}
        fatal: dict[str, list[str]] = {}  # reason -> sites: all of them named at once
        for r in _collect(self.grid, ids, hard, soft, need):
            # a reply names the message it answers; an error Flower makes for a site that
            # went away comes from the SuperLink's own node, so its sender is not the site
            key = asked.get(r.metadata.reply_to_message_id, str(r.metadata.src_node_id))
            who = self.names.get(key, f"node {key}")
            if r.has_error():
                if wait is not None and r.error.code in AWAY:
                    continue
                tag, reason = untagged(site_reason(r.error.reason))
                if tag is not None and key not in self.names:  # a node id alone
                    who = f"{who} (says it is {tag})"
                if wait is None or refused_by_protection(reason):
                    fatal.setdefault(reason, []).append(who)
                    continue
                out[key] = SiteFailure(who, reason)
                continue
            try:
                out[key] = reply_from_record(kind, r.content)
            except MessageError as err:
                if wait is None:
                    raise FederationError(f"{stage}: site {who}: {err}") from None
                out[key] = SiteFailure(who, f"its reply does not decode: {err}")
                continue
            if kind in ("describe", "resume"):
                self.names[key] = out[key].site
        if fatal:
            raise FederationError(f"{stage}: " + "; ".join(
                f"site{'s' * (len(who) > 1)} {', '.join(who)} failed: {reason}"
                for reason, who in fatal.items()))
        silent = [self.names.get(k, k) for k in requests if k not in out]
        if silent and wait is None:
            raise FederationError(f"{stage}: no reply from sites {silent} within "
                                  f"{self.timeout:.0f} s; their state is kept on disk")
        return out


# Flower's errors for a site that is away: its message or reply expired, its node
# stopped sending heartbeats, its ClientApp process died
AWAY = (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
        ErrorCode.NODE_UNAVAILABLE, ErrorCode.CLIENT_APP_CRASHED)


POLL_LOCAL, POLL_REMOTE = 0.005, 0.02  # s between reply polls (see _collect)


def simulated(grid: Grid) -> bool:
    """A simulation's grid (Flower 1.41: the in-memory grid of a `--simulation`
    SuperLink); a deployment's talks to the SuperLink over gRPC."""
    return type(grid).__name__ == "InMemoryGrid"


def _collect(grid: Grid, ids: list[str], timeout: float, soft: float, need: int,
             poll: float | None = None, fast: float = 2.0, max_poll: float = 0.1
             ) -> list[Message]:
    """Replies to ``ids`` until all came, or ``soft`` seconds passed and ``need``
    answers (error replies do not count: a failed site is no answer) are in, or
    ``timeout`` passed. Polls every ``poll`` s for the first ``fast`` seconds (an
    exact window is a step: ~0.1 s), then backs off to ``max_poll`` (Flower's own
    send_and_receive sleeps 3 s between polls; at 0.5 s this cap added 0.25 s on
    average to every window longer than ``fast``). ``poll=None``: 5 ms in a
    simulation (the in-memory grid reads the SuperLink's state), 20 ms otherwise,
    where every poll is an HTTP request the SuperLink serves (at 5 ms, 0.3 s of a 1 s
    window on two shared cores went to polling)."""
    if poll is None:
        poll = POLL_LOCAL if simulated(grid) else POLL_REMOTE
    pending, got, answers = set(ids), [], 0
    start = time.monotonic()
    while pending:
        replies = list(grid.pull_messages(list(pending)))
        got += replies
        answers += sum(1 for r in replies if not r.has_error())  # a failure is no answer
        pending -= {r.metadata.reply_to_message_id for r in replies}
        elapsed = time.monotonic() - start
        if not pending or elapsed >= timeout or (elapsed >= soft and answers >= need):
            break
        time.sleep(poll)
        if elapsed > fast:
            poll = min(max_poll, poll * 1.5)
    return got


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
    return Path(s.out_dir) / f"run-{s.resume or run_id}" / STATE_FILE


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
            f"with the same run config and resume='{s.resume or context.run_id}'")


def run(grid: Grid, context: Context) -> None:
    s = load_settings(context.run_config)
    out_dir = Path(s.out_dir) / f"run-{context.run_id}"
    cfg = s.experiment
    if s.eval_data not in ("default", "") and s.collect_model:
        problem = eval_data_problem(cfg, s.eval_data)
        if problem:
            raise ConfigError(f"run config: {problem}")
    print(f"mmvm: {s.num_sites} sites, method {cfg.model.method}, exchange {s.exchange}, "
          f"{cfg.train.epochs} epoch{'s' * (cfg.train.epochs != 1)}, secure {s.secure}; "
          f"results will be in {out_dir}",
          flush=True)
    if note := exactness_note(s):
        print(note, flush=True)
    first: list[tuple[float, int]] = []  # when the first window of this process began

    def log(row: dict) -> None:
        now = time.perf_counter()
        first[:] = first or [(now - row["seconds"], row["window"])]
        print(window_line(row, row["windows"], now - first[0][0],
                          row["window"] - first[0][1] + 1), flush=True)

    transport = FlowerTransport(grid, s.num_sites, s.reply_timeout, s.connect_timeout)
    state = state_path(s, context.run_id)
    stop = StopRequest(state.parent, context.run_id)  # `mmvm run`'s Ctrl-C
    try:
        with ExitStack() as held:  # one ServerApp at a time writes a run's state (two
            try:  # resumes of one run raced, the second blaming a pruned state folder)
                # a resume may come while the ServerApp it continues is still ending
                # (its SuperLink was restarted): that one gets connect-timeout to go
                held.enter_context(folder_lock(
                    state.parent, f"a ServerApp of run {s.resume or context.run_id}",
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
              f"resume='{s.resume or context.run_id}'"), flush=True)
        return
    finally:
        stop.answer()  # the answer `mmvm run` waits for, whichever way the run ends
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
