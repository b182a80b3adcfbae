"""The server's part of a secure run's cross-site evaluation: it aligns keyed
pseudonyms of the sites' test ids and routes envelopes it cannot open (the sites'
part: :mod:`mmvm.federation.sealed_heldout`; the plaintext one:
:mod:`mmvm.federation.cross_eval`, whose :func:`combine` reads both).

What the server learns: how many test samples each site has and which of them two
sites share (as pseudonyms), who seals how many bytes to whom, and at the end the
sites' means and counts. Never a test id, a posterior or a label.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from mmvm.federation.admission import short_reason
from mmvm.federation.coordinator import Coordinator, FederationError
from mmvm.federation.cross_eval import TestTables
from mmvm.federation.envelope_checks import (
    check_headers,
    check_ring_set,
    check_tags,
    route,
)
from mmvm.federation.messages import KIND_TEST, HeldOutReply, HeldOutRequest
from mmvm.federation.sealed_heldout import TEST_ROUND
from mmvm.secure.envelope import payload_size
from mmvm.secure.errors import SecurityError
from mmvm.secure.psi import POINT_BYTES, origin

_PSEUDONYM = re.compile("[0-9a-f]{32}")  # mmvm.secure.session.pseudonym's form


class SealedTestTables(TestTables):
    """The aligned test pseudonyms (``rows``, as :class:`TestTables`), each site's
    inbox of envelopes, and what it can have been sent (``available``)."""

    def __init__(self) -> None:
        super().__init__()
        self.inbox: dict[str, dict[str, bytes]] = {}
        self.holders: dict[str, tuple[str, ...]] = {}  # key -> modalities it holds

    def request_for(self, coord: Coordinator, key: str) -> dict[str, bytes]:
        return dict(self.inbox.get(key, {}))

    def multimodal(self) -> int:
        """Test samples that hold two or more modalities, as the server sees them: by
        the sites that hold each sample (a site's sample counts as holding all its
        modalities; exact where every site holds one, or every sample all of a
        site's; :func:`exact` says whether the run is so by its sites alone)."""
        n = max((int(r.max(initial=-1)) + 1 for r in self.rows.values()), default=0)
        count = np.zeros(n, np.int64)
        for key, rows in self.rows.items():
            count[rows] += len(self.holders.get(key, ()))
        return int((count >= 2).sum())

    def exact(self) -> bool:
        return all(len(m) == 1 for m in self.holders.values())


def gather_sealed_tests(transport, coord: Coordinator, averaged: Mapping, wait: float,
                        max_rows: int, align: str = "pseudonym") -> SealedTestTables:
    """The heldout steps: 0 (pseudonyms; PSI: who takes part), the PSI ring's over
    the test sets (``align = "psi"``, :func:`_ring`), and the last (envelopes per
    peer); a site that fails one is named in the tables' notes (it still
    evaluates), and where the ring breaks every site of it is."""
    out = SealedTestTables()
    weights = {key: coord.weights_for(key, averaged) for key in coord.sites}
    replies, failed = transport.gather(
        {key: HeldOutRequest(weights=weights[key]) for key in coord.sites}, wait)
    _missing(out, coord, replies, failed)
    ids, last = {}, 1
    for key, r in sorted(replies.items()):
        try:
            ids[key] = _pseudonyms(r, max_rows) if align != "psi" else _joined(r)
        except ValueError as err:
            out.notes[coord.name(key)] = short_reason(str(err))
    if align == "psi":
        try:
            ids, last = _ring(transport, coord, sorted(ids), weights, wait, max_rows), \
                len(ids) + 1
        except FederationError as err:
            out.notes.update({coord.name(k): short_reason(f"the test sets' PSI ring "
                                                          f"failed: {err}") for k in ids})
            return out
    union = sorted(set().union(*ids.values())) if ids else []
    row_of = {p: i for i, p in enumerate(union)}
    out.rows = {key: np.fromiter((row_of[p] for p in v), np.int64, len(v))
                for key, v in ids.items()}
    out.holders = {key: tuple(coord.sites[key].modalities) for key in out.rows}
    told = {key: _peer_rows(coord, out.rows, key) for key in out.rows}
    sealed, failed = transport.gather(
        {key: HeldOutRequest(weights=weights[key], step=last, n=len(union),
                             rows=out.rows[key].tolist(),
                             peer_rows={coord.name(o): r.astype("<u4").tobytes()
                                        for o, r in told[key].items()},
                             counts={coord.name(k): len(v) for k, v in ids.items()})
         for key in out.rows}, wait)
    _missing(out, coord, sealed, failed)
    for key in list(out.rows):
        if key not in sealed:
            del out.rows[key]
    envelopes = {}
    for key, r in sealed.items():
        peers = {coord.name(o) for o in told[key]}
        try:
            if set(r.posteriors) - peers or r.identifiers:
                stray = sorted(set(r.posteriors) - peers)[:3]
                raise FederationError(f"envelopes to {stray}, not peers it was told of")
            check_headers(coord.name(key), r.posteriors, KIND_TEST, at=(TEST_ROUND, 0))
            envelopes[key] = r.posteriors
        except FederationError as err:
            out.notes[coord.name(key)] = short_reason(str(err))
            del out.rows[key]
    names = {key: coord.name(key) for key in coord.sites}
    out.inbox = route(envelopes, names)
    out.available = {key: _available(coord, key, out, told[key], envelopes)
                     for key in out.rows}
    return out


def _missing(out: TestTables, coord: Coordinator, replies: Mapping, failed: Mapping
             ) -> None:
    out.notes.update({coord.name(k): short_reason(f"failed: {why}")
                      for k, why in failed.items()})
    out.notes.update({coord.name(k): "did not answer" for k in coord.sites
                      if k not in replies and k not in failed
                      and coord.name(k) not in out.notes})


def _joined(r: HeldOutReply) -> list[str]:
    """PSI, step 0: the site takes part (no identifiers yet), or says why not."""
    if r.reason or r.identifiers or r.posteriors:
        raise ValueError(r.reason or "sent identifiers or envelopes before the test ring")
    return []


def _ring(transport, coord: Coordinator, keys: list[str], weights: Mapping,
          wait: float, max_rows: int) -> dict[str, list[str]]:
    """The PSI ring over the test sets of ``keys`` (heldout steps 1 to R): each set
    counted by its first envelope's size, routed to the next site, and at the last
    step every site's tags (in its own order), as :meth:`SealedRouting._psi` does for
    training; any failure breaks the ring (:class:`FederationError`)."""
    names = {k: coord.name(k) for k in keys}
    ring, key_of = sorted(names.values()), {n: k for k, n in names.items()}
    if len(ring) < 2:
        raise FederationError(f"{len(ring)} site(s) took part; a ring needs two")
    counts: dict[str, int] = {}
    replies: Mapping = {}
    for step in range(len(ring)):
        inbox = route({k: r.posteriors for k, r in replies.items()}, names) if step \
            else {k: {} for k in keys}
        replies, failed = transport.gather(
            {k: HeldOutRequest(weights=weights[k], step=step + 1, ring=ring,
                               counts=dict(counts), sealed=inbox[k]) for k in keys}, wait)
        if failed or set(replies) != set(keys):
            gone = sorted(names[k] for k in keys if k not in replies)
            raise FederationError(f"ring step {step}: no answer from {gone}")
        if step < len(ring) - 1:
            for k, r in replies.items():
                if step == 0:  # the server's count of each test set: its first size
                    try:
                        size = payload_size(next(iter(r.posteriors.values()), b"")) \
                            / POINT_BYTES if len(r.posteriors) == 1 else 0.0
                    except SecurityError as err:  # not an envelope: the ring fails
                        raise FederationError(f"site {names[k]}'s test set: {err}") from None
                    if not size.is_integer() or not 0 < size <= max_rows:
                        raise FederationError(f"site {names[k]}'s test set has {size:g} "
                                              f"points (max-site-rows = {max_rows})")
                    counts[names[k]] = int(size)
                if r.identifiers:
                    raise FederationError(f"site {names[k]} sent tags at step {step}")
                check_ring_set(names[k], r.posteriors, ring, step, counts,
                               at=(TEST_ROUND, step + 1))
    tags = {}
    for k, r in replies.items():  # each finishes its origin's set, in that order
        whose = origin(ring, names[k], len(ring) - 1)
        if r.posteriors:
            raise FederationError(f"site {names[k]} sent envelopes with its tags")
        check_tags(names[k], whose, r.identifiers, counts[whose])
        tags[key_of[whose]] = list(r.identifiers)
    return tags


def _pseudonyms(r: HeldOutReply, max_rows: int) -> list[str]:
    ids = r.identifiers
    if r.reason and not ids:
        raise ValueError(r.reason)
    if not ids:
        raise ValueError("sent no test samples")
    if r.posteriors:
        raise ValueError("sent test posteriors with its pseudonyms")
    if len(ids) > max_rows or len(set(ids)) != len(ids) or ids != sorted(ids) or \
            not all(_PSEUDONYM.fullmatch(i) for i in ids):
        raise ValueError(f"{len(ids)} test pseudonyms, not distinct sorted keyed "
                         f"pseudonyms (at most max-site-rows = {max_rows})")
    return list(ids)


def _peer_rows(coord: Coordinator, rows: Mapping[str, np.ndarray], key: str
               ) -> dict[str, np.ndarray]:
    """Per training peer of ``key`` (a site it shares training rows with: the peers
    whose modalities it knows): the test rows both hold."""
    out = {}
    for other in rows:
        if other != key and coord.shares_rows(key, other):
            both = np.intersect1d(rows[key], rows[other])
            if len(both):
                out[other] = both
    return out


def _available(coord: Coordinator, key: str, tables: SealedTestTables,
               told: Mapping[str, np.ndarray], envelopes: Mapping) -> dict[str, int]:
    """The most test rows site ``key`` can have scored per modality: its own test
    rows for its own, and for another the rows it shares with the peers that sealed
    that modality to it (what :func:`cross_eval.combine` caps a count by)."""
    out = dict.fromkeys(coord.sites[key].modalities, len(tables.rows[key]))
    for other, rows in told.items():
        if coord.name(key) not in envelopes.get(other, {}):
            continue
        for m in coord.sites[other].modalities:
            if m not in coord.sites[key].modalities:
                out[m] = out.get(m, 0) + len(rows)
    return out
