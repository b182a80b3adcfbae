"""How the server reaches its sites (:class:`Transport`: Flower Messages in
``server/transport.py``, function calls in :mod:`mmvm.federation.local`), and the bytes it
carries (:class:`Metered`: the payload of every message, counted the same way for
every mode, :func:`mmvm.federation.messages.payload_bytes`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import SiteFailure, payload_bytes


class Transport(Protocol):
    """How the server reaches sites: their keys, and one request per site at a time."""

    def nodes(self) -> list[str]: ...

    def online(self) -> list[str]:
        """Keys of the sites connected now."""
        ...

    def exchange(self, requests: Mapping, wait: float | None = None, need: int = 1
                 ) -> dict:
        """Replies by site key. ``wait=None``: every site must answer (or the run
        fails); ``wait=seconds``: the replies that came in that time, or until ``need``
        came (sites that are away are left out; one that answers with an error is a
        :class:`SiteFailure`, unless its protection refused: that fails the run)."""
        ...


class Metered:
    """A transport that adds up the payload bytes of everything it carries."""

    def __init__(self, inner: Transport, window_wait: float | None = None) -> None:
        self.inner, self.total, self.window_wait = inner, 0, window_wait
        # how long more nodes than sites may be listed before that is an error (a
        # SuperNode that is gone stays listed a while: FlowerTransport's)
        self.stale_wait = getattr(inner, "stale_wait", 0.0)
        self.need = 1  # replies a window waits for beyond window_wait (the quorum)
        self.skip: set[str] = set()  # sites asked nothing more (excluded from the run)

    def nodes(self) -> list[str]:
        return self.inner.nodes()

    def online(self) -> list[str]:
        return self.inner.online()

    def gather(self, requests: Mapping, wait: float | None = None,
               need: int | None = None) -> tuple[dict, dict[str, str]]:
        """A window's exchange (or, with ``wait``, the final evaluation's): the replies
        that came within ``site-timeout`` (``wait``), and the sites that failed it
        (:class:`SiteFailure`) with the reason. ``need``: replies that end the wait
        early (default: the run's quorum)."""
        replies = self._exchange(requests, wait or self.window_wait,
                                 self.need if need is None else need)
        failed = {k: r.reason for k, r in replies.items() if isinstance(r, SiteFailure)}
        return {k: r for k, r in replies.items() if k not in failed}, failed

    def exchange(self, requests: Mapping, wait: float | None = None, need: int = 1
                 ) -> dict:
        """Any exchange but a window's: a site that fails it fails the run."""
        replies = self._exchange(requests, wait, need)
        for r in replies.values():
            if isinstance(r, SiteFailure):
                kind = next(iter(requests.values())).kind
                raise FederationError(f"{kind}: site {r.site} failed: {r.reason}")
        return replies

    def _exchange(self, requests: Mapping, wait: float | None, need: int) -> dict:
        requests = {k: r for k, r in requests.items() if k not in self.skip}
        replies = self.inner.exchange(requests, wait, need) if wait is not None else \
            self.inner.exchange(requests)
        self.total += sum(payload_bytes(m) for m in (*requests.values(), *replies.values()))
        return replies
