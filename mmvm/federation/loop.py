"""The federated round loop, written once: describe -> align -> attach -> windows ->
final evaluation.

``run_federation`` is what the Flower ServerApp runs (over a transport made of
Flower Messages, ``server/transport.py``) and what tests and benchmarks run in one process
(over :class:`mmvm.federation.local.LocalTransport`). It knows nothing of
encryption: a :class:`~mmvm.federation.routing.Routing` decides how sites are
aligned, how a window's requests are built from the last replies and how shared
weights are averaged. Bytes are counted the same way for every mode: the payload of
every message through the transport (:func:`mmvm.federation.messages.payload_bytes`).

Per window w: each site receives the other modalities' posteriors for its rows of w
and the averaged weights of the modalities it shares; it trains w and answers with
its own posteriors for the rows of w+1 (computed after its update: with one step per
window they are exactly the current posteriors, from the encoder pass that step w+1
then takes over, ``lookahead.py``) and its shared weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmvm.federation.admission import admit, check_left, short_reason
from mmvm.federation.attendance import Attendance
from mmvm.federation.coordinator import Coordinator, FederationError
from mmvm.federation.cross_eval import TestTables, combine, gather_tests, split_mismatch
from mmvm.federation.handover import assemble, checked_metrics
from mmvm.federation.messages import DescribeRequest, EvaluateRequest
from mmvm.federation.resume import late_resumes, resume_run
from mmvm.federation.routing import (
    EventTriggeredRouting,
    PlainRouting,
    Routing,
    check_described,
)
from mmvm.federation.sealed_routing import SealedRouting
from mmvm.federation.sealed_test_routing import gather_sealed_tests
from mmvm.federation.server_state import ServerState, save_server_state
from mmvm.federation.settings import FederationSettings
from mmvm.federation.transport import Metered, Transport
from mmvm.federation.window_metrics import restored_after, window_row
from mmvm.training import build_model


class RunStopped(Exception):
    """The run stopped on request (``should_stop``) after a window, its state written
    (the sites snapshot that window too): a resume continues from there; ``window``
    None: before the sites attached (nothing to resume)."""

    def __init__(self, window: int | None, windows: int = 0) -> None:
        super().__init__("stopped on request before its sites attached" if window is None
                         else f"stopped on request after window {window + 1}/{windows}")
        self.window = window


@dataclass
class FederationResult:
    history: list[dict] = field(default_factory=list)
    missed: dict[str, list[int]] = field(default_factory=dict)  # site -> windows missed
    not_evaluated: list[str] = field(default_factory=list)  # sites away or failed at the end
    evaluation_errors: dict[str, str] = field(default_factory=dict)  # site -> why it failed
    evaluation: dict[str, dict] = field(default_factory=dict)
    bytes_total: int = 0
    seconds: float = 0.0  # training time of the whole run, over its resumes
    resumed_after: int = 0  # windows the run had trained before this resume
    sites: dict[str, dict] = field(default_factory=dict)
    model_state: dict[str, np.ndarray] | None = None
    kept_weights: list[str] = field(default_factory=list)
    model_refused: str | None = None  # why the handed-in weights make no model
    alignment: dict = field(default_factory=dict)
    cross_site: dict = field(default_factory=dict)  # imputation, coherence (cross_eval.py)
    cross_notes: dict[str, str] = field(default_factory=dict)  # site -> why not in it


def make_routing(s: FederationSettings) -> Routing:
    latent = s.experiment.model.latent_dim
    if s.secure:
        return SealedRouting(s.align, latent)
    if s.delta_tol is not None:
        return EventTriggeredRouting(latent, s.float16)
    return PlainRouting(latent, s.float16)


def run_federation(transport: Transport, s: FederationSettings,
                   on_window: Callable[[dict], None] | None = None,
                   on_align: Callable[[dict], None] | None = None,
                   log: Callable[[str], None] | None = None,
                   checkpoint: str | Path | None = None,
                   resume_from: str | Path | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   flower_run: str = "") -> FederationResult:
    """Align, train every window of the plan, evaluate; returns metrics and bytes.

    Sites that miss windows, fail them or send replies the server refuses are left
    out of them (:mod:`mmvm.federation.attendance`, :mod:`mmvm.federation.admission`).
    With ``checkpoint`` the server's state is written there after attach and at the
    checkpoint windows (``s.checkpoints``, which the sites snapshot); ``resume_from``
    continues the run whose state is there (:mod:`mmvm.federation.server_state`)
    instead of starting one. When ``should_stop()`` turns true, the run stops after
    the window it is in if that is a checkpoint window, else after the next, which
    everyone then checkpoints (:class:`RunStopped`). ``flower_run``: the Flower run
    this server runs as (a resumed run's own id), which secure sites sign into their
    answers to a resume (:mod:`mmvm.secure.identity`)."""
    asked = should_stop or (lambda: False)
    if asked() and not resume_from:  # asked while Ray started
        raise RunStopped(None)
    run, start = _begin(transport, s, log, checkpoint, resume_from, flower_run)
    if on_align:
        on_align(run.result.alignment)
    if not resume_from:
        run.save(-1)
    if asked():  # asked while the sites attached: resumable
        raise RunStopped(start - 1, len(run.coord.plan))
    windows = len(run.coord.plan)
    persist, timed_out = s.checkpoints(run.coord.plan), []
    for w in range(start, windows):
        run.att.wait_for_quorum(run.meter.online, log)
        stopping = asked()
        if stopping:
            persist = persist | {w}  # the sites snapshot this window: resumed from it
        row = run.window(w, w in persist)
        if log and not timed_out and _waited_out(row, s.site_timeout, log):
            timed_out.append(w)  # said once: a window as long as the wait is the wait's
        if w in persist:
            run.save(w)
        if on_window:
            on_window(row)
        # asked during this window: stop now if everyone checkpointed it, else after
        # the next (which everyone then checkpoints); a stop asked in the last window:
        # the run ends anyway
        if stopping or w < windows - 1 and w in persist and asked():
            raise RunStopped(w, windows)
    return run.finish(log)


@dataclass
class _Run:
    """What the windows of one run share, and what each changes: the sites'
    attendance, the averaged weights, the history and bytes so far."""

    s: FederationSettings
    meter: Metered
    routing: Routing
    coord: Coordinator
    att: Attendance
    result: FederationResult
    averaged: dict
    checkpoint: str | Path | None
    before_restart: float  # training seconds of the runs this one resumes
    t0: float = field(default_factory=time.perf_counter)
    pending: set = field(default_factory=set)  # away at the resume: asked when back
    flower_run: str = ""

    def save(self, window: int) -> None:
        """The server's state after ``window`` (-1: after attach), where asked."""
        if self.checkpoint:
            save_server_state(self.checkpoint, self.s, ServerState(
                window, list(self.coord.sites.values()), self.averaged,
                self.routing.state(), self.att.summary(), sorted(self.att.absent),
                self.result.history, self.meter.total, self.seconds(),
                self.result.alignment))

    def seconds(self) -> float:
        return self.before_restart + time.perf_counter() - self.t0

    def window(self, w: int, persist: bool) -> dict:
        """Window ``w``: requests out, replies in and admitted, weights averaged;
        its row of the history."""
        coord, att, routing, meter = self.coord, self.att, self.routing, self.meter
        tw, before = time.perf_counter(), meter.total
        self.pending -= set(att.excluded)  # (not asked anything again)
        late = late_resumes(meter, self.s, routing, coord, self.pending, w - 1,
                            self.flower_run)
        absent, left_out = att.absent_names(), sorted(coord.name(k) for k in att.excluded)
        requests = {k: dataclasses.replace(r, absent=absent, excluded=left_out,
                                           resync=k in att.absent, persist=persist)
                    for k, r in routing.requests(coord, w, self.averaged).items()
                    if k not in att.excluded and k not in self.pending}
        t_server = time.perf_counter() - tw
        replies, failed = meter.gather(requests)
        t_sent = time.perf_counter()
        replies, refused = admit(w, coord, routing, replies, failed, len(requests))
        refused |= {k: short_reason(why) for k, why in late.items()}
        gone = att.record(w, replies)
        for key in att.absent:
            routing.missed(key)
        means = routing.aggregate(meter, coord, w, replies)
        self.averaged = {**self.averaged, **means}
        refused |= {k: short_reason(f"failed the unmask step: {why}")
                    for k, why in routing.failed.items()}
        excluded = att.refuse(w, refused, [k for k in replies if k not in refused])
        if excluded:
            check_left(w, coord, att.excluded, excluded, self.s.secure)
        row = window_row(w, coord, replies, meter.total - before, time.perf_counter() - tw)
        # the objective as centralized training logs it: the rows' mean rec + beta R
        row["loss"] = row["rec_nll"] + self.s.experiment.train.beta * row["reg"]
        row["missed"] = gone
        row["unaveraged"] = sorted(m for m in coord.shared if m not in means)
        if routing.unaveraged:  # why, where the server knows
            row["unaveraged_why"] = {m: short_reason(why)
                                     for m, why in sorted(routing.unaveraged.items())}
        row["refused"] = {coord.name(k): why for k, why in sorted(refused.items())}
        row["back"] = {n: ws for n, ws in att.back.items() if n not in row["refused"]}
        if excluded:  # from the next window on
            row["excluded"] = excluded
        if left_out:
            row["left_out"] = left_out  # excluded before this window
        restored = {coord.name(k): restored_after(r, w) for k, r in replies.items()
                    if k not in refused}
        row["restored"] = {n: last for n, last in sorted(restored.items())
                           if last is not None}
        row["server_s"] = t_server + time.perf_counter() - t_sent
        self.result.history.append(row)
        return row

    def finish(self, log: Callable[[str], None] | None) -> FederationResult:
        """After the last window: the sites' final evaluation, once a quorum is back
        (a site lost in the last window: as before a window)."""
        s, result = self.s, self.result
        self.att.wait_for_quorum(self.meter.online, log)
        result.missed = self.att.summary()
        result.bytes_total = self.meter.total
        if log and s.cross_eval != "off":
            log("mmvm: evaluation: the sites score each other's modalities from their "
                "test posteriors (cross-eval; a site's judges train once, then are "
                "cached)")
        result.seconds = self.seconds()  # training, not evaluation
        # an excluded site is not asked either: its weights are of the window it was
        # excluded in, and one still broken would fail the test sets' PSI ring and the
        # model's handover for everyone (it is "not evaluated", said why)
        self.pending -= set(self.att.excluded)
        late = late_resumes(self.meter, s, self.routing, self.coord, self.pending,
                            len(self.coord.plan) - 1, self.flower_run)
        self.meter.skip = set(self.att.excluded) | self.pending | set(late)
        final_evaluation(self.meter, self.coord, self.averaged, s.collect_model, result,
                         s.reply_timeout, cross=s.cross_eval,
                         sealed=s.align if s.secure else "",
                         latent_dim=s.experiment.model.latent_dim,
                         max_rows=s.max_site_rows, method=s.experiment.model.method)
        for k, why in late.items():
            result.evaluation_errors[self.coord.name(k)] = why
        for k, why in self.att.excluded.items():
            result.evaluation_errors[self.coord.name(k)] = f"excluded from the run: it {why}"
            if s.cross_eval != "off":
                result.cross_notes[self.coord.name(k)] = "excluded from the run"
        return result


def _begin(transport: Transport, s: FederationSettings,
           log: Callable[[str], None] | None, checkpoint: str | Path | None,
           resume_from: str | Path | None, flower_run: str) -> tuple[_Run, int]:
    """The sites attached, or back where ``resume_from``'s state left them; the
    first window to train."""
    t0, routing = time.perf_counter(), make_routing(s)
    meter, pending = Metered(transport, s.site_timeout), set()
    if resume_from:
        back = resume_run(meter, s, routing, resume_from, log, flower_run)
        coord, att, saved = back.coord, back.attendance, back.saved
        start, averaged = saved.window + 1, saved.averaged
        result = FederationResult(sites=_site_summary(coord), alignment=saved.alignment,
                                  history=list(saved.history), seconds=saved.seconds,
                                  resumed_after=len(saved.history))
        meter.total, pending = saved.bytes_total, back.pending
    else:
        coord, result = _start(meter, s, routing, log or (lambda _: None))
        start, averaged = 0, {}
        att = Attendance({k: coord.name(k) for k in coord.sites}, s.min_sites,
                         s.pause_timeout, max_refused=s.max_refused)
    coord.expect_shapes(model_shapes(s.experiment, coord.shared))
    meter.need = att.quorum
    return _Run(s, meter, routing, coord, att, result, averaged, checkpoint,
                before_restart=result.seconds, t0=t0, pending=pending,
                flower_run=flower_run), start


def _waited_out(row: dict, site_timeout: float, log: Callable[[str], None]) -> bool:
    """Say so where a window went on without sites after waiting its whole
    ``site-timeout``: sites slower than that are not away, and their replies come
    too late to be used."""
    if not (row["missed"] and row["seconds"] >= 0.9 * site_timeout):
        return False
    log(f"mmvm: note: window {row['window'] + 1} waited its site-timeout = "
        f"{site_timeout:g} s and went on without {', '.join(row['missed'])}; sites "
        f"whose windows take longer than that train them all the same, and their "
        f"replies come too late to be used: raise site-timeout if they are slow, not "
        f"away")
    return True


def _start(meter: Metered, s: FederationSettings, routing: Routing,
           log: Callable[[str], None]) -> tuple[Coordinator, FederationResult]:
    """describe -> align -> attach, each said as it begins (a deployment's sites
    answer each after seconds to minutes: the console was silent for 2.5 minutes)."""
    nodes = meter.nodes()  # (once: it may wait, and two calls may differ)
    log(f"mmvm: set-up 1/3: asking the {len(nodes)} sites what they hold")
    described = meter.exchange({key: DescribeRequest() for key in nodes})
    check_described(described, s.max_site_rows, s.modalities)
    log(f"mmvm: set-up 2/3: aligning the samples of "
        f"{', '.join(sorted(d.site for d in described.values()))}"
        + {"psi": f" (private set intersection: {len(described)} ring steps)",
           "pseudonym": " (keyed pseudonyms)"}.get(s.align if s.secure else "", ""))
    coord = Coordinator(routing.align(meter, described), s.modalities, s.plan_args())
    idle = coord.idle_holder() if s.secure else None
    if idle is not None:
        m, site, w = idle
        raise FederationError(
            f"exchange plan: window {w} trains none of {site}'s rows of {m!r}, which "
            f"several sites hold; in a secure run every holder of a shared modality "
            f"refuses such a plan (its weights would go back unchanged, and the masked "
            f"mean could single out another holder's). Use exchange = \"round\" (or "
            f"\"steps\" with longer windows) or larger batches; nothing was attached")
    result = FederationResult(sites=_site_summary(coord), alignment=coord.alignment())
    log(f"mmvm: set-up 3/3: attaching the sites to the {coord.n} aligned rows and the "
        f"plan of {len(coord.plan)} window{'s' * (len(coord.plan) != 1)}")
    replies = meter.exchange({key: coord.attach_request(key, float16=s.float16,
                                                        delta_tol=s.delta_tol,
                                                        peers=routing.peers)
                              for key in coord.sites})
    for why in routing.receive(coord, replies).values():
        raise FederationError(f"attach: {why}")
    return coord, result


def _site_summary(coord: Coordinator) -> dict[str, dict]:
    return {k: {"site": i.name, "modalities": i.modalities, "n": len(i.held)}
            for k, i in coord.sites.items()}


def final_evaluation(transport: Metered, coord: Coordinator, averaged: Mapping,
                     collect_model: bool, result: FederationResult, wait: float,
                     cross: str = "off", latent_dim: int = 0, max_rows: int = 0,
                     method: str = "mmvm", sealed: str = "") -> None:
    """Last message: sites load the averaged shared weights and evaluate; with
    ``collect_model`` their weights are assembled into ``result.model_state``. A site
    that does not answer within ``wait``, or fails (its reason in
    ``result.evaluation_errors``), is listed in ``result.not_evaluated``: the trained
    run is still written, without that site's numbers (its weights stay with it, so
    there is no assembled model). ``cross`` ("draw" or "mean"): heldout messages
    before (``sealed``: a secure run's alignment, :mod:`sealed_test_routing`), and
    ``result.cross_site`` after (:mod:`cross_eval`)."""
    tables = TestTables()
    if cross != "off":
        tables = gather_sealed_tests(transport, coord, averaged, wait, max_rows, sealed) \
            if sealed else gather_tests(transport, coord, averaged, wait, latent_dim,
                                        max_rows)
    replies, failed = transport.gather(
        {key: EvaluateRequest(weights=coord.weights_for(key, averaged), collect=collect_model,
                              posteriors=tables.request_for(coord, key), draw=cross == "draw")
         for key in coord.sites}, wait)
    result.evaluation_errors = {coord.name(k): why for k, why in sorted(failed.items())}
    result.not_evaluated = sorted(coord.name(k) for k in coord.sites if k not in replies)
    result.evaluation = {}
    for k, r in replies.items():
        metrics, problems = checked_metrics(r.metrics)
        if problems:
            result.evaluation_errors[coord.name(k)] = "; ".join(problems) + " (left out)"
        result.evaluation[k] = {**metrics, "site": coord.name(k),  # what it holds, as
                                "modalities": list(coord.sites[k].modalities)}  # described
    if cross != "off":
        tables.notes.update({coord.name(k): "did not evaluate" for k in tables.rows
                             if k not in replies})
        result.cross_site = combine(
            result.evaluation, coord.modalities,
            {k: list(i.modalities) for k, i in coord.sites.items()}, tables,
            draw=cross == "draw", method=method)
        result.cross_notes = dict(tables.notes)
        mismatch = split_mismatch(coord, tables)
        if mismatch:
            result.cross_site.setdefault("warnings", []).append(mismatch)
    if not collect_model:  # every site keeps its weights
        result.kept_weights = sorted(coord.name(k) for k in replies)
        return
    result.kept_weights = sorted(coord.name(k) for k, r in replies.items() if not r.model)
    if result.kept_weights or result.not_evaluated:
        return  # (sites whose policy keeps their weights: allow-collect)
    sites = {k: (coord.name(k), tuple(s.modalities)) for k, s in coord.sites.items()}
    state, result.model_refused = assemble(
        sites, {k: r.model for k, r in replies.items()}, coord.shared, averaged)
    result.model_state = None if result.model_refused else state


def model_shapes(cfg, modalities) -> dict[str, dict[str, tuple]]:
    """The parameter shapes (by the names sites send) of each of ``modalities`` in
    the experiment's model: what FedAvg accepts of a site."""
    if not modalities:
        return {}
    sd = build_model(cfg).state_dict()  # what sites share: floating tensors only
    return {m: {n: tuple(v.shape) for n, v in sd.items() if v.is_floating_point()
                and n.startswith((f"encoders.{m}.", f"decoders.{m}."))} for m in modalities}
