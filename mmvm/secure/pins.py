"""Peers pinned by fingerprint: which entries of a public key directory a site
accepts (its node config's ``peers``, :mod:`mmvm.federation.policy`)."""

from __future__ import annotations

from collections.abc import Mapping

from mmvm.secure.keys import SitePublicKeys


def fingerprint_digits(fingerprint: str) -> str:
    """A fingerprint's hex digits, lower case (as typed, with spaces or colons)."""
    return fingerprint.replace(" ", "").replace(":", "").lower()


def grouped(fingerprint: str) -> str:
    """As fingerprints are printed: groups of 4 hex digits."""
    f = fingerprint_digits(fingerprint)
    return " ".join(f[i:i + 4] for i in range(0, len(f), 4))


def pinned_entries(peers: Mapping[str, str] | None, site: str,
                   directory: Mapping[str, SitePublicKeys]) -> dict[str, SitePublicKeys]:
    """``site``'s own entry and those of ``peers`` (name -> pinned fingerprint), each
    matching its pin; the whole directory when ``peers`` is None. ``ValueError``
    names every pinned peer missing from the directory or not matching its pin."""
    if peers is None:
        return dict(directory)
    out = {site: directory[site]} if site in directory else {}
    missing = [n for n in peers if n not in directory]
    wrong = [n for n, pinned in peers.items() if n in directory
             and fingerprint_digits(directory[n].fingerprint) != fingerprint_digits(pinned)]
    problems = [f"pinned peers {', '.join(missing)} are not in the public key "
                f"directory"] * bool(missing)
    if wrong:
        problems.append(
            f"the directory's keys of {', '.join(wrong)} are not the pinned ones ("
            + "; ".join(f"{n}: directory {directory[n].fingerprint}, pinned "
                        f"{grouped(peers[n])}" for n in wrong)
            + "). Re-confirm each fingerprint with that site's administrator out of "
              "band (phone, signed e-mail); do not copy it from the directory: a "
              "replaced directory entry is what pinning is there to catch")
    if problems:
        raise ValueError("; and ".join(problems))
    out.update({n: directory[n] for n in peers})
    return out
