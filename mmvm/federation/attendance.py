"""Which sites answered which window: dropouts, rejoins and when the server pauses.

A site that does not answer a window within ``site-timeout`` (its machine rebooted,
its VPN dropped) does not stop the run: MMVM treats an absent site like a missing
modality. For the windows it misses its posteriors are absent from the mixture prior
of the samples it holds (the other sites' masks), and its shared weights leave
FedAvg (in secure mode through the dropout path of the masking). Every window is
sent to every site, so a site that is back (same node key, same state dir) answers
the next one: it restores its state from disk, receives the averaged weights it
missed, and its posteriors enter the prior again.

A site whose reply is refused, or that fails a window (``admission.py``), misses it
the same way; ``max-refused`` (default 2) windows in a row are tolerated, one more
excludes the site from the rest of the run (it is sent no more windows, and said once
with its last reason), as a site away for good is left out; the run stops only when
the sites left are fewer than ``min-sites`` (or a modality would lose what it needs:
:func:`mmvm.federation.admission.check_left`). A resumed run (``resume=``) sends it
windows again. (Until 2026-12-07 one site's failures
stopped the run for everyone: a review of a hostile site.)

``min-sites`` is the quorum: when fewer sites answered the last window, the server
waits (up to ``pause-timeout`` since the last window that had a quorum) until that
many are connected again, and fails with a clear error only if they never return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from mmvm.federation.coordinator import FederationError


@dataclass
class Attendance:
    names: dict[str, str]  # site key -> site name
    min_sites: int
    pause_timeout: float
    poll: float = 1.0
    missed: dict[str, list[int]] = field(default_factory=dict)  # site name -> windows
    absent: set[str] = field(default_factory=set)  # keys that missed the last window
    last_quorum: float = field(default_factory=time.monotonic)
    max_refused: int = 2  # windows in a row a site's replies may be refused
    strikes: dict[str, int] = field(default_factory=dict)  # site key -> refused in a row
    strangers: set[str] = field(default_factory=set)  # connected node ids of no site, said
    excluded: dict[str, str] = field(default_factory=dict)  # site key -> why, for good
    back: dict[str, list[int]] = field(default_factory=dict)  # name -> windows it missed

    @property
    def quorum(self) -> int:
        return min(self.min_sites, len(self.names))

    def record(self, index: int, answered: Iterable[str]) -> list[str]:
        """Note who answered window ``index``; returns the names of those who did not.
        ``back``: the sites that missed the windows just before it and answered it,
        with those windows (a walkthrough's console said a site was missing, never
        that it had returned)."""
        answered = set(answered)
        streaks = {self.names[k]: self._streak(self.names[k], index)
                   for k in sorted(self.absent & answered)}
        self.back = {name: ws for name, ws in streaks.items() if ws}
        gone = [k for k in self.names if k not in answered]
        for k in gone:
            self.missed.setdefault(self.names[k], []).append(index)
        self.absent = set(gone)
        if len(answered) >= self.quorum:
            self.last_quorum = time.monotonic()
        return sorted(self.names[k] for k in gone)

    def refuse(self, index: int, refused: Mapping[str, str], admitted: Iterable[str]
               ) -> dict[str, str]:
        """Note the sites whose window ``index`` was refused (by key, with why; they
        are then :meth:`record`-ed as not answering) and those whose reply was taken.
        A site refused more than ``max_refused`` windows in a row (windows it missed
        in between do not break the row) is excluded from the rest of the run:
        returned (name -> why); the run stops if fewer than ``min-sites`` are left."""
        for k in admitted:
            self.strikes[k] = 0
        for k in refused:
            self.strikes[k] = self.strikes.get(k, 0) + 1
        new = {}
        for k in sorted(k for k in refused if self.strikes[k] > self.max_refused):
            n = self.strikes[k]
            self.excluded[k] = new[self.names[k]] = (
                f"failed, or its reply was refused, {n} window{'s' if n > 1 else ''} in a "
                f"row (max-refused = {self.max_refused}); the last time: {refused[k]}")
        left = len(self.names) - len(self.excluded)
        if new and left < self.quorum:
            raise FederationError(
                f"window {index + 1}: " + "; ".join(f"site {n} {why}" for n, why in
                                                    new.items())
                + f". {left} site{'s' * (left != 1)} of {len(self.names)} left, fewer than "
                  f"min-sites = {self.quorum}")
        return new

    def recount(self, history: Iterable[Mapping]) -> None:
        """Strikes as the saved window rows leave them (a resumed run). A site excluded
        before is sent windows again (its operator may have fixed it before the run
        was resumed); its count goes on, so one more refusal excludes it again."""
        for row in history:
            refused, missed = row.get("refused") or {}, set(row.get("missed", []))
            for k, n in self.names.items():
                if n in refused:
                    self.strikes[k] = self.strikes.get(k, 0) + 1
                elif n not in missed:
                    self.strikes[k] = 0

    def _streak(self, name: str, index: int) -> list[int]:
        """The windows ``name`` missed in a row before window ``index``."""
        missed, run = set(self.missed.get(name, [])), []
        while index - len(run) - 1 in missed:
            run.append(index - len(run) - 1)
        return run[::-1]

    def absent_names(self) -> list[str]:
        return sorted(self.names[k] for k in self.absent)

    def wait_for_quorum(self, online: Callable[[], Iterable[str]],
                        log: Callable[[str], None] | None = None) -> None:
        """Before a window: if the last one had fewer than ``min-sites`` answers, wait
        until that many sites are connected; fail when no window has had a quorum
        for ``pause-timeout`` seconds. While a site is away, a node that is none of
        the run's sites is named once (:meth:`_stranger`)."""
        if self._away() and log:
            self._stranger(online, log)
        if len(self.names) - len(self.absent) >= self.quorum:
            return
        said = 0.0  # when the pause was said
        while True:
            up = set(online()) & set(self.names) - set(self.excluded)
            if time.monotonic() - self.last_quorum > self.pause_timeout:
                raise FederationError(self._why(up))
            if len(up) >= self.quorum:
                if said:
                    log(f"mmvm: going on: {len(up)} of {len(self.names)} sites connected "
                        f"again after {time.monotonic() - said:.0f} s")
                return
            if log and not said:
                log(f"mmvm: paused: {len(up)} of {len(self.names)} sites connected, "
                    f"waiting for min-sites = {self.quorum} (sites {self._away()} are "
                    f"away{self._out()})")
                said = time.monotonic()
            time.sleep(self.poll)

    def _stranger(self, online: Callable[[], Iterable[str]],
                  log: Callable[[str], None]) -> None:
        """A SuperNode restarted without node authentication registers under a new
        node id, which the run does not address: the site stays away, the run goes
        on without it (a walkthrough's ended 'completed' with a site missing six of
        eight windows, nothing said of its return)."""
        new = sorted(set(online()) - set(self.names) - self.strangers)
        if new:
            self.strangers |= set(new)
            log(f"mmvm: note: node{'s' * (len(new) > 1)} {', '.join(new)} connected, "
                f"none of this run's sites, while {', '.join(self._away())} "
                f"{'is' if len(self._away()) == 1 else 'are'} away: a SuperNode restarted "
                f"without node authentication comes back under a new node id, which a "
                f"running server does not address (deploy/README.md section 4)")

    def _why(self, up: set[str]) -> str:
        if len(up) >= self.quorum:  # connected, yet the windows go unanswered
            return (f"fewer than min-sites = {self.quorum} sites answered any window for "
                    f"pause-timeout = {self.pause_timeout:.0f} s although {len(up)} are "
                    f"connected: a window takes longer than site-timeout (raise it), or "
                    f"the sites fail (see their logs)")
        away = sorted(self.names[k] for k in self.names
                      if k not in up and k not in self.excluded)
        return (f"only {len(up)} of the {len(self.names)} sites are connected{self._out()} "
                f"and the run "
                f"needs min-sites = {self.quorum}; sites {away} did not return within "
                f"pause-timeout = {self.pause_timeout:.0f} s. The sites' state is on "
                f"their disks")

    def _away(self) -> list[str]:
        """The sites that missed the last window, but for those excluded."""
        return sorted(self.names[k] for k in self.absent if k not in self.excluded)

    def _out(self) -> str:
        out = sorted(self.names[k] for k in self.excluded)
        return f"; {', '.join(out)} excluded" if out else ""

    def summary(self) -> dict[str, list[int]]:
        return {name: list(ws) for name, ws in sorted(self.missed.items())}

