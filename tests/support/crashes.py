"""Crashes and outages a resume test needs: a server killed at a window or in the
final evaluation, a site gone at the resume, a site that writes its state as its
process does (tests/federation/test_resume*.py)."""

from __future__ import annotations

from mmvm.federation.channel import PlainChannel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.local import LocalTransport
from mmvm.federation.site import Site
from mmvm.federation.site_store import SiteStore


class Crash(RuntimeError):
    pass


class CrashAt(LocalTransport):
    """Raises when window ``k`` is sent; ``delivered``: after the sites trained it."""

    def __init__(self, endpoints, k: int, delivered: bool):
        super().__init__(endpoints)
        self.k, self.delivered = k, delivered

    def exchange(self, requests, wait=None, need=1):
        first = next(iter(requests.values()))
        if first.kind == "window" and first.window == self.k:
            self.sent = dict(requests)  # what the sites got, to be asked again
            if self.delivered:
                super().exchange(requests, wait, need)
            raise Crash(f"server killed at window {self.k}")
        return super().exchange(requests, wait, need)



class GoneAtResume(LocalTransport):
    """Lists every site as connected, but site ``gone`` is gone: Flower answers its
    resume message with an error saying so (``MESSAGE_UNAVAILABLE``: its node was
    still listed when the message was sent). ``FlowerTransport`` leaves such a site
    out of an exchange that may go on without it and fails one that may not
    (tests/server/test_transport.py); this transport does the same. The site is back
    once the resume exchange is over."""

    def __init__(self, endpoints, gone: str):
        super().__init__(endpoints)
        self.gone = gone

    def exchange(self, requests, wait=None, need=1):
        if next(iter(requests.values())).kind == "resume" and self.gone in requests:
            if wait is None:
                raise FederationError(f"resume: site {self.gone} failed: Message "
                                      f"Unavailable")
            requests = {k: r for k, r in requests.items() if k != self.gone}
            self.gone = None
        return super().exchange(requests, wait, need)


class StaleListed(LocalTransport):
    """Also lists ``stale`` node ids as connected, for the first ``lapse`` calls of
    :meth:`online`: what Flower's SuperLink shows for up to a minute after a SuperNode
    without node authentication restarted under a new node id (its old one is online
    until its heartbeats lapse). ``stale_wait``: how long the server may wait for
    that (``FlowerTransport``'s). A message to a stale id is recorded in ``asked``."""

    def __init__(self, endpoints, stale, lapse: int | None = None,
                 stale_wait: float = 60.0):
        super().__init__(endpoints)
        self.stale, self.lapse, self.stale_wait = list(stale), lapse, stale_wait
        self.asked: list[str] = []

    def online(self):
        listed = self.lapse is None or self.lapse > 0
        if self.lapse:
            self.lapse -= 1
        return [*super().online(), *(self.stale if listed else [])]

    def exchange(self, requests, wait=None, need=1):
        self.asked += [k for k in requests if k in self.stale]
        return super().exchange({k: r for k, r in requests.items()
                                 if k not in self.stale}, wait, need)


class CrashInEvaluation(LocalTransport):
    """The first site answers the final evaluation, then the server dies."""

    def exchange(self, requests, wait=None, need=1):
        if next(iter(requests.values())).kind == "evaluate":
            first = next(iter(requests))
            super().exchange({first: requests[first]}, wait, need)
            raise Crash("server killed in the final evaluation")
        return super().exchange(requests, wait, need)



class Stored(Endpoint):
    """A site as its process answers (``client/site_node.answer``): after each reply
    its :class:`SiteStore` writes what has to be written; ``resident`` (a site host
    that keeps the site in memory): only at attach and the server's checkpoints."""

    def __init__(self, site: Site, folder, resident: bool):
        super().__init__(site, PlainChannel(), store=SiteStore(folder / f"{site.name}.pt"),
                         resident=resident)


def every_third(delta_tol: float | None) -> dict:
    return {"exchange": "step", "float16": False, "checkpoint_every": 3,
            **({} if delta_tol is None else {"delta_tol": delta_tol})}

