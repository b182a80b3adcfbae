"""How a site talks to the federation: the plaintext channel, and the channel seam.

A site's endpoint (:mod:`mmvm.federation.endpoint`) runs the protocol; its channel
decides what the messages carry. Plaintext (this module): the site reports its sample
ids, sends its own posteriors to the server as Arrow tables, receives the others'
from the server, and hands in its shared weights as they are. Sealed
(:mod:`mmvm.federation.sealed_channel`): pseudonyms, envelopes per peer, masked weights.

Every method that receives something checks it completely and returns what to apply;
nothing of the site's state changes before a window is known to be good (``commit``
runs after training).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import (
    SERVER,
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
from mmvm.federation.posteriors import Posteriors, decode_table, encode_table
from mmvm.federation.site import Site
from mmvm.federation.site_cross_eval import answer_held_out

Tables = dict[str, Posteriors]


class Channel(Protocol):
    """Where the plaintext and the sealed protocol differ, at a site."""

    secure: bool
    mode: str  # "plain" or "sealed/<alignment>": bound to the run at describe

    def describe(self, site: Site) -> DescribeReply: ...

    def align(self, site: Site, req: AlignRequest
              ) -> tuple[AlignReply, Callable[[], None]]:
        """Secure mode: one alignment step, and what to commit once the site's state
        is written (the replay guard of the envelopes it opened)."""
        ...

    def positions(self, site: Site, req: AttachRequest) -> np.ndarray:
        """Dataset rows of the identifiers the site reported, in that order (the
        order of ``req.rows``); checks what the server says about peers."""
        ...

    def outgoing(self, site: Site, index: int, excluded: Sequence[str] = ()
                 ) -> dict[str, bytes]:
        """Own posteriors for window ``index``'s rows, per recipient (none to a site
        ``excluded`` from the rest of the run)."""
        ...

    def incoming(self, site: Site, index: int, blobs: Mapping[str, bytes],
                 absent: Sequence[str] = ()) -> tuple[Tables, Callable[[], None]]:
        """The others' posteriors for window ``index`` (checked, nothing applied) and
        what to commit once the window is applied; ``absent``: sites that missed the
        last window, so nothing of theirs comes."""
        ...

    def attach_keys(self) -> dict[str, bytes]:
        """Secure mode: this site's sketch key sealed to each co-holder, at attach
        (:mod:`mmvm.federation.sealed_sketch`); plaintext: none."""
        ...

    def check_mean(self, site: Site, received: Arrays,
                   keys: Mapping[str, bytes] | None) -> None:
        """Secure mode: refuse a mean ``received`` whose sketch rows are not this
        site's rows of it, or older than the last it took
        (:mod:`mmvm.federation.sealed_sketch`); ``keys`` (a window, which it masks):
        the co-holders' sealed sketch keys, opened where new, and all needed."""
        ...

    def begin_window(self, site: Site, index: int, received: Arrays,
                     inputs: Mapping[str, object]) -> None:
        """Before window ``index`` trains on ``received`` (the averaged weights the
        server sent) and the request's other ``inputs`` (JSON-able): secure mode
        accepts one set of them per window (see SealedChannel)."""
        ...

    def shared(self, site: Site, index: int, received: Arrays
               ) -> tuple[Arrays, dict[str, bytes]]:
        """Weights of the modalities shared with other sites, as they travel, and
        (secure) the sealed self-mask shares per peer; ``received``: the averaged
        weights the server sent with this window."""
        ...

    def confirm(self, site: Site, req: ConfirmRequest) -> ConfirmReply:
        """Secure mode: commit to an unmask view with dropped holders and seal it to
        the co-survivors (:func:`mmvm.federation.sealed_weights.confirm`)."""
        ...

    def committed_view(self) -> dict:
        """Secure mode: the unmask view the site last committed to (``{"window": w,
        "groups": {...}}``), which a restarted server must keep for that window;
        plaintext: ``{}``."""
        ...

    def unmask(self, site: Site, req: UnmaskRequest
               ) -> tuple[UnmaskReply, Callable[[], None]]:
        """Secure mode: the unmask step after a window, and what to commit once the
        site's state is written (the replay guard of the shares it opened)."""
        ...

    def unconfirmed(self, received: Arrays) -> list[str]:
        """The modalities of the server's mean ``received`` the site does not load:
        secure mode, those no co-holder has confirmed sharing yet
        (:func:`mmvm.federation.sealed_weights.unconfirmed`)."""
        ...

    def held_out(self, site: Site, req: HeldOutRequest, share: bool,
                 begin: Callable[[], None], load: Callable[[], object]) -> HeldOutReply:
        """The cross-site evaluation's heldout answer (``share``: the node config's
        ``share-test``; ``begin`` records the evaluation's inputs, ``load`` loads the
        server's mean): test ids and posteriors to the server (plaintext), or keyed
        pseudonyms, then envelopes to the peers (secure, two steps)."""
        ...

    def test_input(self, site: Site, blobs: Mapping[str, bytes], log
                   ) -> tuple[bytes | None, Callable[[], None]]:
        """The other modalities' test posteriors an evaluation received, as one table
        in the site's test positions (None: refused, why told to ``log``), and what
        to commit once the site's state is written."""
        ...

    def prove(self, run: str, challenge: str) -> str:
        """Secure mode: the signed answer to a restarted server's challenge
        (:mod:`mmvm.secure.identity`); plaintext: ``""`` (nothing to sign with)."""
        ...


def describe_site(site: Site, **extra) -> DescribeReply:
    return DescribeReply(site=site.name, modalities=list(site.names), n=len(site.data),
                         labelled=site.data.labels is not None, **extra)


def _check_rows(site: Site, index: int, table: Tables, frame: np.ndarray) -> None:
    """The server's posteriors name rows of the window this site holds (explicit
    row columns are otherwise only bounded by the aligned rows, and an event cache
    keeps what arrives: a server could grow it past every limit) of the run's other
    modalities."""
    others = {s.name for s in site.cfg.model.modalities} - set(site.names)
    for m, p in table.items():
        if m not in others:
            raise FederationError(f"site {site.name}, window {index}: the server sent "
                                  f"posteriors of {m!r}, not one of the run's other "
                                  f"modalities {sorted(others)}")
        bad = p.rows[~np.isin(p.rows, frame)]
        if len(bad):
            raise FederationError(f"site {site.name}, window {index}: the server sent "
                                  f"row {int(bad[0])} of {m!r}, which is not a row of "
                                  f"this window the site holds")


class PlainChannel:
    """Sample ids and posterior tables in the clear, through the server."""

    secure = False
    mode = "plain"

    def describe(self, site: Site) -> DescribeReply:
        return describe_site(site, identifiers=list(site.data.sample_ids))

    def align(self, site: Site, req: AlignRequest
              ) -> tuple[AlignReply, Callable[[], None]]:
        raise FederationError(f"site {site.name}: align is a secure-mode message; this "
                              f"site runs the plaintext protocol")

    def positions(self, site: Site, req: AttachRequest) -> np.ndarray:
        return np.arange(len(site.data), dtype=np.int64)

    def outgoing(self, site: Site, index: int, excluded: Sequence[str] = ()
                 ) -> dict[str, bytes]:
        link = site.linked()
        rows = site.window_rows(index)
        table, deltas = site.encode_window(index), None
        tol, unit = link.delta_tol, link.plan_args.delta_unit
        if tol is not None and link.int8:  # event-triggered, with error feedback
            table, deltas = link.sent_cache.changed_int8(table, tol, unit)
        elif tol is not None:  # event-triggered: only rows that moved
            table = link.sent_cache.changed(table, tol, unit)
        blob = encode_table(table, link.float16, int8=link.int8, frame=link.frame(rows),
                            deltas=deltas)
        return {SERVER: blob} if blob else {}

    def incoming(self, site: Site, index: int, blobs: Mapping[str, bytes],
                 absent: Sequence[str] = ()) -> tuple[Tables, Callable[[], None]]:
        stray = set(blobs) - {SERVER}
        if stray:
            raise FederationError(f"site {site.name}: posteriors from {sorted(stray)} in "
                                  f"plaintext mode, where only the server sends them")
        link, rows = site.linked(), site.window_rows(index)
        event = link.delta_tol is not None
        table = decode_table(blobs.get(SERVER, b""), latent_dim=site.model.latent_dim,
                             n_rows=link.n, sender=SERVER, max_rows=len(rows),
                             frame=link.frame(rows),
                             base=link.others_cache.values if event else None)
        _check_rows(site, index, table, link.frame(rows))
        if not event:
            return table, lambda: None
        link.others_cache.update(table)
        return link.others_cache.table(site.window_rows(index), exclude=site.names), \
            lambda: None

    def attach_keys(self) -> dict[str, bytes]:
        return {}

    def check_mean(self, site: Site, received: Arrays,
                   keys: Mapping[str, bytes] | None) -> None:
        pass  # its weights go to the server as they are: the mean is the server's word

    def begin_window(self, site: Site, index: int, received: Arrays,
                     inputs: Mapping[str, object]) -> None:
        pass  # the server sees a plaintext site's posteriors anyway

    def shared(self, site: Site, index: int, received: Arrays
               ) -> tuple[Arrays, dict[str, bytes]]:
        return {m: site.shared_weights(m) for m in site.linked().shared}, {}

    def confirm(self, site: Site, req: ConfirmRequest) -> ConfirmReply:
        raise FederationError(f"site {site.name}: confirm is a secure-mode message; this "
                              f"site runs the plaintext protocol")

    def committed_view(self) -> dict:
        return {}

    def unmask(self, site: Site, req: UnmaskRequest
               ) -> tuple[UnmaskReply, Callable[[], None]]:
        raise FederationError(f"site {site.name}: unmask is a secure-mode message; this "
                              f"site runs the plaintext protocol")

    def unconfirmed(self, received: Arrays) -> list[str]:
        return []  # plaintext sharing is the site's choice (allow-collect) or a test bed

    def held_out(self, site: Site, req: HeldOutRequest, share: bool,
                 begin: Callable[[], None], load: Callable[[], object]) -> HeldOutReply:
        if req.step or req.rows or req.peer_rows:
            raise FederationError(f"site {site.name}: heldout step {req.step} with rows "
                                  f"is a secure-mode message")
        return answer_held_out(site, share, req.weights, load)

    def test_input(self, site: Site, blobs: Mapping[str, bytes], log
                   ) -> tuple[bytes | None, Callable[[], None]]:
        return blobs.get(SERVER, b""), lambda: None

    def prove(self, run: str, challenge: str) -> str:
        return ""
