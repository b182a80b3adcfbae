"""A restarted server finds the sites of the run it continues, and only them.

Sites are found by the name they answer with, so a SuperNode that came back with
another node id (simulation, or no node authentication) is still recognised; each is
at most one window ahead of the server's checkpoint (it answered a window the server
did not live to record, and repeats that reply).

A name is a claim, not a proof. A site that could answer as another one, away at the
restart, would take that site's place: its identity, its rows' inputs, and the blame
for what it then sends. So a node the saved run knew under one name may not answer
under another (node ids are stable with Flower's node authentication), and in secure
mode every answer must be signed with the key its site began the run with
(:mod:`mmvm.secure.identity`); plaintext sites that change node ids can be told apart
only by their word (deploy/README.md, section 7).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mmvm.federation.attendance import Attendance
from mmvm.federation.coordinator import Coordinator, FederationError
from mmvm.federation.messages import ResumeRequest
from mmvm.federation.routing import Routing
from mmvm.federation.server_state import ServerState, load_server_state, rebuild, rekey
from mmvm.federation.settings import FederationSettings
from mmvm.federation.transport import Metered
from mmvm.secure.identity import new_challenge


@dataclass
class Resumed:
    coord: Coordinator
    attendance: Attendance
    saved: ServerState  # rekeyed to the nodes the sites answer from now
    pending: set[str]  # the saved run's sites that did not answer: asked when back


def late_resumes(meter: Metered, s: FederationSettings, routing: Routing, coord: Coordinator,
                 pending: set[str], window: int, flower_run: str = "") -> dict[str, str]:
    """The sites of a resumed run that were away at its resume and are connected now
    are asked where they are, as the others were, before their first window (a
    plaintext one goes back to its snapshot: it is ``window``s ahead, and every window
    would be refused as done). Those that answer as themselves leave ``pending``;
    returned: the ones that failed it, with why (the window refuses them)."""
    back = sorted(pending & set(meter.online())) if pending else []
    if not back:
        return {}
    challenges = {k: new_challenge() for k in back} if s.secure else {}
    # need=0: done once all answered, or after site-timeout (a late site that stays
    # silent costs that, as it would in a window; not reply-timeout, a resume's bound)
    replies, failed = meter.gather({k: ResumeRequest(run=s.resume, window=window,
                                                     challenge=challenges.get(k, ""))
                                    for k in back}, s.site_timeout, need=0)
    bad = {k: f"its resume failed: {why}" for k, why in failed.items()}
    state = routing.state() if s.secure else {}
    for k, why in routing.authenticate(state, s.resume, challenges, replies,
                                       flower_run).items():
        bad[k] = f"its resume answer {why}"
    for k, r in replies.items():
        if r.site != coord.name(k):
            bad[k] = f"it was site {coord.name(k)} and answers its resume as site {r.site}"
        elif r.window > window + 1:
            bad[k] = f"it trained up to window {r.window + 1}, the run is after {window + 1}"
    pending -= set(replies) - set(bad)
    return bad


def resume_run(meter: Metered, s: FederationSettings, routing: Routing, path: str | Path,
               log: Callable[[str], None] | None, flower_run: str = "") -> Resumed:
    """The saved run's coordinator and routing, checked against where the sites are
    (in secure mode each signs its answer for ``flower_run``, the run that asks)."""
    saved = load_server_state(path, s)
    key_of = {i.name: i.key for i in saved.sites}
    here = wait_for_sites(meter, s, len(key_of), log=log)
    # a node the SuperLink still lists may be gone (its heartbeat not yet expired):
    # Flower answers its message with an error, and it is away like one not listed;
    # a slow one is waited for (up to reply-timeout) while fewer than need answered
    need = min(s.min_sites, len(key_of))
    challenges = {k: new_challenge() for k in here} if s.secure else {}
    replies = meter.exchange({k: ResumeRequest(run=s.resume, window=saved.window,
                                               challenge=challenges.get(k, ""))
                              for k in here}, wait=s.site_timeout, need=need)
    if len(replies) < need:
        raise FederationError(
            f"resume = {s.resume}: {len(replies)} of the {len(here)} connected "
            f"SuperNodes answered (within site-timeout = {s.site_timeout:g} s, or up to "
            f"reply-timeout = {s.reply_timeout:g} s while fewer had); it needs "
            f"min-sites = {need}")
    check_claims(s, saved, replies, routing.authenticate(saved.routing, s.resume,
                                                         challenges, replies, flower_run))
    saved = rekey(saved, {key_of[r.site]: k for k, r in replies.items()})
    coord = rebuild(saved, s)
    routing.load(saved.routing)
    routing.resumed(replies)
    for r in replies.values():
        if r.window > saved.window + 1:
            raise FederationError(f"resume = {s.resume}: site {r.site} has trained window "
                                  f"{r.window + 1}, the server's state ends at window "
                                  f"{saved.window + 1}: they are not of the same run")
    att = Attendance({k: coord.name(k) for k in coord.sites}, s.min_sites, s.pause_timeout,
                     missed={n: list(w) for n, w in saved.missed.items()},
                     absent=set(saved.absent), max_refused=s.max_refused)
    att.recount(saved.history)
    if log:
        at = ", ".join(f"{r.site} {r.window + 1}" for r in replies.values())
        away = sorted(coord.name(k) for k in coord.sites if k not in replies)
        log(f"mmvm: resuming run {s.resume} after window {saved.window + 1}/"
            f"{len(coord.plan)} (sites' last windows: {at}"
            + (f"; away: {', '.join(away)})" if away else ")"))
    return Resumed(coord, att, saved, set(coord.sites) - set(replies))


def check_claims(s: FederationSettings, saved: ServerState, replies: Mapping,
                 unproven: Mapping[str, str]) -> None:
    """Each answer names a site of the saved run, no name twice, a node the run knew
    under one name does not answer under another, and (secure) each proves the name
    (``unproven``: the nodes that did not, with why). What can be pinned on one node
    is checked first, and the error names it."""
    was = {i.key: i.name for i in saved.sites}
    for key, r in replies.items():
        if key in was and was[key] != r.site:
            raise FederationError(
                f"resume = {s.resume}: the SuperNode {key} was site {was[key]} in that run "
                f"and now answers as site {r.site}: refused (a site cannot take the place "
                f"of another)")
    for key, why in unproven.items():
        raise FederationError(f"resume = {s.resume}: the SuperNode {key} answers as site "
                              f"{replies[key].site}, and {why}: refused (a site cannot "
                              f"take the place of another)")
    names = [r.site for r in replies.values()]
    if any(n not in was.values() for n in names) or len(set(names)) != len(names):
        said = ", ".join(f"{k}: {r.site}" for k, r in sorted(replies.items()))
        raise FederationError(
            f"resume = {s.resume}: the connected SuperNodes ({said}) are not the sites of "
            f"that run ({sorted(was.values())}), each once; a site rejoins with its node "
            f"config and the same state folder")


def wait_for_sites(meter: Metered, s: FederationSettings, n: int, poll: float = 0.5,
                   log: Callable[[str], None] | None = None) -> list[str]:
    """The connected nodes once all ``n`` sites of the saved run are, or, after
    ``connect-timeout``, once at least ``min-sites`` are (the others are away: they
    miss windows until they are back); fails after a further ``pause-timeout``.

    More than ``n`` nodes are refused, after ``meter.stale_wait`` seconds: a SuperNode
    restarted without node authentication comes back under a new node id while the
    SuperLink lists its old one until its heartbeats lapse (up to a minute); connect-
    timeout counts from when they are gone. Extra nodes are never asked: a plaintext
    node's answer is only its word, and one answering as a slow site would take its
    place."""
    need = min(s.min_sites, n)
    stale_wait, said = meter.stale_wait, False
    start = since = time.monotonic()
    while True:
        up = sorted(meter.online())
        now = time.monotonic()
        if len(up) > n:
            if log and stale_wait and not said:  # once, as the wait begins
                said = True
                log(f"mmvm: resume: {len(up)} SuperNodes are listed for the run's {n} "
                    f"sites: waiting up to {stale_wait:.0f} s for the ids of SuperNodes "
                    f"that are gone to lapse (their heartbeats)")
            if now - start >= stale_wait:
                raise FederationError(
                    f"resume = {s.resume}: {len(up)} SuperNodes are connected, the run "
                    f"had {n} sites" + (f" (still after {now - start:.0f} s: a SuperNode "
                                        f"that is gone is listed only until its "
                                        f"heartbeats lapse); stop the extra SuperNodes"
                                        if stale_wait else ""))
            since = now
            time.sleep(poll)
            continue
        late = now - since - s.connect_timeout
        if len(up) == n or (late > 0 and len(up) >= need):
            return up
        if late > s.pause_timeout:
            raise FederationError(
                f"resume = {s.resume}: {len(up)} of the run's {n} sites connected within "
                f"connect-timeout + pause-timeout = "
                f"{s.connect_timeout + s.pause_timeout:.0f} s; it needs min-sites = {need}")
        time.sleep(poll)
