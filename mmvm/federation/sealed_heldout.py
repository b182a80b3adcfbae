"""Secure mode at a site: the cross-site evaluation without test ids or posteriors
in clear (the server's part: :mod:`mmvm.federation.sealed_test_routing`; the scores:
:mod:`mmvm.federation.site_cross_eval`).

1. **heldout, step 0**: the site begins its evaluation on the server's mean (the
   evaluation's inputs, recorded once: the evaluate message must bring the same),
   loads it, and answers the sorted keyed pseudonyms of its test ids, under a key
   of the test split derived from the run's group id key (the server can neither
   open them nor link them to the training pseudonyms). With ``align = "psi"`` it
   says only that it takes part; steps 1 to R then run a PSI ring over the test
   sets (:mod:`mmvm.federation.sealed_heldout_psi`), whose last step gives the
   server every test set's tags.
2. **heldout, last step** (1, or R + 1): the server sends the aligned test row of
   each identifier and, per training peer, the test rows both hold; the site seals
   to that peer its own posteriors of those rows, of the modalities the peer lacks
   (kind ``testposterior``, round :data:`TEST_ROUND`), as a window seals its
   posteriors.
3. **evaluate**: the site opens the envelopes addressed to it (:func:`opened`): only
   from the peers of the last step, of modalities they hold and it does not, of
   rows it was told they share; then it scores as in plaintext, means and counts
   only.

Each step is answered once a run (the same answer to the same request, for a
restarted server or a process killed before its reply was kept).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from mmvm.data import open_dataset
from mmvm.federation.messages import KIND_TEST, HeldOutReply, HeldOutRequest
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.posteriors import (
    PosteriorError,
    Posteriors,
    decode_table,
    encode_table,
    merge_tables,
)
from mmvm.federation.progress import EVALUATION, ProtocolOrderError
from mmvm.federation.reply_cache import request_digest
from mmvm.federation.sealed_heldout_psi import join, ring_step
from mmvm.federation.site import Site
from mmvm.federation.site_cross_eval import test_posteriors
from mmvm.secure.envelope import open_envelope, seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.session import SiteSecrets, pseudonym, test_key, unb64

TEST_ROUND = EVALUATION + 1  # after every window's round and the evaluation's


def answer(site: Site, sec: SiteSecrets, align: str, req: HeldOutRequest, share: bool,
           begin: Callable[[], None], load: Callable[[], object],
           policy: SitePolicy) -> HeldOutReply:
    """The reply to heldout step ``req.step``: 0 pseudonyms (PSI: taking part), PSI
    ring steps (:mod:`mmvm.federation.sealed_heldout_psi`), then the sealed
    posteriors."""
    weights = request_digest({}, req.weights)
    if not share and req.step:  # its node config as it is now, also off after step 0
        raise PolicyError(f"site {site.name}: heldout step {req.step} refused: its "
                          f"node config keeps its test set out (share-test = false)")
    if req.step == 0:
        again = site.replies.get("heldout", 0, weights)
        if again is not None:  # what it no longer shares is not sent again
            return again if share or again.reason else _kept_out()
        site.progress.held_out_step(site.name)
        reply = _pseudonyms(site, sec, align, share, weights, begin, load)
        site.replies.keep("heldout", 0, reply, weights)
        return reply
    test = sec.state.get("test") or {}
    if not site.progress.held_out or site.progress.held_out != weights or not test:
        raise ProtocolOrderError(f"site {site.name}: heldout step {req.step} refused: "
                                 f"it follows the site's step 0, with the same weights")
    ring = len(test.get("ring", ())) if test.get("mode") == "psi" else 0
    asked = request_digest({"step": req.step, "n": req.n, "counts": req.counts,
                            "ring": req.ring, "rows": hashlib.sha256(np.asarray(
                                req.rows, "<i8").tobytes()).hexdigest(),
                            **{f: {p: hashlib.sha256(b).hexdigest() for p, b in sorted(
                                getattr(req, f).items())} for f in ("peer_rows", "sealed")}},
                           req.weights)
    if test.get("mode") == "psi" and (req.step <= ring or not ring):
        again = site.replies.get("heldout.ring", req.step, asked)
        if again is None:
            again = ring_step(site, sec, req, policy, TEST_ROUND)
            site.replies.keep("heldout.ring", req.step, again, asked)
        return again
    if req.step != ring + 1 or ring and test.get("step") != ring + 1:
        raise ProtocolOrderError(f"site {site.name}: heldout step {req.step} refused "
                                 f"(this run's are 0 to {ring + 1}, in order)")
    return _seal_step(site, sec, req, test, asked, policy)


def _seal_step(site: Site, sec: SiteSecrets, req: HeldOutRequest, test: dict,
               asked: str, policy: SitePolicy) -> HeldOutReply:
    """The last step: the site's posteriors of the test rows each peer shares,
    sealed to it; once (the same request again: the same answer)."""
    again = site.replies.get("heldout.seal", req.step, asked)
    if again is not None:
        return again
    if test.get("sealed", True) and test.get("asked") != asked:
        raise ProtocolOrderError(f"site {site.name}: heldout step {req.step} refused: "
                                 f"the site sealed its test posteriors once in this run")
    claims = _claims(site, sec, req, len(test["order"]), policy)
    test.update(sealed=True, asked=asked, n=req.n, rows=list(map(int, req.rows)),
                peers={p: rows.tolist() for p, rows in claims.items()})
    sec.save_state()  # once (the same request again gets the same answer: a process
    # killed before its reply was kept encodes and seals the same rows again)
    reply = HeldOutReply(posteriors=_sealed(site, sec, test, claims))
    site.replies.keep("heldout.seal", req.step, reply, asked)
    return reply


def _kept_out() -> HeldOutReply:
    return HeldOutReply(reason="its node config keeps its test set out (share-test = "
                               "false)")


def _pseudonyms(site: Site, sec: SiteSecrets, align: str, share: bool, weights: str,
                begin: Callable[[], None], load: Callable[[], object]) -> HeldOutReply:
    if not share:
        return _kept_out()
    if not site.test_path:
        return HeldOutReply(reason="no test file")
    begin()  # the evaluation's mean, fixed here: evaluate must bring the same
    load()
    if align == "psi":
        return join(site, sec, weights)
    if "group_key" not in sec.state:
        raise SecurityError(f"site {site.name}: heldout before its alignment (no group "
                            f"key)")
    key = test_key(unb64(sec.state["group_key"]), sec.run_id)
    test = open_dataset(site.test_path, site.names, site.cfg.data)
    named = sorted((pseudonym(key, s), i) for i, s in enumerate(test.sample_ids))
    sec.state["test"] = {"order": [i for _, i in named], "sealed": False}
    sec.save_state()
    site.progress.held_out = weights
    return HeldOutReply(identifiers=[p for p, _ in named])


def _claims(site: Site, sec: SiteSecrets, req: HeldOutRequest, count: int,
            policy: SitePolicy) -> dict[str, np.ndarray]:
    """The server's word on the test rows: every site's count of test pseudonyms (this
    site's own, each within ``max-align-rows``: a peer holds the group key and could
    bring pseudonyms of guessed ids, as at training's alignment), ``n`` no more than
    their sum; ``rows``, one distinct aligned row below ``n`` per pseudonym sent; per
    peer, distinct sorted rows among those, and only training peers (whose
    modalities the site knows). It cannot be verified here; a malformed one is
    refused before anything is encoded."""
    counts = req.counts if isinstance(req.counts, dict) else {}
    sizes = [n for n in counts.values() if type(n) is int and n > 0]
    if counts.get(site.name) != count or len(sizes) != len(counts) or \
            not set(req.peer_rows) <= set(counts):
        raise SecurityError(f"site {site.name}: heldout, last step: the server's counts "
                            f"of test identifiers are not positive whole numbers for "
                            f"every site it names, this one's own included")
    for peer, n in sorted(counts.items()):
        if peer != site.name:
            policy.check_peer_set(site.name, peer, n)
    rows = np.asarray(req.rows, dtype=np.int64)
    if not count <= req.n <= sum(sizes) or len(rows) != count or \
            len(np.unique(rows)) != count or rows.min(initial=0) < 0 or \
            rows.max(initial=0) >= req.n:
        raise SecurityError(f"site {site.name}: heldout, last step: the server's test rows "
                            f"are not one distinct row below n per pseudonym sent, or n "
                            f"is more than the sites' counts together")
    peers = sec.state.get("peers", {})
    out = {}
    for peer, blob in sorted(req.peer_rows.items()):
        got = np.frombuffer(blob, dtype="<u4") if len(blob) % 4 == 0 else None
        if peer not in peers or got is None or not len(got) or \
                np.any(np.diff(got.astype(np.int64)) <= 0) or not np.isin(got, rows).all():
            raise SecurityError(f"site {site.name}: heldout, last step: the server's test "
                                f"rows of peer {peer[:40]!r} are not distinct rows among "
                                f"this site's, or it is no peer of its training")
        out[peer] = got.astype(np.int64)
    return out


def _sealed(site: Site, sec: SiteSecrets, test: dict, claims: Mapping[str, np.ndarray]
            ) -> dict[str, bytes]:
    """Per peer: the site's own posteriors of the test rows both hold (aligned test
    rows), of the modalities the peer lacks, sealed to it."""
    if not claims:
        return {}
    data = open_dataset(site.test_path, site.names, site.cfg.data)
    aligned = np.empty(len(test["order"]), np.int64)
    aligned[np.asarray(test["order"], np.int64)] = test["rows"]  # dataset row -> aligned
    table = {m: Posteriors(aligned[p.rows], p.mu, p.logvar)
             for m, p in test_posteriors(site, data).items()}
    # values a peer would refuse (a crafted mean can push chosen rows beyond the
    # format's limits) fail this step as a whole: one outcome, not a bit per peer
    decode_table(encode_table(table), latent_dim=site.cfg.model.latent_dim,
                 n_rows=test["n"], sender=site.name)
    out = {}
    for peer, rows in claims.items():
        lacks = [m for m in table if m not in sec.state["peers"][peer]["modalities"]]
        part = {m: table[m].take(np.flatnonzero(np.isin(table[m].rows, rows)))
                for m in lacks}
        part = {m: p for m, p in part.items() if len(p)}
        out[peer] = seal(sec.keys, sec.peer(peer), encode_table(part), run_id=sec.run_id,
                         round=TEST_ROUND, kind=KIND_TEST)
    return out


def opened(site: Site, sec: SiteSecrets, blobs: Mapping[str, bytes], log
           ) -> tuple[bytes | None, Callable[[], None]]:
    """The peers' envelopes as one table in the site's test positions (encoded, as
    the plaintext server's table), and what marks them as used; None where one is
    refused (why: told to ``log``, the site's journal; the server learns only that
    they were refused)."""
    test = sec.state.get("test") or {}
    if not test.get("sealed"):
        log("the evaluation: the peers' test posteriors refused: this site sealed none "
            "of its own (no last heldout step)")
        return None, lambda: None
    guard = copy.deepcopy(sec.guard)
    try:
        tables = [_peer_table(site, sec, test, sender, blob, guard)
                  for sender, blob in sorted(blobs.items())]
        merged = merge_tables(tables)
    except (SecurityError, PosteriorError, ValueError) as err:
        log(f"the evaluation: the peers' test posteriors refused: {err}")
        return None, lambda: None
    rows = np.asarray(test["rows"], np.int64)  # aligned test row -> dataset row,
    by_row = np.argsort(rows)  # without an array of the server's n
    order = np.asarray(test["order"], np.int64)[by_row]
    local = {m: Posteriors(order[np.searchsorted(rows[by_row], p.rows)], p.mu, p.logvar)
             for m, p in merged.items()}

    def commit() -> None:
        sec.guard = guard
        sec.save_guard()

    return encode_table(local), commit


def _peer_table(site: Site, sec: SiteSecrets, test: dict, sender: str, blob: bytes,
                guard) -> dict[str, Posteriors]:
    rows = np.asarray(test["peers"].get(sender, []), np.int64)
    if not len(rows):
        raise SecurityError(f"an envelope from {sender[:40]!r}, which shares no test "
                            f"row with this site")
    payload = open_envelope(sec.keys, sec.peer(sender), blob, run_id=sec.run_id,
                            guard=guard, expected_round=TEST_ROUND, expected_counter=0,
                            kind=KIND_TEST)
    t = decode_table(payload, latent_dim=site.cfg.model.latent_dim, n_rows=test["n"],
                     sender=sender, max_rows=len(rows))
    held = sec.state["peers"][sender]["modalities"]
    for m, p in t.items():
        if m in site.names or m not in held:
            raise SecurityError(f"{sender} sent test posteriors of {m!r}, which it does "
                                f"not hold (or this site does)")
        if not np.isin(p.rows, rows).all():
            raise SecurityError(f"{sender} sent test posteriors of a row it does not "
                                f"share with this site")
    return t
