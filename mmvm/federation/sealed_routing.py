"""Secure mode on the server: route sealed bytes, average masked weights.

The server aligns keyed pseudonyms, never ids; it moves each site's envelopes
``{recipient: blob}`` to their recipients as ``{sender: blob}`` without opening them,
and recovers only the sample-weighted mean of each shared modality's weights from
the sites' masked updates (:func:`mmvm.secure.masking.aggregate_masked`), which it
sends back with the averaged sketch rows each holder checks it by (it routes their
keys sealed: :mod:`mmvm.federation.sealed_sketch`). What it still sees: pseudonyms
and their overlap, counts, who sends how many bytes to whom, per-window training
metrics (sums), the averaged shared weights (and projections of them under keys it
does not hold), the evaluation metrics, and the final model if ``collect-model`` is
on (``deploy/README.md``).
"""

from __future__ import annotations

from collections.abc import Mapping

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.envelope_checks import (
    check_headers,
    check_ring_set,
    check_sizes,
    check_tags,
    route,
)
from mmvm.federation.masked_mean import check_masked, masked_mean
from mmvm.federation.messages import (
    KIND_POSTERIOR,
    KIND_SHARE,
    KIND_SKETCH,
    KIND_VIEW,
    AlignRequest,
    Arrays,
    AttachReply,
    ConfirmRequest,
    DescribeReply,
    UnmaskRequest,
    WindowRequest,
    unmask_view,
)
from mmvm.federation.routing import site_infos
from mmvm.federation.sealed_align import KIND_IDKEY
from mmvm.federation.sealed_sketch import KEY_COUNTER, KEY_ROUND
from mmvm.federation.sealed_weights import SHARE_COUNTER, VIEW_COUNTER
from mmvm.federation.unmask_answers import Asked, read_answer
from mmvm.secure.identity import parse_record, pinned, proof_problem
from mmvm.secure.psi import origin
from mmvm.secure.unmasking import full_view_confirmed, survivors_needed


class SealedRouting:
    """Private alignment, envelopes routed unopened, masked FedAvg."""

    peers = True

    def __init__(self, align: str = "pseudonym", latent_dim: int = 0) -> None:
        self.align_mode, self.latent_dim = align, latent_dim  # 0: sizes unchecked
        self.inbox: dict[str, dict[str, bytes]] = {}
        self.failed: dict[str, str] = {}  # the last unmask round's failed sites
        self.unaveraged: dict[str, str] = {}  # the last aggregate's, why (no one named)
        self.identities: dict[str, str] = {}  # site name -> its public key record
        self.keys: dict[str, dict[str, bytes]] = {}  # sketch keys: recipient key -> sender
        # resume: window -> modality -> (survivors, dropped) the sites committed to
        self.committed: dict[int, dict[str, tuple[list[str], list[str]]]] = {}

    def align(self, transport, described: Mapping[str, DescribeReply]) -> list[SiteInfo]:
        names = {key: d.site for key, d in described.items()}
        if len(set(names.values())) != len(names):
            raise FederationError(f"two sites report the same name: {sorted(names.values())}")
        leaked = [d.site for d in described.values() if d.identifiers]
        if leaked:
            raise FederationError(f"sites {leaked} sent sample ids in secure mode")
        for d in described.values():  # pinned: at a resume it signs with this key
            try:
                parse_record(d.identity, d.site)
            except ValueError as err:
                raise FederationError(str(err)) from None
        self.identities = {d.site: d.identity for d in described.values()}
        counts = {d.site: d.n for d in described.values()}  # sites check peers' sets
        if self.align_mode == "psi":
            return site_infos(described, self._psi(transport, names, counts))
        for d in described.values():  # a bad envelope is its sender's, not the recipient's
            check_headers(d.site, d.sealed, KIND_IDKEY)
        inbox = route({k: d.sealed for k, d in described.items()}, names)
        aligned = transport.exchange({key: AlignRequest(sealed=inbox[key], counts=counts)
                                      for key in described})
        return site_infos(described, {k: r.identifiers for k, r in aligned.items()})

    @staticmethod
    def _psi(transport, names: Mapping[str, str], counts: Mapping[str, int]
             ) -> dict[str, list[str]]:
        """Run the ring: step 0 blinds, each later step multiplies the predecessor's
        set; the last step's replies carry every site's tags (in its own order), each
        checked against the count of the site whose set it is and blamed on the site
        that finished it, which sent it."""
        ring, key_of = sorted(names.values()), {n: k for k, n in names.items()}
        replies = transport.exchange({k: AlignRequest(step=0, ring=ring, counts=counts)
                                      for k in names})
        for step in range(1, len(ring)):
            for k, r in replies.items():  # one set, to the ring's next site
                check_ring_set(names[k], r.sealed, ring, step - 1, counts)
            inbox = route({k: r.sealed for k, r in replies.items()}, names)
            replies = transport.exchange({k: AlignRequest(step=step, ring=ring, counts=counts,
                                                          sealed=inbox[k]) for k in names})
        tags: dict[str, list[str]] = {}
        for key, r in replies.items():  # each finishes one set: its origin's, named by
            finished = origin(ring, names[key], len(ring) - 1)  # the ring, not the site
            if r.origin != finished:
                raise FederationError(
                    f"site {names[key]} sent PSI tags for {r.origin[:64]!r}; at the last "
                    f"ring step it finishes {finished!r}'s set, and only it")
            check_tags(names[key], finished, r.tags, counts[finished])
            tags[key_of[finished]] = list(r.tags)
        missing = [names[k] for k in names if k not in tags]
        if missing:
            raise FederationError(f"PSI alignment: no tags for sites {missing}")
        return tags

    def screen(self, coord: Coordinator, replies: Mapping, index: int) -> dict[str, str]:
        """Envelopes and shares must go to other participants, masked weights only of
        modalities the site shares, shaped as their model (:func:`_check_masked`: what
        can be checked of one site; its values only the unmasked mean shows)."""
        names = {key: site.name for key, site in coord.sites.items()}
        refused = {}
        for key, r in replies.items():
            try:
                route({key: r.posteriors}, names)
                route({key: r.shares}, names)
                # (window ``index``'s reply: posteriors for the next, shares for this)
                check_headers(names[key], r.posteriors, KIND_POSTERIOR, (index + 2, 0))
                self._check_sizes(coord, key, r.posteriors)
                check_headers(names[key], r.shares, KIND_SHARE, (index + 1, SHARE_COUNTER))
                for m, arrays in r.weights.items():
                    check_masked(coord, key, m, arrays)
                    unshared = [names[h] for h in coord.shared[m]
                                if h != key and names[h] not in r.shares]
                    if unshared:  # they could not unmask it: they would be blamed
                        raise FederationError(
                            f"site {names[key]} sent masked weights of {m!r} without a "
                            f"self-mask share for its co-holders {unshared}")
            except FederationError as err:
                refused[key] = str(err)
        return refused

    def receive(self, coord: Coordinator, replies: Mapping) -> dict[str, str]:
        """The envelopes for the next window; at attach also the sketch keys, which
        go with every window's request (:mod:`mmvm.federation.sealed_sketch`)."""
        names = {key: site.name for key, site in coord.sites.items()}
        attach = {k: r.keys for k, r in replies.items() if isinstance(r, AttachReply)}
        for key in attach:  # (a window's replies were screened)
            self._check_sizes(coord, key, replies[key].posteriors)
        self.inbox = route({k: r.posteriors for k, r in replies.items()}, names)
        for key, blobs in attach.items():
            check_headers(names[key], blobs, KIND_SKETCH, (KEY_ROUND, KEY_COUNTER))
        if attach:
            self.keys = route(attach, names)
        return {}

    def _check_sizes(self, coord: Coordinator, key: str, blobs: Mapping[str, bytes]
                     ) -> None:
        if self.latent_dim:
            site = coord.sites[key]
            check_sizes(site.name, blobs, len(site.held), len(site.modalities),
                        self.latent_dim)

    def requests(self, coord: Coordinator, index: int, averaged: Arrays
                 ) -> dict[str, WindowRequest]:
        return {key: WindowRequest(window=index, posteriors=self.inbox.get(key, {}),
                                   weights=coord.weights_for(key, averaged),
                                   keys=self.keys.get(key, {}))
                for key in coord.sites}

    def missed(self, key: str) -> None:
        """Nothing kept per site: the next window carries only this window's envelopes."""

    def state(self) -> dict:
        return {"inbox": {k: dict(v) for k, v in self.inbox.items()},
                "identities": dict(self.identities),
                "keys": {k: dict(v) for k, v in self.keys.items()}}

    def load(self, state: dict) -> None:
        self.inbox = {k: dict(v) for k, v in state["inbox"].items()}
        self.identities = pinned(state.get("identities", {}))
        self.keys = {k: dict(v) for k, v in state.get("keys", {}).items()}

    def resumed(self, replies: Mapping) -> None:
        """The unmask views the sites committed to (``ResumeReply.view``): a server
        that restarted between a window's confirm and its checkpoint asks for that
        window again, and a site that had dropped may answer it now; the survivors
        answer under no other view (a site commits to one per window), so the view
        they agree on is kept for that window. Views the sites do not agree on are
        not kept (the window's unmask then fails, as a lying server's would)."""
        seen: dict[tuple[int, str], set] = {}
        for r in replies.values():
            try:
                w = int(r.view["window"])
                groups = unmask_view(r.view["groups"])
            except (KeyError, TypeError, ValueError):
                continue  # none (never committed), or not a view
            for m, v in groups.items():
                seen.setdefault((w, m), set()).add((tuple(v["survivors"]),
                                                    tuple(v["dropped"])))
        self.committed = {}
        for (w, m), views in seen.items():
            if len(views) == 1:
                (u, d), = views
                self.committed.setdefault(w, {})[m] = (list(u), list(d))

    @staticmethod
    def authenticate(state: dict, run: str, challenges: Mapping[str, str],
                     replies: Mapping, asker: str) -> dict[str, str]:
        """Each answer signed, over the server's challenge to that node, with the key
        its site described itself with when the run began."""
        records = pinned(state.get("identities", {}))
        bad = {}
        for key, r in replies.items():
            if r.site not in records:
                bad[key] = (f"the saved state has no public key record of {r.site} "
                            f"(written before resume answers were signed)")
            elif why := proof_problem(records[r.site], run, r.site,
                                      challenges.get(key, ""), r.proof, asker=asker):
                bad[key] = why
        return bad

    def aggregate(self, transport, coord: Coordinator, index: int, replies: Mapping
                  ) -> Arrays:
        """Each shared modality's sample-weighted mean from masked updates: one unmask
        round (survivors reveal self-mask shares and pair seeds with dropped sites),
        then the sum is unmasked and its total weight checked against the counts.
        When a holder dropped (in groups of 8 or more: always), a confirm round comes
        first (:meth:`_confirm`).

        A modality is not averaged this window (its holders go on from its last
        mean, as after a FedAvg round that failed: the next request brings it again)
        when fewer holders survived than the masking can unmask without exposing
        anyone (:func:`~mmvm.secure.unmasking.survivors_needed`), or when a survivor
        does not answer the confirm or unmask round or fails it (those are in
        :attr:`failed`, with why), or when the unmasked mean fails its checks (a
        corrupt masked update or share, whose sender the masks hide: in
        :attr:`unaveraged`; the run goes on)."""
        self.failed, self.unaveraged = {}, {}
        if not coord.shared:
            return {}
        names = {key: site.name for key, site in coord.sites.items()}
        views = {m: v for m in coord.shared
                 if (v := self._view(coord, m, replies))[0]
                 and len(v[0]) >= survivors_needed(len(coord.shared[m]))}
        views = self._keep_committed(views, coord, index, replies)
        if not views:
            return {}
        inbox = route({k: r.shares for k, r in replies.items()}, names)

        def groups(k: str) -> dict:  # the view site k is sent: of its groups
            return {m: {"survivors": sorted(names[s] for s in u),
                        "dropped": sorted(names[d] for d in dd)}
                    for m, (u, dd) in views.items() if k in u}

        confirming = {m for m, (u, dd) in views.items()
                      if dd or full_view_confirmed(len(coord.shared[m]))}
        confirmed, failed = self._confirm(transport, index, views, confirming, groups,
                                          names)
        views = {m: v for m, v in views.items()
                 if not (m in confirming and set(v[0]) & set(failed))}
        if not views:
            self.failed = failed
            return {}
        asked = sorted({k for v in views.values() for k in v[0]})
        answers, unmask_failed = transport.gather({k: UnmaskRequest(
            window=index, shares=inbox[k], groups=groups(k),
            confirmations=confirmed.get(k, {})) for k in asked})
        failed.update(unmask_failed)
        read = {}
        for k, answer in answers.items():  # each on its own: a bad one is its sender's
            asked = {m: Asked([names[h] for h in coord.shared[m]], [names[s] for s in u],
                              [names[d] for d in dd])
                     for m, (u, dd) in views.items() if k in u}
            try:
                read[k] = read_answer(answer, names[k], asked)
            except ValueError as err:  # left out, named, as one that failed the step
                failed[k] = str(err)
        self.failed, means = failed, {}
        for m, (u, _) in views.items():
            if all(k in read for k in u):
                try:
                    means[m] = masked_mean(coord, m, u, replies, read, index)
                except FederationError as err:
                    self.unaveraged[m] = str(err)
        return means

    def _keep_committed(self, views: dict, coord: Coordinator, index: int,
                        replies: Mapping) -> dict:
        """Window ``index``'s views, with those the sites committed to before a
        restart (:meth:`resumed`) in place of the server's new count; a committed
        view whose survivors did not all answer now cannot be unmasked."""
        kept = self.committed.pop(index, {})
        key_of = {site.name: key for key, site in coord.sites.items()}
        out = dict(views)
        for m, (u, d) in kept.items():
            if m not in coord.shared:
                continue
            survivors = [key_of.get(n) for n in u]
            out.pop(m, None)
            if all(k in replies and m in replies[k].weights for k in survivors):
                out[m] = (survivors, [key_of[n] for n in d if n in key_of])
        return out

    @staticmethod
    def _confirm(transport, index: int, views: Mapping, confirming: set, groups,
                 names: Mapping[str, str]
                 ) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
        """Where a view has dropped holders (in groups of 8 and more, every view:
        :func:`~mmvm.secure.unmasking.full_view_confirmed`), its survivors commit to
        it and seal it to each other (``unmasking``'s rules alone let a server that
        tells each holder another story unmask two holders' sum:
        :func:`.sealed_weights.confirm`): ``({recipient key: {sender name: blob}},
        {failed key: why})``. A survivor that fails, or does not seal its view to
        every co-survivor, fails the step."""
        asked = sorted({k for m in confirming for k in views[m][0]})
        if not asked:
            return {}, {}
        replies, failed = transport.gather({k: ConfirmRequest(window=index,
                                                              groups=groups(k))
                                            for k in asked})
        for k, r in list(replies.items()):
            owed = sorted({s for v in groups(k).values() for s in v["survivors"]}
                          - {names[k]})
            try:
                if sorted(r.sealed) != owed:
                    raise FederationError(f"site {names[k]} sealed its view to "
                                          f"{sorted(r.sealed)[:8]}, not to its "
                                          f"co-survivors {owed}")
                check_headers(names[k], r.sealed, KIND_VIEW, (index + 1, VIEW_COUNTER))
            except FederationError as err:
                failed[k] = str(err)
                del replies[k]
        return route({k: r.sealed for k, r in replies.items()}, names), failed

    @staticmethod
    def _view(coord: Coordinator, m: str, replies: Mapping) -> tuple[list, list]:
        survivors = [k for k in coord.shared[m] if k in replies and m in replies[k].weights]
        dropped = [k for k in coord.shared[m] if k not in survivors]
        return survivors, dropped
