"""The unmask step of double masking: what a survivor reveals, and the server's side.

Per (round, group) of ``n`` holders, each holder ``i`` draws a self-mask seed
``b_i`` (16 bytes), masks its update with it (:func:`mmvm.secure.masking.mask_update`)
and gives each other holder one Shamir share of ``b_i`` (threshold
:func:`threshold`; pycryptodome's GF(2^128) Shamir). When the updates are in, the
server names the survivors ``U`` and the dropped ``D`` and each survivor answers
(:func:`reveal`):

- for each other survivor ``s``: its share of ``b_s``;
- for each dropped ``d``: this round's pair seed ``s_id``;

never both for one site, never its own share, once per round and group (the site's
protocol state), and only when ``|U| >= max(n - t + 1, t + 1, ceil((n + t) / 2))``
in its view (:func:`survivors_needed`). The server then rebuilds each ``b_s`` from ``t`` shares
(:func:`combine_seed`) and removes the self-masks and the dropped sites' pair masks.
Why the rules stop a server that lies about who dropped: see
:mod:`mmvm.secure.masking`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from Crypto.Protocol.SecretSharing import Shamir

from mmvm.secure.errors import MaskingError
from mmvm.secure.keys import SiteKeys, SitePublicKeys
from mmvm.secure.masking import round_seed

SEED_BYTES = 16


def threshold(n_holders: int) -> int:
    """Shares needed to rebuild a self-mask seed in a group of ``n_holders``."""
    if n_holders < 2:
        raise MaskingError(f"a masking group needs >= 2 sites, got {n_holders}")
    return math.ceil(n_holders / 2)


def survivors_needed(n_holders: int) -> int:
    """Survivors a group of ``n_holders`` must keep for anything to be revealed.
    ``n - t + 1``: then the ``t`` peers that hold shares of a site's seed cannot all
    have revealed their pair seeds with it; ``t + 1``: each survivor's seed is
    rebuilt from ``t`` shares of the *other* survivors (a sum over two sites is a
    pair's); ``(n + t) / 2``: any two survivor sets then share ``t`` holders, so
    with ``t - 1`` colluding one of them is honest, and commits to one view per
    window. Without it, in a group of 6, colluders C1, C2 that sealed {A, B, C1, C2}
    to A and B and {H1, H2, C1, C2} to H1 and H2 (each told the other pair dropped)
    had every honest holder confirmed and unmasked A + B and H1 + H2 apart (found by
    the review of 2026-12-05). Groups of 3 cannot lose a site; 4, 5 and 6 can lose
    one, 7 one, 8 two."""
    t = threshold(n_holders)
    return max(n_holders - t + 1, t + 1, math.ceil((n_holders + t) / 2))


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def share_seed(seed: bytes, holders: Sequence[str], me: str) -> dict[str, bytes]:
    """One share of ``seed`` per other holder: ``{peer: index byte || 16 bytes}``."""
    peers = sorted(set(holders) - {me})
    if len(seed) != SEED_BYTES or me not in holders or not peers:
        raise MaskingError(f"cannot share a self-mask seed in group {sorted(holders)}")
    shares = Shamir.split(threshold(len(holders)), len(peers), seed)
    return {p: bytes([idx]) + share for p, (idx, share) in zip(peers, shares, strict=True)}


def share_index(holders: Sequence[str], owner: str, holder: str) -> int:
    """The Shamir index of the share of ``owner``'s seed that ``holder`` gets
    (:func:`share_seed`: the other holders in sorted order, from 1): fixed by the group,
    so the holder and the server can both check it."""
    return sorted(set(holders) - {owner}).index(holder) + 1


def check_share(share: bytes, holders: Sequence[str], owner: str, holder: str) -> str:
    """Why ``share`` is not a well-formed share of ``owner``'s seed for ``holder``
    (length, index byte), or ""."""
    want = share_index(holders, owner, holder)
    if len(share) != SEED_BYTES + 1:
        return f"{len(share)} bytes, not {SEED_BYTES + 1}"
    return "" if share[0] == want else f"index {share[0]}, not {want}"


def combine_seed(shares: Sequence[bytes], n_holders: int) -> bytes:
    """The seed from at least ``threshold(n_holders)`` distinct shares."""
    t = threshold(n_holders)
    parsed = {b[0]: b[1:] for b in shares if len(b) == SEED_BYTES + 1}
    if len(parsed) < t:
        raise MaskingError(f"{len(parsed)} valid shares of a self-mask seed; {t} needed")
    return Shamir.combine(sorted(parsed.items())[:t])


def full_view_confirmed(n_holders: int) -> bool:
    """Whether a view in which nobody dropped must be confirmed by every survivor,
    too (:func:`mmvm.federation.sealed_weights.confirm`). Where a view may call two
    or more holders dropped (groups of 8 and more), ``t - 1`` holders colluding with
    the server, and two honest holders A and B told that nobody dropped while the
    others are told that A and B did, hand the server ``t`` shares of every self-mask
    seed (A's and B's included: each reveals its share of the other's) and every
    pair seed between A, B and the others: A + B unmasked besides the others' sum
    (found by the attack review of 2026-12-05). Confirming every view closes it (A
    and B find the others sealed them another view), at one more round trip per
    window. In smaller groups a view drops at most one holder, whose seed only the
    other survivors' shares rebuild, so a full view is revealed under unconfirmed."""
    return n_holders - survivors_needed(n_holders) >= 2


def check_view(me: str, holders: Sequence[str], survivors: Sequence[str],
               dropped: Sequence[str]) -> None:
    """Refuse a survivor/dropped split that is not a partition of the holders with
    this site among the survivors and enough survivors to keep it masked."""
    u, d, h = set(survivors), set(dropped), set(holders)
    if u & d or u | d != h or me not in u:
        raise MaskingError(f"site {me}: survivors {sorted(u)} and dropped {sorted(d)} "
                           f"are not a split of the group {sorted(h)} with {me} a survivor")
    need = survivors_needed(len(h))
    if len(u) < need:
        raise MaskingError(f"site {me}: only {len(u)} survivors of {len(h)}; at least "
                           f"{need} must remain or the server could unmask a site or a "
                           f"pair")


def reveal(me: SiteKeys, peers: Mapping[str, SitePublicKeys], holders: Sequence[str],
           survivors: Sequence[str], dropped: Sequence[str],
           shares: Mapping[str, bytes], *, run_id: str | int, round: int, group: str
           ) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A survivor's answer: (shares of the other survivors' seeds, pair seeds with
    the dropped). ``shares[s]`` is the share ``s`` gave this site for this round."""
    check_view(me.site, holders, survivors, dropped)
    others = sorted(set(survivors) - {me.site})
    missing = [s for s in others if s not in shares]
    if missing:
        raise MaskingError(f"site {me.site}: no self-mask share from survivors {missing}")
    seeds = {d: round_seed(me, peers[d], run_id=run_id, round=round, group=group)
             for d in sorted(dropped)}
    return {s: shares[s] for s in others}, seeds
