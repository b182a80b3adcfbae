"""What the server checks of the envelopes it routes but cannot open: that each goes
to another participant, what its header says (sender, recipient, kind, round), and
its size (a posterior table's at most what the sender's rows can fill; a PSI set's
exactly its origin's count): a site whose envelopes say otherwise is refused now,
not blamed on its recipient later, nor kept in the server's checkpoint."""

from __future__ import annotations

import re
from collections.abc import Mapping

from mmvm.federation.coordinator import FederationError
from mmvm.federation.sealed_align import KIND_PSI
from mmvm.secure.envelope import payload_size, peek_header
from mmvm.secure.errors import SecurityError
from mmvm.secure.psi import POINT_BYTES, origin, ring_neighbours

TABLE_SLACK = 64 << 10  # Arrow's schema, metadata and bitmaps, per posterior table


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


def check_headers(site: str, blobs: Mapping[str, bytes], kind: str,
                   at: tuple[int, int] | None = None) -> None:
    """Each envelope's header (read, not authenticated: only its recipient can) must
    name ``site`` as its sender, the peer it goes to as recipient and ``kind`` (and,
    given ``at``, that round and counter): a site whose envelopes say otherwise is
    refused now, not blamed on its recipient later."""
    for recipient, blob in blobs.items():
        try:
            h = peek_header(blob)
        except SecurityError as err:
            raise FederationError(f"site {site} sent {recipient!r} an envelope that does "
                                  f"not parse: {err}") from None
        if (h.sender, h.recipient, h.kind) != (site, recipient, kind):
            raise FederationError(
                f"site {site} sent {recipient!r} an envelope whose header says "
                f"{h.kind!r} from {h.sender[:40]!r} to {h.recipient[:40]!r}")
        if at is not None and (h.round, h.counter) != at:
            raise FederationError(
                f"site {site} sent {recipient!r} a {kind} envelope of round {h.round}, "
                f"counter {h.counter}; this window's are round {at[0]}, counter {at[1]}")


_TAG = re.compile(f"[0-9a-f]{{{2 * POINT_BYTES}}}")  # a PSI tag: a point, in hex


def check_ring_set(site: str, blobs: Mapping[str, bytes], ring: list[str], step: int,
                   counts: Mapping[str, int], at: tuple[int, int] | None = None) -> None:
    """A site's reply to ring step ``step`` (not the last): one set, sealed to the
    ring's next site (envelope header of kind ``psi``, at ``at``), of as many points
    as its origin's count. Checked before it reaches the next site, which would
    blame the honest origin (training's ring and the test sets')."""
    _, nxt = ring_neighbours(ring, site)
    if sorted(blobs) != [nxt]:
        raise FederationError(f"site {site} sent PSI sets to {sorted(blobs)[:4]}; at "
                              f"step {step} it sends one, to {nxt!r}")
    check_headers(site, blobs, KIND_PSI, at)
    whose = origin(ring, nxt, step + 1)  # the set nxt multiplies at the next step
    points = payload_size(blobs[nxt]) / POINT_BYTES
    if points != counts[whose]:
        raise FederationError(f"site {site} sealed {nxt!r} {whose}'s PSI set of "
                              f"{points:g} points; {whose} described {counts[whose]} "
                              f"samples")


def check_tags(site: str, finished: str, tags: list[str], n: int) -> None:
    """The tags of ``finished``'s set, from the site that finished it: its ``n``
    samples, distinct, each a point in hex."""
    if len(tags) != n or len(set(tags)) != n or not all(_TAG.fullmatch(t) for t in tags):
        raise FederationError(
            f"site {site} finished {finished}'s PSI set with {len(tags)} tags "
            f"({len(set(tags))} distinct) for its {n} samples, or tags that are not "
            f"{2 * POINT_BYTES} hex digits")


def check_sizes(site: str, blobs: Mapping[str, bytes], rows: int, modalities: int,
                latent_dim: int) -> None:
    """Posterior envelopes of a site that holds ``rows`` rows of ``modalities`` own
    modalities: none may seal more than a table of all of them, values and increments
    (a row id and float32 mu and logvar each; a review found envelopes bounded only by
    Flower's message size, kept in the server's inbox and checkpoint)."""
    most = 2 * modalities * (rows * (4 + 8 * latent_dim + 16) + TABLE_SLACK)
    for recipient, blob in blobs.items():
        size = payload_size(blob)
        if size > most:
            raise FederationError(f"site {site} sealed {recipient!r} {size:,} bytes of "
                                  f"posteriors; its {rows:,} rows of {modalities} "
                                  f"modalities fill at most {most:,}")
