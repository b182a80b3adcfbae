"""A secure site proves to a restarted server that it is the site it was.

At describe a secure site sends its public key record (the self-signed
``SitePublicKeys``; public, as in every site's directory). The server keeps the
record of each site name in its state. When it resumes the run it sends every
connected node a fresh random challenge, and a node answering as site ``S`` must
sign ``(run, asker, S, challenge)`` with the Ed25519 key of ``S``'s record, where
``asker`` is the Flower run the challenge came in (the resumed run's own id, which
the site reads from its SuperNode, not from the message; "" in one process): a site
cannot answer as another one that is away, take its identity and inputs, and have the
real site blamed for what it does (the server has no other way to tell SuperNodes apart
when their node ids change, as they do in simulation or without node authentication).
Without ``asker`` a submitter could start its own run with ``resume=<run>``, relay
the real resumed run's challenge to the site there, and hand its signature to a
colluding node (security review of 2026-12-06).

The record is trusted on first use: the server pins what each name presented when
the run began. Whether that record is really the site's is for the sites to check
(their directories, compared out of band: :mod:`mmvm.secure.keys`).
"""

from __future__ import annotations

import json
import secrets

from mmvm.secure.errors import InvalidSignatureError
from mmvm.secure.keys import SIGNATURE_BYTES, SiteKeys, SitePublicKeys, length_prefixed
from mmvm.secure.session import b64, unb64

CHALLENGE_BYTES = 16
MAX_RECORD_CHARS = 1024  # a record is ~250 characters of JSON


def _statement(run: str, asker: str, site: str, challenge: str) -> bytes:
    return length_prefixed(b"mmvm/resume/v2", run.encode(), asker.encode(), site.encode(),
                           challenge.encode())


def new_challenge() -> str:
    return secrets.token_hex(CHALLENGE_BYTES)


def record_of(keys: SiteKeys) -> str:
    """The site's public key record, as it sends it at describe."""
    return keys.public.to_bytes().decode()


def prove(keys: SiteKeys, run: str, challenge: str, *, asker: str) -> str:
    """The answer to a resume challenge that came in Flower run ``asker``: base64
    Ed25519 over (run, asker, site, challenge)."""
    return b64(keys.sign(_statement(run, asker, keys.site, challenge)))


def parse_record(record: object, site: str) -> SitePublicKeys:
    """``site``'s public key record, checked: a valid self-signed record of that name;
    ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(record, str) or not record or len(record) > MAX_RECORD_CHARS:
        raise ValueError(f"site {site} sent no public key record (or one of "
                         f"{len(record) if isinstance(record, str) else 0} characters)")
    try:
        pub = SitePublicKeys.from_bytes(record.encode())
    except (ValueError, InvalidSignatureError, UnicodeError) as err:
        raise ValueError(f"site {site}: its public key record is not valid: {err}") \
            from None
    if pub.site != site:
        raise ValueError(f"site {site} sent the public key record of {pub.site!r}")
    return pub


def proof_problem(record: str, run: str, site: str, challenge: str, proof: object, *,
                  asker: str) -> str | None:
    """Why ``proof`` does not show that its sender holds ``site``'s signing key (the
    record pinned at describe) and answered in Flower run ``asker``, or ``None``."""
    try:
        pub = parse_record(record, site)
    except ValueError as err:
        return str(err)
    try:
        sig = unb64(proof)
    except ValueError:
        sig = b""
    if len(sig) != SIGNATURE_BYTES:
        return "its answer carries no signature of the challenge"
    try:
        pub.verify(sig, _statement(run, asker, site, challenge))
    except InvalidSignatureError:
        return (f"its answer is not signed with the key {site} began the run with "
                f"(fingerprint {pub.fingerprint}), for this challenge in this run")
    return None


def pinned(records: dict) -> dict[str, str]:
    """The name -> record map as saved in the server's state (checked for form)."""
    if not isinstance(records, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in records.items()):
        raise ValueError(f"site identities in the server state are not a map of names "
                         f"to records: {json.dumps(records)[:80]}")
    return dict(records)
