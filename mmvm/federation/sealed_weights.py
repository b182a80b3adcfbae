"""Secure mode at a site: shared weights leave double-masked, and the unmask step.

For every modality the site shares (a FedAvg group of holders), each window:

1. the weights, and every holder's sketch rows of them
   (:mod:`mmvm.federation.sealed_sketch`), are masked with pairwise masks and a fresh
   self-mask (:func:`mmvm.secure.masking.mask_update`) under a group label that binds the
   holders, the number of aligned rows and the plan, and, per window, the digests
   of the experiment config and of the mean the server sent: sites told different
   groups, configs or means derive different masks, and the aggregate fails its
   weight check;
2. the self-mask seed is Shamir-shared; each peer's shares (of all shared
   modalities) travel sealed to it (kind ``selfshare``, round ``w + 1``, counter 1);
3. in the unmask step the site opens the shares addressed to it and reveals what
   :func:`mmvm.secure.unmasking.reveal` allows. When its view of a group has dropped
   holders (in groups of 8 and more: any view), it first commits to that view
   (:func:`confirm`) and reveals only once every other survivor has sealed it the
   same view.

Groups must have at least three holders; two only if the site's policy says
``allow-pair-masking`` (each then learns the other's weights from the mean).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping

import numpy as np

from mmvm.config import config_digest
from mmvm.federation.messages import (
    KIND_SHARE,
    KIND_VIEW,
    MASK_WEIGHT,
    SKETCH,
    ConfirmReply,
    ConfirmRequest,
    UnmaskReply,
    UnmaskRequest,
    unmask_view,
)
from mmvm.federation.policy import SitePolicy
from mmvm.federation.sealed_sketch import key_view, sketch_rows, weights_digest
from mmvm.federation.site import Site
from mmvm.federation.site_limits import check_groups
from mmvm.secure.envelope import open_envelope, seal
from mmvm.secure.errors import PeerContentError, SecurityError
from mmvm.secure.masking import mask_update
from mmvm.secure.session import SiteSecrets, b64, unb64
from mmvm.secure.unmasking import (
    check_share,
    check_view,
    full_view_confirmed,
    new_seed,
    reveal,
    share_seed,
)

SHARE_COUNTER = 1  # posteriors of the same round use counter 0
VIEW_COUNTER = 2  # and confirmed views counter 2


def group_labels(shared: Mapping[str, list[str]], n: int, plan: dict, run_id: str,
                 site: str, policy: SitePolicy) -> dict[str, dict]:
    """``{modality: {"holders": [...], "label": ...}}``, refusing groups that are
    too small for this site's policy (attach has checked them against its node
    config's ``holders``: :meth:`SitePolicy.check_sharing`)."""
    check_groups(site, policy, shared)
    out = {}
    for m, holders in sorted(shared.items()):
        holders = sorted(holders)
        text = json.dumps({"m": m, "holders": holders, "n": n, "plan": plan,
                           "run": run_id}, sort_keys=True)
        label = f"weights/{m}/{hashlib.sha256(text.encode()).hexdigest()[:32]}"
        out[m] = {"holders": holders, "label": label}
    return out


def mean_digest(received: Mapping[str, Mapping[str, np.ndarray]],
                known: Mapping[str, str] | None = None) -> str:
    """SHA-256 of a window's averaged weights, every modality's (``known``: the
    :func:`weights_digest` of modalities already hashed, not hashed again)."""
    known = known or {}
    text = json.dumps({m: known.get(m) or weights_digest(a)
                       for m, a in sorted(received.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def _window_group(label: str, digest: str) -> str:
    return f"{label}/{digest[:32]}"


def masked_weights(site: Site, sec: SiteSecrets, index: int,
                   received: Mapping[str, Mapping[str, np.ndarray]]
                   ) -> tuple[dict, dict[str, bytes]]:
    """(masked weights per shared modality, sealed self-mask shares per peer).

    ``received``: the averaged weights the server sent with this window. The masks
    are bound to their digest, to the group's sketch keys as this site holds them (a
    co-holder that sealed two holders different keys would read the difference of
    their projections from its own rows: their masks then differ) and to the
    experiment config the site trains with:
    were holders sent different "means" (e.g. weights on which all but one holder's
    training cannot move, so that the others send back what they got) or different
    configs (a learning rate of 1e-30, a loss weight of 0; also on a resumed run),
    their masks would not cancel and nothing could be unmasked."""
    groups = sec.state.get("groups", {})
    config = config_digest(site.cfg)
    digests = {m: hashlib.sha256(f"{config}/{weights_digest(received.get(m, {}))}/"
                                 f"{key_view(sec, m)}".encode()).hexdigest()
               for m in sorted(groups)}
    if digests:
        sec.save_received(index, digests)  # before anything masked under them leaves
    weights, shares, labels = {}, {}, {}
    for m, g in sorted(groups.items()):
        peers = {h: sec.peer(h) for h in g["holders"] if h != sec.site}
        arrays = site.shared_weights(m)
        rows = sketch_rows(sec, m, index, [arrays[n] for n in sorted(arrays)])
        arrays[SKETCH] = rows
        names = sorted(arrays)  # the order the server unmasks in
        seed = new_seed()
        masked = mask_update(sec.keys, peers, [arrays[n] for n in names],
                             run_id=sec.run_id, round=index, weight=float(len(site.data)),
                             group=_window_group(g["label"], digests[m]), self_seed=seed)
        weights[m] = dict(zip(names, masked[:-1], strict=True))
        weights[m][MASK_WEIGHT] = masked[-1]
        for peer, share in share_seed(seed, g["holders"], sec.site).items():
            shares.setdefault(peer, {})[m] = b64(share)
            labels.setdefault(peer, {})[m] = g["label"]  # the group as this site was told
    sealed = {peer: seal(sec.keys, sec.peer(peer),
                         json.dumps({"shares": s, "groups": labels[peer]}).encode(),
                         run_id=sec.run_id, round=index + 1, counter=SHARE_COUNTER,
                         kind=KIND_SHARE)
              for peer, s in sorted(shares.items())}
    return weights, sealed


def _peer_shares(me: str, sender: str, payload: bytes
                 ) -> tuple[dict[str, bytes], dict[str, str]]:
    """``({modality: share}, {modality: group label})`` from a peer's opened share
    envelope (the groups it was told it shares with this site); anything else is the
    sender's fault (:class:`PeerContentError`, naming it)."""
    try:
        doc = json.loads(payload)
        return ({str(m): unb64(v) for m, v in doc["shares"].items()},
                {str(m): str(v) for m, v in doc["groups"].items()})
    except (ValueError, TypeError, AttributeError, RecursionError, KeyError) as err:
        raise PeerContentError(f"site {me}: {sender} sent self-mask shares that do not "
                               f"decode ({type(err).__name__})") from None


def unmask(sec: SiteSecrets, req: UnmaskRequest
           ) -> tuple[UnmaskReply, object, set[str]]:
    """This site's unmask answer for window ``req.window``, the replay guard to keep
    once it is sent, and the modalities whose group another holder confirmed: its
    sealed share envelope names the same group label (see :func:`unconfirmed`)."""
    groups = sec.state.get("groups", {})
    stray = set(req.groups) - set(groups)
    if stray:
        raise SecurityError(f"site {sec.site}: unmask for modalities {sorted(stray)} "
                            f"it does not share")
    received = sec.received
    if req.groups and received.get("window") != req.window:
        raise SecurityError(f"site {sec.site}: unmask of window {req.window}, but the "
                            f"last window it masked is {received.get('window')}")
    guard = copy.deepcopy(sec.guard)
    opened: dict[str, dict] = {}
    told: dict[str, dict] = {}  # by sender: the group labels it was given
    for sender, blob in sorted(req.shares.items()):
        payload = open_envelope(sec.keys, sec.peer(sender), blob, run_id=sec.run_id,
                                guard=guard, expected_round=req.window + 1,
                                expected_counter=SHARE_COUNTER, kind=KIND_SHARE)
        opened[sender], told[sender] = _peer_shares(sec.site, sender, payload)
    agreed = _agreed_views(sec, req, guard)
    for m, view in sorted(req.groups.items()):
        check_view(sec.site, groups[m]["holders"], list(view["survivors"]),
                   list(view["dropped"]))
        _check_agreed(sec.site, m, view, agreed, len(groups[m]["holders"]))
    commit_view(sec, req.window, req.groups, "unmask")  # before anything is revealed
    shares_out, seeds_out, confirmed = {}, {}, set()
    for m, view in sorted(req.groups.items()):
        g = groups[m]
        got = {s: v[m] for s, v in opened.items() if m in v}
        for s in sorted(set(view["survivors"]) & set(opened) - {sec.site}):
            if told[s].get(m) != g["label"]:  # the server's doing, not the peer's
                raise SecurityError(f"site {sec.site}: {s} and this site were told "
                                    f"different groups of {m!r} by the server")
            if s not in got:  # (the envelope's presence the server checks; its contents
                raise PeerContentError(  # only we)
                    f"site {sec.site}: {s} sealed it no share of its self-mask seed for "
                    f"{m!r}")
        for owner, share in got.items():  # the owner's fault, named now: the server
            why = check_share(share, g["holders"], owner, sec.site)  # would blame us
            if owner in g["holders"] and why:
                raise PeerContentError(f"site {sec.site}: {owner} sent a malformed share "
                                       f"of its self-mask seed for {m!r} ({why})")
        peers = {h: sec.peer(h) for h in g["holders"] if h != sec.site}
        shares, seeds = reveal(sec.keys, peers, g["holders"], list(view["survivors"]),
                               list(view["dropped"]), got, run_id=sec.run_id,
                               round=req.window,
                               group=_window_group(g["label"], received["digests"][m]))
        shares_out[m] = {s: b64(v) for s, v in shares.items()}
        seeds_out[m] = {d: b64(v) for d, v in seeds.items()}
        if any(told[s].get(m) == g["label"] for s in set(opened) - {sec.site}):
            confirmed.add(m)
    return UnmaskReply(shares=shares_out, seeds=seeds_out), guard, confirmed


def confirm(sec: SiteSecrets, req: ConfirmRequest) -> ConfirmReply:
    """Commit to the unmask view of window ``req.window`` and seal it to each
    co-survivor. Why: a server that tells holders different stories of who dropped
    gets each one's answer under its own view; in a group of 4 the views {A,B,C} /
    {A,B,D} / {B,C,D} / {A,C,D} each pass :func:`check_view`, and the shares and
    pair seeds they reveal together unmask A + B alone (found by the attack review;
    ``tests/federation/test_unmask_views.py``). A site reveals pair seeds only when
    every other survivor sealed it the same view (:func:`unmask`), and commits to one
    view per window, saved before its confirmation leaves (Bonawitz et al. 2017, §4:
    consistency check). So two views with dropped holders that both get revealed
    would need disjoint survivor sets, each more than half of the group; and beside
    one such view V only sites V calls dropped can answer under the view that
    nobody dropped: fewer than ``t`` of them, too few for any dropped site's seed.
    With ``t - 1`` holders colluding, that is enough where V drops two or more; so
    there every view is confirmed, the full one too
    (:func:`~mmvm.secure.unmasking.full_view_confirmed`)."""
    groups = sec.state.get("groups", {})
    stray = set(req.groups) - set(groups)
    if stray:
        raise SecurityError(f"site {sec.site}: confirm for modalities {sorted(stray)} "
                            f"it does not share")
    if sec.received.get("window") != req.window:
        raise SecurityError(f"site {sec.site}: confirm of window {req.window}, but the "
                            f"last window it masked is {sec.received.get('window')}")
    for m, view in req.groups.items():
        check_view(sec.site, groups[m]["holders"], list(view["survivors"]),
                   list(view["dropped"]))
    commit_view(sec, req.window, req.groups, "confirm")  # before any confirmation leaves
    peers = sorted({s for v in req.groups.values() for s in v["survivors"]} - {sec.site})
    return ConfirmReply(sealed={p: seal(
        sec.keys, sec.peer(p), json.dumps({m: v for m, v in req.groups.items()
                                           if p in v["survivors"]}, sort_keys=True).encode(),
        run_id=sec.run_id, round=req.window + 1, counter=VIEW_COUNTER, kind=KIND_VIEW)
        for p in peers})


def commit_view(sec: SiteSecrets, window: int, groups: Mapping[str, dict],
                what: str) -> None:
    """Keep this site's view of each modality of ``window`` (saved), refusing one
    that differs from the view it was given before in that window (at a confirm or
    an unmask): one view per window and modality."""
    kept = sec.state.get("view", {})
    views = dict(kept.get("groups", {})) if kept.get("window") == window else {}
    changed = sorted(m for m in groups if m in views and views[m] != groups[m])
    if changed:
        raise SecurityError(f"site {sec.site}: {what} of window {window} with another "
                            f"view of {changed} than it was given before in that window; "
                            f"a site answers under one view per window")
    if any(m not in views for m in groups):
        sec.state["view"] = {"window": window, "groups": {**views, **groups}}
        sec.save_state()


def _agreed_views(sec: SiteSecrets, req: UnmaskRequest, guard) -> dict[str, dict]:
    """``{sender: {modality: view}}`` from the sealed confirmations of ``req`` (only
    the sender could have sealed them); a malformed one is the sender's fault."""
    out = {}
    for sender, blob in sorted(req.confirmations.items()):
        payload = open_envelope(sec.keys, sec.peer(sender), blob, run_id=sec.run_id,
                                guard=guard, expected_round=req.window + 1,
                                expected_counter=VIEW_COUNTER, kind=KIND_VIEW)
        try:
            out[sender] = {str(m): unmask_view({m: v})[m]
                           for m, v in json.loads(payload).items()}
        except (ValueError, TypeError, AttributeError, RecursionError) as err:
            raise PeerContentError(f"site {sec.site}: {sender} sealed a view that does "
                                   f"not decode ({type(err).__name__})") from None
    return out


def _check_agreed(me: str, m: str, view: Mapping, agreed: Mapping[str, dict],
                  n_holders: int) -> None:
    """A view with dropped holders (in groups of 8 and more, any view:
    :func:`~mmvm.secure.unmasking.full_view_confirmed`) is revealed under only if
    every other survivor sealed this site the same view (:func:`confirm`)."""
    if not view["dropped"] and not full_view_confirmed(n_holders):
        return
    for s in sorted(set(view["survivors"]) - {me}):
        if s not in agreed:
            raise SecurityError(f"site {me}: unmask of {m!r} with {view['dropped']} "
                                f"dropped, but survivor {s} did not confirm that view")
        if agreed[s].get(m) != view:
            raise SecurityError(f"site {me}: survivor {s} was told another view of "
                                f"{m!r} than this site: the server's doing")


def unconfirmed(sec: SiteSecrets, received: Mapping) -> list[str]:
    """The modalities of ``received`` (a mean the server sent) whose group no other
    holder has confirmed yet. Only the server says a modality is shared, and with
    whom: told that one only this site holds is "shared" with two sites that never
    hear of it, a site would load whatever "mean" the server sends, and the server
    would own that modality's encoder and decoder (and the site's final model). A
    real co-holder seals this site a share of its self-mask seed every window, naming
    the group label it was told (holders, rows, plan, run); the server cannot forge
    that envelope. Until one such envelope has been opened at an unmask, the site
    keeps its own weights (a holder that rejoins before its first unmask does so for
    a window or two). A server colluding with a peer site is beyond this check."""
    done = set(sec.state.get("confirmed", []))
    return sorted(m for m in received if m not in done)

