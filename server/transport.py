"""The loop's transport over a Flower Grid: one message per site, replies collected
with a short poll, and Flower's errors sorted into away, failed and fatal."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import Message
from flwr.common.constant import (
    HEARTBEAT_DEFAULT_INTERVAL,
    HEARTBEAT_PATIENCE,
    ErrorCode,
)
from flwr.serverapp import Grid

from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import MessageError, SiteFailure
from mmvm.federation.site_errors import refused_by_protection, site_reason, untagged
from wire.records import flower_type, reply_from_record, to_record


class FlowerTransport:
    """The loop's transport over a Flower Grid; node ids (as text) are the site keys."""

    def __init__(self, grid: Grid, num_sites: int, timeout: float, connect_timeout: float,
                 poll: float | None = None, stale_wait: float | None = None) -> None:
        """``poll``: seconds between reply polls at first (``_collect``); ``None``:
        the grid's default. ``stale_wait``: how long more SuperNodes than sites are
        waited on at the start (:meth:`nodes`); ``None``: none in a simulation, in a
        deployment as long as Flower lists a SuperNode that is gone."""
        self.grid, self.num_sites, self.timeout = grid, num_sites, timeout
        self.connect_timeout, self.poll = connect_timeout, poll
        self.stale_wait = stale_wait if stale_wait is not None else \
            0.0 if simulated(grid) else STALE_NODE_S
        self.names: dict[str, str] = {}

    def nodes(self) -> list[str]:
        """The sites' node ids once exactly ``num-sites`` are connected.

        Too many fail at once in a simulation; a deployment's are waited on for up to
        ``stale_wait`` s first: a SuperNode restarted without node authentication
        registers under a new node id, and the SuperLink lists its old one until its
        heartbeats lapse (connect-timeout counts from when they are gone)."""
        start = since = time.monotonic()
        n, said = self.num_sites, False
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) == n:
                return [str(x) for x in nodes]
            now = time.monotonic()
            waited = now - start
            if len(nodes) > n and waited < self.stale_wait and not said:
                print(f"mmvm: {len(nodes)} SuperNodes are listed for num-sites = {n}: "
                      f"waiting up to {self.stale_wait:.0f} s for the ids of SuperNodes "
                      f"that are gone to lapse (their heartbeats)", flush=True)
                said = True
            since = now if len(nodes) > n else since
            if len(nodes) > n and waited >= self.stale_wait:
                raise FederationError(
                    f"{len(nodes)} SuperNodes are connected but this run expects "
                    f"num-sites = {n}: in a simulation pass --federation-config "
                    f"'num-supernodes={n}' (or set num-sites), in a deployment stop the "
                    f"extra SuperNodes" + (
                        f" (still {len(nodes)} after {waited:.0f} s: a SuperNode that is "
                        f"gone is listed only until its heartbeats lapse)"
                        if self.stale_wait else ""))
            if len(nodes) < n and now - since > self.connect_timeout:
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
        windowed = kind in ("window", "confirm", "unmask")
        index = requests[next(iter(requests))].window if windowed else -1
        stage = f"window {index}" if windowed else kind  # Flower's group id
        # what the console says: windows numbered from 1, as the progress lines do
        shown = f"window {index + 1}" if windowed else kind
        # a window waits site-timeout, whatever reply-timeout (set-up's and the
        # evaluation's, which bounds the rest) is: a slow hospital's longer
        # site-timeout was cut at reply-timeout, unsaid
        soft = self.timeout if wait is None else wait if windowed else min(wait, self.timeout)
        hard = self.timeout if wait is None or kind == "resume" else \
            2 * wait if windowed else min(2 * wait, self.timeout)
        msgs = [Message(to_record(req), dst_node_id=int(key), message_type=flower_type(req),
                        group_id=stage, ttl=hard)
                for key, req in requests.items()]
        ids = list(self.grid.push_messages(msgs))
        asked = dict(zip(ids, requests, strict=True))
        out: dict = {}
        fatal: dict[str, list[str]] = {}  # reason -> sites: all of them named at once
        def note(pending: set, elapsed: float) -> None:
            late = sorted(self.names.get(asked[m], f"node {asked[m]}") for m in pending)
            # past soft, a window (or resume) waits on while a quorum is missing
            print(f"mmvm: {shown}: waiting for site{'s' * (len(late) > 1)} "
                  f"{', '.join(late)} ({elapsed:.0f} s; it waits up to "
                  f"{soft if elapsed < soft else hard:.0f} s)", flush=True)

        for r in _collect(self.grid, ids, hard, soft, need, poll=self.poll, note=note):
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
NOTE_EVERY = 30.0  # s between the lines that name the sites a long wait is for
# how long a SuperLink lists a SuperNode that is gone: until its heartbeats lapse
# (Flower 1.41: the SuperNode's interval, 30 s by default, times the patience, 2), +5 s
STALE_NODE_S = HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL + 5.0


def simulated(grid: Grid) -> bool:
    """A simulation's grid (Flower 1.41: the in-memory grid of a `--simulation`
    SuperLink); a deployment's talks to the SuperLink over gRPC."""
    return type(grid).__name__ == "InMemoryGrid"


def _collect(grid: Grid, ids: list[str], timeout: float, soft: float, need: int,
             poll: float | None = None, fast: float = 2.0, max_poll: float = 0.1,
             note: Callable[[set, float], None] | None = None) -> list[Message]:
    """Replies to ``ids`` until all came, or ``soft`` seconds passed and ``need``
    answers (error replies do not count: a failed site is no answer) are in, or
    ``timeout`` passed. Polls every ``poll`` s for the first ``fast`` seconds (an
    exact window is a step: ~0.1 s), then backs off to ``max_poll`` (Flower's own
    send_and_receive sleeps 3 s between polls; at 0.5 s this cap added 0.25 s on
    average to every window longer than ``fast``). ``poll=None``: 5 ms in a
    simulation (the in-memory grid reads the SuperLink's state), 20 ms otherwise,
    where every poll is an HTTP request the SuperLink serves (at 5 ms, 0.3 s of a 1 s
    window on two shared cores went to polling). ``note(pending, elapsed)`` every
    ``NOTE_EVERY`` s while replies are missing: a long wait is said, not silent."""
    if poll is None:
        poll = POLL_LOCAL if simulated(grid) else POLL_REMOTE
    max_poll = max(max_poll, poll)  # a slower poll asked for is not sped up
    pending, got, answers = set(ids), [], 0
    start, said = time.monotonic(), NOTE_EVERY
    while pending:
        replies = list(grid.pull_messages(list(pending)))
        got += replies
        answers += sum(1 for r in replies if not r.has_error())  # a failure is no answer
        pending -= {r.metadata.reply_to_message_id for r in replies}
        elapsed = time.monotonic() - start
        if not pending or elapsed >= timeout or (elapsed >= soft and answers >= need):
            break
        if note is not None and elapsed >= said:
            note(pending, elapsed)
            said = elapsed + NOTE_EVERY  # (after a long pull: one line, not a burst)
        time.sleep(poll)
        if elapsed > fast:
            poll = min(max_poll, poll * 1.5)
    return got
