"""Secure aggregation of shared weights by pairwise masking (Bonawitz et al. 2017, §4).

Sites that hold the same modality share its encoder/decoder weights; the server
must learn their weighted mean and nothing about any one site's weights.

Fixed point. Every value is clipped to ``[-clip, clip]`` and encoded as the
integer ``round(weight * x * 2^frac_bits)`` modulo ``2^64`` (two's complement in
``uint64``, so numpy's wrap-around addition *is* the group operation). The site's
``weight`` (its sample count) travels as one more masked element, so the server
learns only the total weight, not each site's. Defaults ``frac_bits=24``,
``clip=4096``: resolution 2^-24 ≈ 6e-8 (below float32's epsilon at 1), and the
decoded mean is within ``n_sites * 2^-25 / W`` (``W`` the total weight) of the
float64 mean (exactly so while ``|weight * x| < 2^29``, where float64 still holds
``weight * x * 2^24`` exactly; beyond, add float64's 1e-16 relative error). No
overflow as long as ``sum_i weight_i * clip * 2^24 < 2^63``, i.e. a total
weight below 2^27 ≈ 1.3e8 samples; each site checks ``weight < 2^27 / n_sites``.

Masks. For each pair ``i < j`` (site names in sorted order) in the aggregation
group, both derive the same per-round seed::

    s_ij(r) = HKDF-Expand(masking_seed(i, j, run), "mask" || group || r)
    m_ij    = ChaCha20(key = s_ij(r)) keystream, read as uint64     # a CSPRNG

and site ``i`` sends ``y_i = enc(x_i) + sum_{j>i} m_ij - sum_{j<i} m_ji``. The
masks cancel in ``sum_i y_i``. A single ``y_i`` is a one-time-pad-like
encryption of ``enc(x_i)`` under a key the server does not hold (it would need
one of ``i``'s pair seeds), hence uniform on Z_{2^64}. ``group`` must name the
aggregation (e.g. the modality): two groups masked with the same seed would let
the server subtract them.

Self-masks (double masking, Bonawitz et al. 2017 §4; Flower's SecAgg+). Each site
also adds a mask ``b_i`` from a fresh 16-byte seed per (round, group) and gives every
other holder a Shamir share of that seed (threshold ``t = ceil(n / 2)``,
:mod:`mmvm.secure.unmasking`). After the masked updates arrive, each survivor reveals
the shares of the *other survivors'* seeds and this round's pair seeds with the
*dropped* sites, never both for one site and never its own share; the server removes
``sum b_i`` and the dropped sites' pair masks. A server that claims that a site
dropped although its update arrived gets pair seeds but no share of that site's
``b_i``. One that tells sites different stories is stopped by two rules: a site
unmasks only if at least ``max(n - t + 1, t + 1, ceil((n + t) / 2))`` holders are
survivors in its view (then the ``t`` peers needed for its own ``b_i`` cannot all
have revealed their pair seeds with it, and any two views share ``t`` survivors, one
of them honest with up to ``t - 1`` colluding), and when its view has dropped sites
(in groups of 8 and more: always) it first commits to that view and reveals only
once every other survivor sealed it the same view (Bonawitz et al.'s consistency
check; without it, four views of three survivors each unmask the sum of two holders:
:func:`mmvm.federation.sealed_weights.confirm`). Dropout tolerance: none for 2 or 3
holders, one for 4 to 7, two for 8 to 10 (:func:`~mmvm.secure.unmasking.survivors_needed`).
Which sites form the group only the server says: a site protects itself against a
group of itself and colluders only with its node config's ``holders``.
Against a server colluding with sites, pairwise masks protect a site only as long as
enough of its peers are honest; a group of two sites reveals each one's weights to
the other (they can subtract their own from the mean).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from mmvm.secure.errors import MaskingError
from mmvm.secure.keys import SiteKeys, SitePublicKeys, masking_seed, subkey

_MOD_BITS = 64


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point codec: ``q = round(v * 2^frac_bits) mod 2^64``."""

    frac_bits: int = 24
    clip: float = 4096.0

    @property
    def scale(self) -> float:
        return float(2**self.frac_bits)

    def max_weight(self, n_sites: int) -> float:
        """Largest per-site weight for which ``n_sites`` sums cannot overflow."""
        return 2.0 ** (_MOD_BITS - 1) / (n_sites * self.clip * self.scale)

    def encode(self, values: np.ndarray, weight: float = 1.0) -> np.ndarray:
        """``round(weight * values * 2^frac_bits)`` as two's-complement uint64.

        Non-finite values and values beyond ``clip`` are refused (clipping would make
        the mean silently wrong; a NaN would encode as INT64_MIN)."""
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise MaskingError("refusing to mask NaN or inf values")
        if v.size and np.abs(v).max() > self.clip:
            raise MaskingError(f"refusing to mask |values| up to {np.abs(v).max():.3g}, "
                               f"beyond the fixed-point range {self.clip:g}")
        return np.rint(v * (weight * self.scale)).astype(np.int64).view(np.uint64)

    def decode(self, q: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`encode` with ``weight=1`` (float64)."""
        signed = np.asarray(q, dtype=np.uint64).view(np.int64)
        return signed.astype(np.float64) / self.scale


def _expand(seed: bytes, n: int) -> np.ndarray:
    """``n`` uint64 from the ChaCha20 keystream keyed by ``seed`` (32 bytes)."""
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(8 * n)), dtype="<u8").astype(np.uint64)


def self_mask(seed: bytes, n: int) -> np.ndarray:
    """The self-mask ``b_i`` of ``n`` uint64 from a site's 16-byte round seed."""
    return _expand(hashlib.sha256(b"mmvm/self-mask/v1" + seed).digest(), n)


def round_seed(
    me: SiteKeys, peer: SitePublicKeys, *, run_id: str | int, round: int, group: str
) -> bytes:
    """Per-round pair seed ``s_ij(r)`` for ``group``; the same on both sides."""
    return subkey(masking_seed(me, peer, run_id), "mask", group, int(round))


def _pair_sign(me: str, peer: str) -> int:
    return 1 if me < peer else -1


def _split(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(flat[pos : pos + n].reshape(s))
        pos += n
    out.append(flat[pos : pos + 1])
    return out


def mask_update(
    me: SiteKeys,
    peers: Mapping[str, SitePublicKeys],
    arrays: Sequence[np.ndarray],
    *,
    run_id: str | int,
    round: int,
    weight: float,
    group: str,
    self_seed: bytes | None = None,
    codec: FixedPoint = FixedPoint(),
) -> list[np.ndarray]:
    """Encode and mask this site's contribution to a weighted mean.

    Parameters
    ----------
    me
        This site's keys.
    peers
        Directory entries of the *other* sites of the aggregation group
        (``me`` may appear; it is skipped).
    arrays
        The float tensors to average (e.g. one modality's encoder weights).
    run_id, round, group
        Make the masks unique: never reuse a (run, round, group).
    weight
        This site's weight in the mean (its sample count), >= 0.
    self_seed
        16 random bytes, fresh for this (round, group): adds the self-mask whose
        Shamir shares go to the other holders (``mmvm.secure.unmasking``).
    codec
        Fixed-point parameters; all sites must use the same.

    Returns
    -------
    list of numpy.ndarray (uint64)
        One masked array per input array, same shapes, then a last ``(1,)``
        array holding the masked weight. Send all of them to the server.
    """
    others = {name: p for name, p in peers.items() if name != me.site}
    n_sites = len(others) + 1
    if not 0 <= weight < codec.max_weight(n_sites):
        raise MaskingError(
            f"weight {weight} outside [0, {codec.max_weight(n_sites):.3g}] for "
            f"{n_sites} sites: the fixed-point sum could overflow 2^63"
        )
    shapes = [np.shape(a) for a in arrays]
    flat = np.concatenate(
        [codec.encode(np.ravel(a), weight) for a in arrays]
        + [codec.encode(np.array([1.0]), weight)]
    )
    for name, peer in sorted(others.items()):
        if peer.site != name:
            raise MaskingError(f"directory entry {name!r} holds keys of {peer.site!r}")
        seed = round_seed(me, peer, run_id=run_id, round=round, group=group)
        mask = _expand(seed, flat.size)
        flat = flat + mask if _pair_sign(me.site, name) > 0 else flat - mask
    if self_seed is not None:
        flat = flat + self_mask(self_seed, flat.size)
    return _split(flat, shapes)


def unmask_dropout(
    total: Sequence[np.ndarray], revealed: Mapping[str, Mapping[str, bytes]]
) -> list[np.ndarray]:
    """Remove the masks that survivors shared with dropped sites.

    Parameters
    ----------
    total
        The modular sum of the survivors' masked updates (``mask_update`` layout).
    revealed
        ``revealed[survivor][dropped] = seed``, the pair seeds a survivor reveals
        (:func:`mmvm.secure.unmasking.reveal`).
    """
    shapes = [np.shape(a) for a in total[:-1]]
    flat = np.concatenate([np.ravel(np.asarray(a, dtype=np.uint64)) for a in total])
    for survivor, seeds in revealed.items():
        for dropped, seed in seeds.items():
            mask = _expand(seed, flat.size)
            # survivor added +mask if survivor < dropped, so subtract it; else add
            flat = flat - mask if _pair_sign(survivor, dropped) > 0 else flat + mask
    return _split(flat, shapes)


def aggregate_masked(
    masked: Mapping[str, Sequence[np.ndarray]],
    *,
    participants: Sequence[str] | None = None,
    revealed: Mapping[str, Mapping[str, bytes]] | None = None,
    self_seeds: Mapping[str, bytes] | None = None,
    codec: FixedPoint = FixedPoint(),
    return_weight: bool = False,
) -> list[np.ndarray] | tuple[list[np.ndarray], float]:
    """Server side: the weighted mean of the sites' arrays from masked updates.

    Parameters
    ----------
    masked
        ``site -> mask_update(...)`` output, for every site that answered.
    participants
        All sites whose masks were included (the group); defaults to the keys
        of ``masked`` (no dropout). Sites missing from ``masked`` are dropped,
        and ``revealed`` must hold every (survivor, dropped) seed.
    revealed
        Pair seeds survivors revealed (:func:`mmvm.secure.unmasking.reveal`),
        ``revealed[survivor][dropped]``.
    self_seeds
        Every survivor's self-mask seed (reconstructed from shares), when the
        updates carry self-masks.

    Returns
    -------
    list of numpy.ndarray (float64), or (that list, total weight)
        ``sum_i w_i x_i / sum_i w_i`` per array (values clipped to ``codec.clip``).
    """
    if not masked:
        raise MaskingError("no masked updates to aggregate")
    survivors = sorted(masked)
    participants = sorted(participants) if participants is not None else survivors
    extra = set(survivors) - set(participants)
    if extra:
        raise MaskingError(f"updates from sites outside the group: {sorted(extra)}")
    dropped = sorted(set(participants) - set(survivors))
    revealed = dict(revealed or {})
    missing = [
        (s, d) for s in survivors for d in dropped if d not in revealed.get(s, {})
    ]
    if missing:
        raise MaskingError(
            f"cannot unmask: dropped sites {dropped} but no seed for pairs {missing}"
        )
    layout = [np.shape(a) for a in masked[survivors[0]]]
    total = [np.zeros(s, dtype=np.uint64) for s in layout]
    for site in survivors:
        arrays = masked[site]
        if [np.shape(a) for a in arrays] != layout:
            raise MaskingError(f"masked update of {site!r} has another layout")
        for t, a in zip(total, arrays, strict=True):
            t += np.asarray(a, dtype=np.uint64)  # wraps modulo 2^64
    if dropped:
        needed = {s: {d: revealed[s][d] for d in dropped} for s in survivors}
        total = unmask_dropout(total, needed)
    if self_seeds is not None:
        lacking = [s for s in survivors if s not in self_seeds]
        if lacking:
            raise MaskingError(f"no self-mask seed for survivors {lacking}")
        sizes = [int(np.prod(s)) for s in layout]
        flat = np.concatenate([np.ravel(t) for t in total])
        for s in survivors:
            flat = flat - self_mask(self_seeds[s], flat.size)
        total, pos = [], 0
        for shape, n in zip(layout, sizes, strict=True):
            total.append(flat[pos:pos + n].reshape(shape))
            pos += n
    weight = float(codec.decode(total[-1])[0])
    if weight <= 0:
        raise MaskingError(f"decoded total weight {weight} is not positive")
    means = [codec.decode(t) / weight for t in total[:-1]]
    return (means, weight) if return_weight else means
