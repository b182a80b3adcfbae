"""A whole plaintext federation in one process: for benchmarks and quick checks.

The same sites, endpoints and round loop as under Flower, with the messages passed
as Python objects (:class:`LocalTransport`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from mmvm.federation.channel import PlainChannel
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.loop import FederationResult, run_federation
from mmvm.federation.messages import SiteFailure
from mmvm.federation.settings import FederationSettings
from mmvm.federation.site import Site
from mmvm.secure.errors import SecurityError


class LocalTransport:
    """Endpoints in this process, addressed by key (tests, benchmarks)."""

    def __init__(self, endpoints: Mapping[str, Endpoint]) -> None:
        self.endpoints = dict(endpoints)

    def nodes(self) -> list[str]:
        return list(self.endpoints)

    def online(self) -> list[str]:
        return list(self.endpoints)

    def exchange(self, requests: Mapping, wait: float | None = None, need: int = 1
                 ) -> dict:
        """As Flower's: with ``wait``, a site that raises anything but a refusal of
        its protection (:class:`SecurityError`, raised as is) is a :class:`SiteFailure`."""
        out: dict = {}
        for key, req in requests.items():
            try:
                out[key] = self.endpoints[key].handle(req)
            except SecurityError:
                raise
            except Exception as err:
                if wait is None:
                    raise
                out[key] = SiteFailure(self.endpoints[key].site.name,
                                       f"{type(err).__name__}: {err}")
        return out


class Outages:
    """A transport on which sites are away for given windows: a site away in window
    w receives neither that window nor its unmask step (as if its machine were off);
    the server sees it leave FedAvg and the mixture prior, and come back."""

    def __init__(self, inner, away: Mapping[str, Collection[int]]) -> None:
        self.inner, self.away = inner, {k: set(v) for k, v in away.items()}
        self.window = -1

    def nodes(self) -> list[str]:
        return self.inner.nodes()

    def _here(self, key: str) -> bool:
        return self.window not in self.away.get(key, ())

    def online(self) -> list[str]:
        return [k for k in self.inner.online() if self._here(k)]

    def exchange(self, requests: Mapping, wait: float | None = None, need: int = 1
                 ) -> dict:
        if wait is None:
            return self.inner.exchange(requests)
        first = next(iter(requests.values()), None)
        self.window = getattr(first, "window", -1)  # evaluation: everyone is back
        return self.inner.exchange({k: r for k, r in requests.items() if self._here(k)},
                                   wait, need)


def run_local(s: FederationSettings, files: Mapping[str, tuple[str, str | None]],
              on_window: Callable[[dict], None] | None = None,
              away: Mapping[str, Collection[int]] | None = None
              ) -> tuple[FederationResult, dict[str, Site]]:
    """Train ``s`` over sites ``{name: (train file, test file or None)}``; ``away``:
    windows each site misses (:class:`Outages`)."""
    sites = {name: Site(s.experiment, name, train, test, overlap=s.decode_ahead)
             for name, (train, test) in files.items()}
    transport = LocalTransport({name: Endpoint(site, PlainChannel())
                                for name, site in sites.items()})
    if away:
        transport = Outages(transport, away)
    return run_federation(transport, s, on_window), sites
