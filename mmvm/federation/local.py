"""A whole plaintext federation in one process: for benchmarks and quick checks.

The same sites, endpoints and round loop as under Flower, with the messages passed
as Python objects (:class:`~mmvm.federation.endpoint.LocalTransport`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mmvm.federation.channel import PlainChannel
from mmvm.federation.endpoint import Endpoint, LocalTransport
from mmvm.federation.loop import FederationResult, run_federation
from mmvm.federation.settings import FederationSettings
from mmvm.federation.site import Site


def run_local(s: FederationSettings, files: Mapping[str, tuple[str, str | None]],
              on_window: Callable[[dict], None] | None = None
              ) -> tuple[FederationResult, dict[str, Site]]:
    """Train ``s`` over sites ``{name: (train file, test file or None)}``."""
    sites = {name: Site(s.experiment, name, train, test)
             for name, (train, test) in files.items()}
    transport = LocalTransport({name: Endpoint(site, PlainChannel())
                                for name, site in sites.items()})
    return run_federation(transport, s, on_window), sites
