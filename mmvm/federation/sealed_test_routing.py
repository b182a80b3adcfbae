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
from mmvm.federation.messages import KIND_TEST, HeldOutReply, HeldOutRequest
from mmvm.federation.sealed_heldout import TEST_ROUND
from mmvm.federation.sealed_routing import check_headers, route

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
                        max_rows: int) -> SealedTestTables:
    """Step 0 (pseudonyms) and step 1 (envelopes per peer) of the heldout message; a
    site that fails either is named in the tables' notes (it still evaluates)."""
    out = SealedTestTables()
    weights = {key: coord.weights_for(key, averaged) for key in coord.sites}
    replies, failed = transport.gather(
        {key: HeldOutRequest(weights=weights[key]) for key in coord.sites}, wait)
    _missing(out, coord, replies, failed)
    ids = {}
    for key, r in sorted(replies.items()):
        try:
            ids[key] = _pseudonyms(r, max_rows)
        except ValueError as err:
            out.notes[coord.name(key)] = short_reason(str(err))
    union = sorted(set().union(*ids.values())) if ids else []
    row_of = {p: i for i, p in enumerate(union)}
    out.rows = {key: np.fromiter((row_of[p] for p in v), np.int64, len(v))
                for key, v in ids.items()}
    out.holders = {key: tuple(coord.sites[key].modalities) for key in out.rows}
    told = {key: _peer_rows(coord, out.rows, key) for key in out.rows}
    sealed, failed = transport.gather(
        {key: HeldOutRequest(weights=weights[key], step=1, n=len(union),
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
                raise FederationError(f"envelopes to {sorted(set(r.posteriors) - peers)[:3]}"
                                      f", not peers it was told of")
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
