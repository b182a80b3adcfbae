"""Secure mode on the server: route sealed bytes, average masked weights.

The server aligns keyed pseudonyms, never ids; it moves each site's envelopes
``{recipient: blob}`` to their recipients as ``{sender: blob}`` without opening them,
and recovers only the sample-weighted mean of each shared modality's weights from
the sites' masked updates (:func:`mmvm.secure.masking.aggregate_masked`). What it
still sees: pseudonyms and their overlap, counts, who sends how many bytes to whom,
per-window training metrics (sums), the averaged shared weights, the evaluation
metrics, and the final model if ``collect-model`` is on (``deploy/README.md``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.messages import (
    MASK_WEIGHT,
    AlignRequest,
    Arrays,
    DescribeReply,
    WindowRequest,
)
from mmvm.federation.routing import site_infos
from mmvm.secure.masking import aggregate_masked


def route(sealed: Mapping[str, Mapping[str, bytes]], names: Mapping[str, str]
          ) -> dict[str, dict[str, bytes]]:
    """``{sender key: {recipient name: blob}}`` -> ``{recipient key: {sender name:
    blob}}``; an envelope to a non-participant or to its own sender is refused."""
    key_of = {n: k for k, n in names.items()}
    inbox: dict[str, dict[str, bytes]] = {k: {} for k in names}
    for key, blobs in sealed.items():
        for recipient, blob in blobs.items():
            if recipient not in key_of or recipient == names[key]:
                raise FederationError(f"site {names[key]} sent an envelope to "
                                      f"{recipient!r}, which is not another participant")
            inbox[key_of[recipient]][names[key]] = blob
    return inbox


class SealedRouting:
    """Pseudonymous alignment, envelopes routed unopened, masked FedAvg."""

    peers = True

    def __init__(self) -> None:
        self.inbox: dict[str, dict[str, bytes]] = {}

    def align(self, transport, described: Mapping[str, DescribeReply]) -> list[SiteInfo]:
        names = {key: d.site for key, d in described.items()}
        if len(set(names.values())) != len(names):
            raise FederationError(f"two sites report the same name: {sorted(names.values())}")
        leaked = [d.site for d in described.values() if d.identifiers]
        if leaked:
            raise FederationError(f"sites {leaked} sent sample ids in secure mode")
        inbox = route({k: d.sealed for k, d in described.items()}, names)
        aligned = transport.exchange({key: AlignRequest(sealed=inbox[key])
                                      for key in described})
        return site_infos(described, {k: r.identifiers for k, r in aligned.items()})

    def receive(self, coord: Coordinator, replies: Mapping) -> None:
        names = {key: site.name for key, site in coord.sites.items()}
        self.inbox = route({k: r.posteriors for k, r in replies.items()}, names)

    def requests(self, coord: Coordinator, index: int, averaged: Arrays
                 ) -> dict[str, WindowRequest]:
        return {key: WindowRequest(window=index, posteriors=self.inbox.get(key, {}),
                                   weights=coord.weights_for(key, averaged))
                for key in coord.sites}

    def aggregate(self, coord: Coordinator, replies: Mapping) -> Arrays:
        """Sample-weighted mean of each shared modality from masked updates only."""
        out = {}
        for m, keys in coord.shared.items():
            masked = {}
            for k in keys:
                got = replies[k].weights.get(m)
                if got is None:
                    raise FederationError(f"site {coord.name(k)} sent no masked update "
                                          f"of {m!r} (dropout recovery is not wired)")
                masked[coord.name(k)] = got
            params = sorted(n for n in next(iter(masked.values())) if n != MASK_WEIGHT)
            for site, arrays in masked.items():
                if sorted(arrays) != sorted([*params, MASK_WEIGHT]):
                    raise FederationError(f"site {site}: its masked update of {m!r} names "
                                          f"other parameters than its peers'")
            means = aggregate_masked(
                {s: [a[n] for n in params] + [a[MASK_WEIGHT]] for s, a in masked.items()},
                participants=sorted(masked))
            out[m] = {n: v.astype(np.float32) for n, v in zip(params, means, strict=True)}
        return out
