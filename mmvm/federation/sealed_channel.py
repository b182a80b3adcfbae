"""Secure mode at a site: the server routes bytes it cannot read.

1. **describe**: name, modalities, sample *count*; no ids (pseudonym alignment also
   seals a random contribution to every trusted peer).
2. **align**: keyed pseudonyms or ECDH PSI around the ring of sites
   (:mod:`mmvm.federation.sealed_align`); the server aligns identifiers it cannot
   open.
3. **attach**: the server sends the row of each identifier, and per peer the rows
   the two share and the peer's modalities; a peer the site did not align with, or
   a masking group the site's policy refuses, stops it.
4. **windows**: after training window ``w`` the site seals, per peer, its own
   posteriors for the rows of window ``w+1`` that peer shares with it (kind
   ``posterior``, round ``w+2``); it opens every envelope addressed to it (expected
   round ``w+1``, replay guard on disk) *before* it applies anything: a tampered,
   replayed, misaddressed, unexpected or missing envelope raises a
   :class:`~mmvm.secure.errors.SecurityError`. Shared weights leave double-masked
   (:mod:`mmvm.federation.sealed_weights`); the server learns only their mean, and
   a mean whose sketch rows are not the site's own rows of it is refused
   (:mod:`mmvm.federation.sealed_sketch`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mmvm.federation import sealed_align, sealed_heldout, sealed_sketch
from mmvm.federation.channel import Tables, describe_site
from mmvm.federation.messages import (
    KIND_POSTERIOR,
    AlignReply,
    AlignRequest,
    Arrays,
    AttachRequest,
    ConfirmReply,
    ConfirmRequest,
    DescribeReply,
    HeldOutReply,
    HeldOutRequest,
    UnmaskReply,
    UnmaskRequest,
)
from mmvm.federation.policy import SitePolicy
from mmvm.federation.posteriors import (
    PosteriorError,
    decode_table,
    encode_table,
    merge_tables,
)
from mmvm.federation.progress import EVALUATION
from mmvm.federation.sealed_weights import (
    confirm,
    group_labels,
    masked_weights,
    mean_digest,
    unconfirmed,
    unmask,
)
from mmvm.federation.site import Site
from mmvm.secure.envelope import open_envelope, seal
from mmvm.secure.errors import PeerContentError, SecurityError
from mmvm.secure.identity import prove, record_of
from mmvm.secure.masking import FixedPoint
from mmvm.secure.session import SiteSecrets


class MissingEnvelopeError(SecurityError):
    """A peer's envelope that the protocol requires did not arrive."""


class UnexpectedEnvelopeError(SecurityError):
    """An envelope from a site that has nothing to send us in this window."""


class SealedChannel:
    """Pseudonymous alignment, posteriors sealed per peer, masked shared weights.

    The site's ``policy`` decides which directory entries it trusts (pinned peers)
    and whether two-site masking groups are acceptable."""

    secure = True

    def __init__(self, secrets: SiteSecrets, policy: SitePolicy | None = None,
                 align: str = "pseudonym", flower_run: str = "") -> None:
        if align not in sealed_align.MODES:
            raise ValueError(f"align must be one of {sealed_align.MODES}, got {align!r}")
        self.policy = policy or SitePolicy(test_bed=True)
        secrets.directory = self.policy.trusted(secrets.site, secrets.directory)
        self.sec, self.align_mode = secrets, align
        self.flower_run = flower_run  # the run messages come in (resume proofs sign it)
        self._checked: dict[str, list] = {}  # means checked, not yet begun a window on
        self.mode = f"sealed/{align}"

    # ------------------------------------------------------------------ set-up
    def describe(self, site: Site) -> DescribeReply:
        sec = self.sec
        if site.name != sec.site:
            raise SecurityError(f"node config names site {site.name!r} but its keys are "
                                f"those of {sec.site!r}")
        self.policy.check_rows(site.name, len(site.data))  # before the run id is used
        begin_once(sec)
        if self.align_mode == "psi":
            sec.state = {"mode": "psi"}
            sec.save_state()
            return describe_site(site, identity=record_of(sec.keys))
        return describe_site(site, sealed=sealed_align.contributions(sec),
                             identity=record_of(sec.keys))

    def align(self, site: Site, req: AlignRequest
              ) -> tuple[AlignReply, Callable[[], None]]:
        if self.align_mode == "psi":
            return sealed_align.align_psi(site, self.sec, req, self.policy), \
                self.sec.save_guard
        return sealed_align.align_pseudonyms(site, self.sec, req, self.policy), \
            self.sec.save_guard

    def positions(self, site: Site, req: AttachRequest) -> np.ndarray:
        sec = self.sec
        order = sealed_align.positions(site, sec)
        members = set(sec.state["members"])
        if set(req.peers) != set(req.peer_rows):
            raise SecurityError(f"site {sec.site}: the server names peers "
                                f"{sorted(set(req.peers) ^ set(req.peer_rows))} with "
                                f"modalities or with rows, not both")
        # before any claim is converted (~9x its bytes): only members' are
        named = {str(p) for p in req.peers}
        strangers = (named | {h for v in req.shared.values() for h in v}) - members
        if strangers or sec.site in named:
            raise SecurityError(f"site {sec.site}: the server names peers "
                                f"{sorted(strangers)} that did not take part in the "
                                f"alignment")
        own = np.asarray(req.rows, dtype=np.int64)
        peers = {str(p): _peer_claim(sec.site, str(p), v, req.peer_rows[p], own,
                                     site.global_names) for p, v in req.peers.items()}
        groups = group_labels(req.shared, req.n, req.plan, sec.run_id, sec.site,
                              self.policy)
        sec.state.update(peers=peers, groups=groups)
        sec.save_state()
        return order

    # ------------------------------------------------------------------ windows
    def outgoing(self, site: Site, index: int, excluded: Sequence[str] = ()
                 ) -> dict[str, bytes]:
        """Per peer: own posteriors for the rows of window ``index`` the peer shares;
        nothing to a peer ``excluded`` from the rest of the run (the server would keep
        envelopes it never delivers, sealed to a site it found at fault)."""
        sec, link = self.sec, site.linked()
        wrows = site.window_rows(index)
        table = site.encode_window(index)
        out = {}
        for peer, info in sorted(sec.state["peers"].items()):
            if peer in excluded:
                continue
            need = np.intersect1d(info["rows"], wrows)
            if not len(need):
                continue
            sub = {m: p.take(np.flatnonzero(np.isin(p.rows, need)))
                   for m, p in table.items() if m not in info["modalities"]}
            sub = {m: p for m, p in sub.items() if len(p)}
            out[peer] = seal(sec.keys, sec.peer(peer), encode_table(sub, link.float16),
                             run_id=sec.run_id, round=index + 1, kind=KIND_POSTERIOR)
        return out

    def incoming(self, site: Site, index: int, blobs: Mapping[str, bytes],
                 absent: Sequence[str] = ()) -> tuple[Tables, Callable[[], None]]:
        """Open and check every envelope of window ``index``; nothing is applied. A
        peer the server reports ``absent`` (it missed the last window) sends none:
        its modality is then absent from the prior of the rows it holds."""
        sec = self.sec
        wrows = site.window_rows(index)
        peers = sec.state["peers"]
        shares = {p: np.intersect1d(info["rows"], wrows) for p, info in peers.items()}
        expected = {p for p, rows in shares.items() if len(rows)}
        unexpected = set(blobs) - expected
        if unexpected:
            raise UnexpectedEnvelopeError(f"site {sec.site}, window {index}: envelopes "
                                          f"from {sorted(unexpected)}, which share no row "
                                          f"of this window with us")
        missing = expected - set(blobs) - set(absent)
        if missing:
            raise MissingEnvelopeError(f"site {sec.site}, window {index}: no posteriors "
                                       f"from {sorted(missing)}; nothing was applied")
        guard = copy.deepcopy(sec.guard)
        tables = []
        for sender in sorted(blobs):
            try:
                payload = open_envelope(sec.keys, sec.peer(sender), blobs[sender],
                                        run_id=sec.run_id, guard=guard,
                                        expected_round=index + 1, kind=KIND_POSTERIOR)
            except SecurityError as err:  # the sender's (or the relay's) fault: say whose
                raise type(err)(f"site {sec.site}, window {index}: the envelope from "
                                f"{sender!r}: {err}") from err
            tables.append(self._peer_table(site, sender, payload, shares[sender], index))

        def commit() -> None:
            sec.guard = guard
            sec.save_guard()

        try:
            return merge_tables(tables), commit
        except PosteriorError as err:  # two peers claim the same (modality, row)
            raise PeerContentError(f"site {sec.site}, window {index}: peers "
                                   f"{sorted(blobs)} sent overlapping posteriors: "
                                   f"{err}") from None

    def _peer_table(self, site: Site, sender: str, payload: bytes, rows: np.ndarray,
                    index: int) -> Tables:
        """A peer's posteriors from its opened envelope: rows of ``rows`` (the rows of
        window ``index`` we share with it) of modalities we do not hold. Anything else
        is the sender's fault: :class:`PeerContentError`, naming it."""
        who = f"site {self.sec.site}, window {index}: {sender}"
        try:
            t = decode_table(payload, latent_dim=site.model.latent_dim,
                             n_rows=site.linked().n, sender=sender, max_rows=len(rows))
        except (PosteriorError, ValueError) as err:
            raise PeerContentError(f"{who} sent posteriors that do not decode: "
                                   f"{err}") from None
        held = self.sec.state["peers"][sender]["modalities"]
        for m, p in t.items():
            if m in site.names or m not in held:
                raise PeerContentError(f"{who} sent posteriors of modality {m!r}, which "
                                       f"it does not hold (or we do)")
            bad = p.rows[~np.isin(p.rows, rows)]
            if len(bad):
                raise PeerContentError(f"{who} sent row {bad[0]}, which is not a row "
                                       f"of this window we share")
        return t

    def attach_keys(self) -> dict[str, bytes]:
        return sealed_sketch.attach_keys(self.sec)

    def check_mean(self, site: Site, received: Arrays,
                   keys: Mapping[str, bytes] | None) -> None:
        if keys is not None:  # a window: it masks, with every co-holder's key
            sealed_sketch.take_keys(self.sec, keys)
        p = site.progress  # recorded as taken once begin_window accepts it
        self._checked = sealed_sketch.check_mean(self.sec, received, p.means,
                                                 (p.unmasked, float(len(site.data))))

    def begin_window(self, site: Site, index: int, received: Arrays,
                     inputs: Mapping[str, object]) -> None:
        """Accept ``received`` as window ``index``'s mean, with the request's other
        ``inputs`` (absent peers, resync, the envelopes' digests), only if they are the
        first this site got for that window (or the same again: a retry) and no later
        window began: written before training. Else a server could send a window
        again and again, each time with a crafted mean (or the same one and other
        peers left out), and read a bit of the site's rows from each failure (a
        failed window's state is not kept). A mean beyond the fixed-point range is no
        masked mean of holders' weights and is refused too."""
        clip = FixedPoint().clip
        for m, arrays in sorted(received.items()):
            top = max((float(np.abs(a).max()) for a in arrays.values() if a.size),
                      default=0.0)
            if not top <= clip:
                raise SecurityError(f"site {self.sec.site}, window {index}: the mean of "
                                    f"{m!r} has |values| up to {top:.3g}, beyond the "
                                    f"fixed-point range {clip:g} of any masked mean")
        known = {m: d for m, (_, d) in self._checked.items()}  # check_mean hashed them
        digest = hashlib.sha256((mean_digest(received, known) + json.dumps(
            inputs, sort_keys=True)).encode()).hexdigest()
        self.sec.begin_window(index, digest,
                              "the evaluation" if index == EVALUATION else "")
        site.progress.means.update(self._checked)  # the means it takes
        self._checked = {}

    def shared(self, site: Site, index: int, received: Arrays
               ) -> tuple[Arrays, dict[str, bytes]]:
        return masked_weights(site, self.sec, index, received)

    def confirm(self, site: Site, req: ConfirmRequest) -> ConfirmReply:
        return confirm(self.sec, req)

    def committed_view(self) -> dict:
        return dict(self.sec.state.get("view", {}))

    def unmask(self, site: Site, req: UnmaskRequest
               ) -> tuple[UnmaskReply, Callable[[], None]]:
        reply, guard, confirmed = unmask(self.sec, req)
        known = set(self.sec.state.get("confirmed", []))
        if not confirmed <= known:  # kept at once: a fact from authenticated envelopes
            self.sec.state["confirmed"] = sorted(known | confirmed)  # that only grows (a
            self.sec.save_state()  # commit lost to a crash would not run again: the
            # retried unmask gets the cached reply)

        def commit() -> None:
            self.sec.guard = guard
            self.sec.save_guard()

        return reply, commit

    def unconfirmed(self, received: Arrays) -> list[str]:
        return unconfirmed(self.sec, received)

    def held_out(self, site: Site, req: HeldOutRequest, share: bool,
                 begin: Callable[[], None], load: Callable[[], object]) -> HeldOutReply:
        return sealed_heldout.answer(site, self.sec, self.align_mode, req, share, begin,
                                     load, self.policy)

    def test_input(self, site: Site, blobs: Mapping[str, bytes], log
                   ) -> tuple[bytes | None, Callable[[], None]]:
        return sealed_heldout.opened(site, self.sec, blobs, log)

    def prove(self, run: str, challenge: str) -> str:
        """Signs the challenge for the run whose state this site holds, and no other
        (a signature for a run of the asker's choosing could be relayed)."""
        if run != str(self.sec.run_id):
            raise SecurityError(f"site {self.sec.site}: asked to prove itself for run "
                                f"{run[:24]!r}, its state is of run {self.sec.run_id}")
        if not 0 < len(challenge) <= 64:
            raise SecurityError(f"site {self.sec.site}: a resume challenge of "
                                f"{len(challenge)} characters (it signs 1 to 64)")
        return prove(self.sec.keys, str(self.sec.run_id), challenge, asker=self.flower_run)


def _peer_claim(me: str, peer: str, claim, rows: bytes, own: np.ndarray,
                modalities: list[str]) -> dict:
    """The server's word on which of this site's aligned rows ``peer`` also holds,
    and its modalities (what this site seals to it): distinct rows among this site's
    own, configured modalities. It cannot be verified here; a malformed one is
    refused before anything is built from it."""
    try:
        mods = claim["modalities"]
        ok = isinstance(mods, list) and all(m in modalities for m in mods) and \
            len(set(mods)) == len(mods) and set(claim) == {"modalities"}
    except (KeyError, TypeError):
        ok = False
    got = np.frombuffer(rows, dtype="<u4") if len(rows) % 4 == 0 else None
    if not ok or got is None or not len(got) or len(got) > len(own) or \
            np.any(np.diff(got.astype(np.int64)) <= 0) or not np.isin(got, own).all():
        raise SecurityError(f"site {me}: the server's description of peer {peer!r} is "
                            f"not distinct rows among this site's own aligned rows and "
                            f"distinct configured modalities")
    return {"rows": got.astype(np.int64).tolist(), "modalities": list(mods)}


def begin_once(sec: SiteSecrets) -> None:
    """A secure run id begins once at a site. Its pair-mask seeds and envelope keys
    derive from the run id, and only the run's state folder recorded that it was
    used: were that folder lost, a server could replay the run under the same id
    (``resume``) and, claiming other dropouts, unmask an earlier window. So every
    secure run that begins here is written to ``<state>/<site>.secure-runs`` (beside
    the runs' folders, appended and synced before the site answers), and a run id
    found there is refused. Deleting that file gives the protection up."""
    if sec.state_dir is None:  # a session without state on disk (unit tests)
        return
    ledger = sec.state_dir.parent / f"{sec.site}.secure-runs"
    if ledger.is_file() and str(sec.run_id) in ledger.read_text().split():
        raise SecurityError(f"site {sec.site}: secure run {sec.run_id} already began at "
                            f"this site and its state is gone (or its first describe "
                            f"failed); masks and keys derive from the run id, which is "
                            f"used once: start a new run")
    ledger.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                   encoding="utf-8") as f:  # the site's own, as its state
        f.write(f"{sec.run_id}\n")
        f.flush()
        os.fsync(f.fileno())
