"""The server's reading of one site's unmask answer, before any answer is combined.

A survivor answers, per modality it was asked about, a share of every other
survivor's self-mask seed and its pair seed with every dropped holder
(:func:`mmvm.secure.unmasking.reveal`). All of that is checked here for the one
answer, so that an answer of the wrong form, with shares left out, a share of the
wrong length or index (the group fixes the index; the owner's seal was checked by
the holder, :mod:`mmvm.federation.sealed_weights`), or a seed that is not a 32-byte
key is that site's failure of the unmask step, named, and not an error in the middle
of the masked mean that names no one. (A well-formed but wrong share or seed is
caught only by the mean's weight check, without a name: no verifiable secret
sharing, deploy/README.md section 7.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mmvm.secure.keys import KEY_BYTES
from mmvm.secure.session import unb64
from mmvm.secure.unmasking import check_share


@dataclass(frozen=True)
class Asked:
    """One modality's unmask question to a site, by site name."""

    holders: Sequence[str]  # the group, in its order (fixes each share's index)
    survivors: Sequence[str]
    dropped: Sequence[str]


@dataclass
class Answer:
    shares: dict[str, dict[str, bytes]]  # modality -> owner -> share of its seed
    seeds: dict[str, dict[str, bytes]]  # modality -> dropped site -> pair seed


def read_answer(answer, me: str, asked: Mapping[str, Asked]) -> Answer:
    """Site ``me``'s answer, decoded; ``ValueError`` saying what is wrong with it."""
    for what in ("shares", "seeds"):
        part = getattr(answer, what, None)
        if not isinstance(part, Mapping) or not all(
                isinstance(v, Mapping) for v in part.values()):
            raise ValueError(f"its unmask answer's {what} are not a map of modalities to "
                             f"{{site: base64 text}}")
        if set(part) - set(asked):
            raise ValueError(f"its unmask answer's {what} name modalities it was not "
                             f"asked about")
    out = Answer({}, {})
    for m, q in asked.items():
        out.shares[m] = _keyed(answer.shares.get(m, {}), sorted(set(q.survivors) - {me}),
                               f"shares of {m!r}")
        for owner, share in out.shares[m].items():
            why = check_share(share, q.holders, owner, me)
            if why:
                raise ValueError(f"its unmask answer holds a malformed share of site "
                                 f"{owner}'s self-mask seed for {m!r} ({why})")
        out.seeds[m] = _keyed(answer.seeds.get(m, {}), sorted(q.dropped),
                              f"pair seeds of {m!r}")
        short = [d for d, s in out.seeds[m].items() if len(s) != KEY_BYTES]
        if short:
            raise ValueError(f"its unmask answer's pair seed with {short[0]} for {m!r} is "
                             f"not a {KEY_BYTES}-byte key")
    return out


def _keyed(part: Mapping, want: list[str], what: str) -> dict[str, bytes]:
    """``part`` decoded: exactly the names ``want``, each base64 text."""
    if sorted(part) != want:
        raise ValueError(f"its unmask answer's {what} are for {sorted(map(str, part))[:6]}, "
                         f"not for {want}")
    out = {}
    for name, text in part.items():
        try:
            out[name] = unb64(text)
        except ValueError:
            raise ValueError(f"its unmask answer's {what}: the one for {name} is not "
                             f"base64 text") from None
    return out
