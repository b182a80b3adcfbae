"""A site's side of the protocol, over a plaintext or a sealed channel.

:class:`Endpoint` answers each typed request (:mod:`mmvm.federation.messages`) with
its reply; the Flower ClientApp and :class:`LocalTransport` (tests, benchmarks, one
process) only carry the messages. The channel (:mod:`mmvm.federation.channel`)
decides what the messages carry; the order of checks is the same for both: where
the site is in the run (:mod:`mmvm.federation.progress`), then every incoming part,
before the site's state changes. The site's policy (:mod:`mmvm.federation.policy`)
decides whether its final weights may leave.
"""

from __future__ import annotations

import dataclasses
import time

from mmvm.config import config_digest
from mmvm.federation.channel import Channel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import (
    AlignRequest,
    AttachReply,
    AttachRequest,
    ConfirmReply,
    ConfirmRequest,
    DescribeRequest,
    EvaluateReply,
    EvaluateRequest,
    HeldOutReply,
    HeldOutRequest,
    ResumeReply,
    ResumeRequest,
    UnmaskRequest,
    WindowReply,
    WindowRequest,
    unmask_view,
)
from mmvm.federation.plan import PlanArgs
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.progress import EVALUATION
from mmvm.federation.reply_cache import evaluation_digest, request_digest, window_inputs
from mmvm.federation.site import Site
from mmvm.federation.site_cross_eval import admitted
from mmvm.federation.site_eval import evaluate_site
from mmvm.federation.site_label_probes import allowed_label_columns
from mmvm.federation.site_limits import (
    check_request,
    check_rows,
    check_tables,
    passed,
    recheck,
)
from mmvm.federation.site_means import checked_mean, load_mean, unaveraged
from mmvm.federation.site_store import SiteStore
from mmvm.federation.window_metrics import (
    RESTORED,
    as_now_allowed,
    evaluation_withheld,
    withhold_losses,
)
from mmvm.footprint import step_bytes
from mmvm.secure.errors import SecurityError


class WorkFailedError(RuntimeError):
    """A secure site's window or evaluation failed once it worked on the server's
    mean; the cause is in the site's log only."""


class Endpoint:
    """One site answering the federation's requests."""

    def __init__(self, site: Site, channel: Channel, policy: SitePolicy | None = None,
                 store: SiteStore | None = None, resident: bool = False,
                 flower_run: str = "") -> None:
        """``store``: where the site's state is written after each reply
        (:meth:`SiteStore.after`; ``resident``: this process keeps the site for the
        run, so windows are written only when due); ``flower_run``: the Flower run
        asking (:meth:`Progress.answers`)."""
        self.site, self.channel, self.store = site, channel, store
        self.resident, self.flower_run = resident, flower_run
        self._commits: list = []  # what marks this message's envelopes as used
        self.notes: list[str] = []  # for the site's own log, not the server
        self.policy = policy or SitePolicy(test_bed=True)
        self._handlers = {DescribeRequest: self.describe, AlignRequest: self.align,
                          AttachRequest: self.attach, WindowRequest: self.window,
                          ConfirmRequest: self.confirm,
                          UnmaskRequest: self.unmask, ResumeRequest: self.resume,
                          HeldOutRequest: self.held_out, EvaluateRequest: self.evaluate}

    def handle(self, request):
        """The reply to ``request``, chosen by its type."""
        self.site.settle()  # work the site started after its last reply
        try:
            handler = self._handlers[type(request)]
        except KeyError:
            raise FederationError(f"site {self.site.name}: unknown request "
                                  f"{type(request).__name__}") from None
        self._commits.clear()
        self.notes.clear()
        progress = self.site.progress
        progress.answers(self.site.name, request.kind, self.flower_run)
        progress.same_mode(self.site.name, self.channel.mode, config_digest(self.site.cfg))
        if self.site.link is not None:  # a run attached before: under this node config?
            recheck(self.site, self.policy, self.channel.secure)
        reply = handler(request)
        self.site.progress.owner = self.flower_run or self.site.progress.owner
        # the state first, then the replay guard: a process killed in between
        # retries the message from the old state (or repeats the kept reply) instead
        # of finding its envelopes already marked as used
        if self.store is not None:
            self.store.after(self.site, request, self.resident, self.channel.secure)
        for commit in self._commits:
            commit()
        return reply

    def describe(self, req: DescribeRequest):
        self.site.progress.describe(self.site.name)
        reply = self.channel.describe(self.site)
        # whether it has the run's data.label column only where it may report on it
        reply.labelled = reply.labelled and self.policy.label_allowed(
            self.site.cfg.data.label)
        p = self.site.progress
        p.phase, p.mode, p.config = "described", self.channel.mode, config_digest(self.site.cfg)
        return reply

    def align(self, req: AlignRequest):
        progress = self.site.progress
        progress.align(self.site.name, req.step)
        reply, commit = self.channel.align(self.site, req)
        self._commits.append(commit)
        progress.align_steps += 1
        if reply.identifiers or reply.tags:  # this site's last alignment step
            progress.phase = "aligned"
        return reply

    def attach(self, req: AttachRequest) -> AttachReply:
        site = self.site
        site.progress.attach(site.name, self.channel.secure)
        for m, holders in req.shared.items():
            if not isinstance(holders, list) or not all(isinstance(h, str) for h in holders) \
                    or m not in site.names or site.name not in holders or len(holders) < 2 \
                    or len(set(holders)) != len(holders):  # a str "holds" its substrings
                raise FederationError(f"site {site.name}: told to share modality {m!r} "
                                      f"with {holders}")
        try:
            plan = PlanArgs.from_dict(req.plan)
        except ValueError as err:
            raise FederationError(f"site {site.name}: {err}") from None
        if req.n < 1:
            raise FederationError(f"site {site.name}: attach with n = {req.n} rows")
        # before the plan is built: its size is the server's choice
        check_request(site.name, self.policy, req.shared, req.n, plan, self.channel.secure,
                      lambda: step_bytes(site.cfg, site.names, plan.batch_size),
                      site.cfg.train)
        positions = self.channel.positions(site, req)
        site.attach(req.n, req.rows, positions, plan, float16=req.float16,
                    holders={m: sorted(h) for m, h in req.shared.items()},
                    delta_tol=req.delta_tol if req.delta_tol >= 0 else None)
        try:
            check_tables(site, self.policy)
        except PolicyError:
            site.link = None  # nothing of this attach stays
            raise
        if self.channel.secure:  # the server's plan must not single samples out
            try:
                check_rows(site, self.policy)
            except PolicyError as err:
                self._refuse_plan(err)
        passed(site, self.policy)
        site.progress.phase = "attached"
        return AttachReply(posteriors=self.channel.outgoing(site, 0),
                           keys=self.channel.attach_keys())

    def _refuse_plan(self, err: PolicyError) -> None:
        """Refuse the run's plan for good: the refusal is written with the site's
        state, so the run cannot attach it again, and the server learns no counts
        (the site's log keeps ``err``). Else a server could attach again and again
        with plans of its choice, each refusal telling how many of the rows it put
        in a window lack a modality: whether one sample lacks it, whatever min-rows."""
        site = self.site
        site.link, site.progress.phase = None, "refused"
        self._persist()
        raise PolicyError(
            f"site {site.name}: refuses this run's plan: a window would train fewer of "
            f"its rows than its min-rows = {self.policy.min_rows}, in all or with a "
            f"modality it shares (the site's log says which); this run cannot attach it "
            f"again. Start a new run with larger batches or exchange = \"round\"") from err

    def resume(self, req: ResumeRequest) -> ResumeReply:
        """Where this site is in the run a restarted server continues. A plaintext
        site more than one window past the server's checkpoint goes back to its
        snapshot of that window (:mod:`mmvm.federation.site_store`); one window past,
        it repeats its reply; a secure site never goes back (a window is masked once)."""
        self.site.progress.resume(self.site.name)
        p = self.site.progress
        if req.window >= -1 and p.window > req.window + 1:
            over = p.held_out or p.phase == "evaluated"  # else evaluated again and again
            if self.channel.secure or self.store is None or over:
                raise FederationError(
                    f"site {self.site.name}: trained up to window {p.window + 1}, the "
                    f"server resumes after window {req.window + 1}; "
                    + ("a secure site never trains a window twice" if self.channel.secure
                       else "its training is over (it answered heldout or the "
                       "evaluation)" if over
                       else "this site keeps no snapshots to go back to"))
            if said := self.store.rollback(self.site, req.window):
                self.notes.append(said)
        p = self.site.progress
        return ResumeReply(site=self.site.name, phase=p.phase, window=p.window,
                           unmasked=p.unmasked, view=self.channel.committed_view(),
                           proof=self.channel.prove(req.run, req.challenge)
                           if self.channel.secure else "")

    def window(self, req: WindowRequest) -> WindowReply:
        site, index = self.site, req.window
        inputs = window_inputs(config_digest(site.cfg), req)  # a resume brings its own
        asked = request_digest(inputs, req.weights)
        again = site.replies.get("window", index, asked)
        if again is not None:  # a restarted server asks again: the same reply (a window
            return as_now_allowed(again, self.policy.report_losses)  # trained, masked once)
        site.progress.window_(site.name, index)  # other inputs: "already done"
        site.check_window(index)
        restored = self._check_place(req)  # the last window its state has
        if req.resync:
            site.linked().resync()
        t0 = time.perf_counter()
        others, commit = self.channel.incoming(site, index, req.posteriors, req.absent)
        # before the window's inputs are recorded
        req = dataclasses.replace(req, weights=checked_mean(site, self.channel, req.weights,
                                                            req.keys))
        self.channel.begin_window(site, index, req.weights, inputs)
        load_mean(site, self.channel, req.weights, f"window {index}", self.notes.append)
        try:
            reply = self._train(req, others, t0)
        except Exception as err:
            if not self.channel.secure:
                raise
            # one outcome for whatever failed once the site trains on the server's
            # mean: which error it was (a loss gone non-finite, trained weights beyond
            # the masking range) would tell the server something of the site's rows
            raise WorkFailedError(f"site {site.name}: window {index} failed in "
                                  f"training (its log says why)") from err
        if not self.policy.report_losses:  # a crafted mean's widest channel, closed
            if self.store is not None:  # the site's own view of its training
                self.store.keep_losses(index, reply.metrics)
            reply.metrics = withhold_losses(reply.metrics)
        if restored is not None:  # the server records it (``restored_after``)
            reply.metrics[RESTORED] = float(restored)
        self._commits.append(commit)
        site.progress.window = index
        site.replies.keep("window", index, reply, asked)
        return reply

    def _check_place(self, req: WindowRequest) -> int | None:
        """The last window in the site's state, if older than the server believes
        (a process restarted from a checkpoint): exact exchange sends posteriors in
        full, so it trains on; event-triggered exchange sends news on what it no
        longer holds, so it sits this window out (and is sent everything again)."""
        last, index = self.site.progress.window, req.window
        if req.resync or index <= last + 1:
            return None
        after = f"window {last + 1}" if last >= 0 else "attach"  # counted as the console does
        why = f"window {index + 1}: its state is from after {after} (a restarted process)"
        if self.site.linked().delta_tol is not None:
            raise FederationError(f"site {self.site.name}: {why}; with event-triggered "
                                  f"exchange it sits this window out, then resyncs")
        self.notes.append(f"{why}: its own training since is lost")
        return last

    def _train(self, req: WindowRequest, others, t0: float) -> WindowReply:
        site, index = self.site, req.window
        t1 = time.perf_counter()
        metrics = site.train_window(index, others)
        t2 = time.perf_counter()
        weights, shares = self.channel.shared(site, index, req.weights)
        encoded = site.encoded_s
        posteriors = self.channel.outgoing(site, index + 1, req.excluded)
        encoded = site.encoded_s - encoded
        # seconds of this window at the site: training (with any wait for the decoder
        # half that ran while the server routed, whose own time is ahead_s, and the
        # encoder pass of the posteriors sent), and reading / writing messages
        metrics.update(train_s=t2 - t1 + site.take_waited() + encoded,
                       codec_s=max(0.0, t1 - t0 + time.perf_counter() - t2 - encoded))
        return WindowReply(metrics=metrics, posteriors=posteriors, weights=weights,
                           shares=shares)

    def confirm(self, req: ConfirmRequest) -> ConfirmReply:
        """Secure mode, a view with dropped holders: commit to it (one view per
        window). Asked again after this window's unmask (a server restarted before
        its checkpoint repeats the step), the same view is sealed again, any other
        refused (:func:`mmvm.federation.sealed_weights.commit_view`)."""
        req = dataclasses.replace(req, groups=unmask_view(req.groups))
        p = self.site.progress
        if not (p.unmasked == req.window == p.window):
            p.unmask(self.site.name, req.window)  # checks only: no commit
        return self.channel.confirm(self.site, req)

    def unmask(self, req: UnmaskRequest):
        req = dataclasses.replace(req, groups=unmask_view(req.groups))
        again = self.site.replies.get("unmask", req.window, req.groups)
        if again is not None:  # asked again with the same view: the same answer
            return again
        self.site.progress.unmask(self.site.name, req.window)
        reply, commit = self.channel.unmask(self.site, req)
        self._commits.append(commit)
        self.site.progress.unmasked = req.window
        self.site.replies.keep("unmask", req.window, reply, req.groups)
        return reply

    def held_out(self, req: HeldOutRequest) -> HeldOutReply:
        """The test samples' ids and posteriors, for the cross-site evaluation, after
        the averaged weights are loaded: to the server (plaintext,
        :mod:`mmvm.federation.site_cross_eval`), or as keyed pseudonyms and envelopes
        to the peers (secure, :mod:`mmvm.federation.sealed_heldout`); none where the
        node config says ``share-test = false``."""
        site = self.site
        site.progress.held_out_again(site.name)  # a first answer: attached only
        req = dataclasses.replace(req, weights=checked_mean(site, self.channel, req.weights))
        try:
            return self.channel.held_out(
                site, req, self.policy.share_test,
                lambda: self.channel.begin_window(site, EVALUATION, req.weights,
                                                  self._evaluation_inputs()),
                lambda: load_mean(site, self.channel, req.weights, "the cross-site "
                                  "evaluation", self.notes.append))
        except (FederationError, SecurityError):
            raise
        except Exception as err:  # as a window's: which error would say something
            if not self.channel.secure:
                raise
            raise WorkFailedError(f"site {site.name}: its test posteriors failed (its "
                                  f"log says why)") from err

    def evaluate(self, req: EvaluateRequest) -> EvaluateReply:
        site, asked = self.site, evaluation_digest(req, self.policy)
        again = site.replies.get("evaluate", EVALUATION, asked)
        if again is not None:  # a server that died before it wrote the results
            return again
        site.progress.evaluate(site.name)
        req = dataclasses.replace(req, weights=checked_mean(site, self.channel, req.weights))
        chosen = self.policy.plain_floor  # the server's values, or colluding peers'
        cross, refused = admitted(site, self.policy.share_test, req.posteriors,
                                  request_digest({}, req.weights), self.notes,
                                  self._persist, expected=self.channel.secure
                                  and bool(site.progress.held_out),
                                  chosen_floor=chosen), False
        if cross is not None:
            cross, commit = self.channel.test_input(site, cross, self.notes.append)
            refused = cross is None and bool(req.posteriors)  # (none: it sealed none)
            self._commits.append(commit)
        self.channel.begin_window(site, EVALUATION, req.weights,  # as a last window
                                  self._evaluation_inputs())
        kept = load_mean(site, self.channel, req.weights, "the evaluation",
                         self.notes.append)
        collect = req.collect and self.policy.allow_collect
        # not the mean the server sent: handing it in would read as a wrong average
        out = {*kept, *unaveraged(site, self.channel, req.weights, collect, self.notes.append)}
        model = {m: site.weights(m) for m in site.names if m not in out} if collect else {}
        probes = self._probes_allowed()
        try:
            metrics = evaluate_site(site, probes=probes, cross=cross, draw=req.draw,
                                    log=self.notes.append, policy=self.policy)
        except Exception as err:
            if not self.channel.secure:
                raise
            raise WorkFailedError(f"site {site.name}: its evaluation failed (its log "
                                  f"says why)") from err
        if refused:  # the server learns that, not why (the site's log says)
            metrics["cross_refused"] = 1.0
        if chosen > 1 and req.posteriors:  # its own policy: said (summary, results)
            metrics["cross_withheld"] = 1.0
        if not probes:  # said whether or not the site has that column
            metrics["probes_withheld"] = 1.0
        if kept:  # the server knows which means it sent; now also which were not taken
            metrics["unconfirmed_means"] = float(len(kept))
        if not self.policy.report_losses:
            metrics = evaluation_withheld(metrics)
        site.progress.phase = "evaluated"
        reply = EvaluateReply(site=site.name, modalities=list(site.names), metrics=metrics,
                              model=model)
        site.replies.keep("evaluate", EVALUATION, reply, asked)
        return reply

    def _evaluation_inputs(self) -> dict:
        """What a secure site's evaluation works on besides the mean: recorded once,
        at heldout or at evaluate, whichever comes first (one mean for both)."""
        return {"config": config_digest(self.site.cfg)}

    def _persist(self) -> None:
        if self.store is not None:
            self.store.save(self.site, snapshot=False)

    def _probes_allowed(self) -> bool:
        """The site's node config lets the evaluation probe the run's label column
        (``eval-labels``; a run config may name any column of the site's files), or
        with ``eval.labels`` one of its label columns."""
        if self.site.cfg.eval.labels:
            return bool(allowed_label_columns(self.site, self.policy))
        return self.policy.label_allowed(self.site.cfg.data.label)
