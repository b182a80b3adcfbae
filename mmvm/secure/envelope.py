"""End-to-end encrypted, authenticated messages between sites via an untrusted router.

Sites exchange posteriors (and other small payloads) through the Flower server,
which only routes bytes. An envelope is::

    header = MAGIC || version || lp(kind, sender, recipient, run_id)
             || round || counter || salt
    k_dir  = HKDF(X25519(sk_sender, pk_recipient),
                  info=("envelope", run, sender, recipient))
    k_msg  = HKDF-Expand(k_dir, info = header)                 # one key per message
    blob   = header || AES-256-GCM(k_msg, nonce=0^96, payload, aad=header)

``k_dir`` is :func:`mmvm.secure.keys.envelope_key` (static-static X25519, then
HKDF-SHA256), directional and per run. ``salt`` is 16 fresh random bytes, so
``k_msg`` is fresh for every envelope even if a sender restarts and reuses a
(round, counter): the fixed GCM nonce is never used twice under one key, and
there is no 2^32-messages limit as with random nonces. The whole header is
authenticated (it is both the HKDF ``info`` and GCM's associated data), so the
router can neither redirect an envelope to another (round, counter, kind) nor
splice headers.

AEAD only, no signature (the design choice). Only the two holders of ``k_dir``
(sender and recipient) can produce a valid envelope, so a recipient that did
not write it knows the sender did: that is the authentication we need against
the router. A signature would add non-repudiation, i.e. a transferable proof of
what a site sent, which a privacy layer should *not* hand out, and would cost
64 bytes and a verify per message. The price is key-compromise impersonation:
whoever steals site B's X25519 key can forge envelopes *to B* claiming any
sender, which is moot because that thief already reads everything sent to B.

Replay. The router can resend an old envelope. The header carries the round
and a per-(sender, round) counter; :class:`ReplayGuard` (kept by the
recipient, saved to disk between messages because a SuperNode starts a fresh
process per message) accepts each (round, counter) once per sender and rejects
rounds older than the newest one accepted. Checks run in this order: parse,
recipient, sender, run/kind, authenticate and decrypt, replay; the replay guard
records only authenticated headers, so forged headers cannot poison it.

What the router still learns: who sends to whom, when, the kind and size of
each message, and the round/counter (the header is authenticated, not
encrypted). Pad payloads to a fixed size if sizes matter.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from mmvm.atomic import atomic_write
from mmvm.secure.errors import (
    ContextMismatchError,
    MalformedEnvelopeError,
    ReplayError,
    TamperedEnvelopeError,
    UnexpectedSenderError,
    WrongRecipientError,
)
from mmvm.secure.keys import SiteKeys, SitePublicKeys, envelope_key

MAGIC = b"MMVMENV"
VERSION = 1
SALT_BYTES = 16
TAG_BYTES = 16
_NONCE = bytes(12)  # safe: every message has its own key (see module doc)
_U64 = struct.Struct(">QQ")
_MAX_FIELD = 256


@dataclass(frozen=True)
class Header:
    """The authenticated, unencrypted part of an envelope."""

    kind: str
    sender: str
    recipient: str
    run_id: str
    round: int
    counter: int
    salt: bytes

    def encode(self) -> bytes:
        out = [MAGIC, bytes([VERSION])]
        for text in (self.kind, self.sender, self.recipient, self.run_id):
            raw = text.encode()
            if len(raw) > _MAX_FIELD:
                raise ValueError(f"envelope header field too long: {text[:40]!r}...")
            out.append(struct.pack(">H", len(raw)) + raw)
        out.append(_U64.pack(self.round, self.counter))
        out.append(self.salt)
        return b"".join(out)

    @classmethod
    def decode(cls, blob: bytes) -> tuple["Header", int]:
        """Parse a header from the front of ``blob``; return it and its length."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise MalformedEnvelopeError("envelope must be bytes")
        blob = bytes(blob)
        if not blob.startswith(MAGIC):
            raise MalformedEnvelopeError("not an mmvm envelope (bad magic bytes)")
        pos = len(MAGIC)
        if len(blob) <= pos or blob[pos] != VERSION:
            got = blob[pos] if len(blob) > pos else None
            raise MalformedEnvelopeError(f"unsupported envelope version {got}")
        pos += 1
        texts = []
        for name in ("kind", "sender", "recipient", "run_id"):
            if len(blob) < pos + 2:
                raise MalformedEnvelopeError(f"envelope truncated in header ({name})")
            (n,) = struct.unpack_from(">H", blob, pos)
            pos += 2
            if n > _MAX_FIELD or len(blob) < pos + n:
                raise MalformedEnvelopeError(f"envelope truncated in header ({name})")
            try:
                texts.append(blob[pos : pos + n].decode())
            except UnicodeDecodeError as err:
                raise MalformedEnvelopeError(
                    f"header field {name} is not UTF-8"
                ) from err
            pos += n
        if len(blob) < pos + _U64.size + SALT_BYTES + TAG_BYTES:
            raise MalformedEnvelopeError("envelope truncated (no room for tag)")
        rnd, counter = _U64.unpack_from(blob, pos)
        pos += _U64.size
        salt = blob[pos : pos + SALT_BYTES]
        pos += SALT_BYTES
        return cls(*texts, rnd, counter, salt), pos


def _message_key(k_dir: bytes, header_bytes: bytes) -> bytes:
    info = b"mmvm/envelope/msg/v1" + header_bytes
    return HKDFExpand(hashes.SHA256(), 32, info=info).derive(k_dir)


def seal(
    sender: SiteKeys,
    recipient: SitePublicKeys,
    payload: bytes,
    *,
    run_id: str | int,
    round: int,
    counter: int = 0,
    kind: str = "posterior",
) -> bytes:
    """Encrypt and authenticate ``payload`` from ``sender`` to ``recipient``.

    Parameters
    ----------
    sender, recipient
        The sender's private keys and the recipient's directory entry.
    payload
        Opaque bytes (e.g. a serialized posterior tensor).
    run_id, round, counter, kind
        Bound into the header; ``(round, counter)`` must be unique per
        (sender, recipient, run) for the recipient's replay guard to accept it.

    Returns
    -------
    bytes
        ``header || ciphertext || tag``, 16 + ~60 bytes longer than ``payload``.
    """
    if not 0 <= round < 2**64 or not 0 <= counter < 2**64:
        raise ValueError("round and counter must be integers in [0, 2^64)")
    header = Header(
        kind=kind,
        sender=sender.site,
        recipient=recipient.site,
        run_id=str(run_id),
        round=int(round),
        counter=int(counter),
        salt=os.urandom(SALT_BYTES),
    ).encode()
    k_dir = envelope_key(sender, recipient, run_id, outgoing=True)
    aead = AESGCM(_message_key(k_dir, header))
    return header + aead.encrypt(_NONCE, bytes(payload), header)


def peek_header(blob: bytes) -> Header:
    """Parse the header without authenticating it (for routing and logs only)."""
    return Header.decode(blob)[0]


def payload_size(blob: bytes) -> int:
    """The length of the payload sealed in ``blob`` (AES-GCM adds only its tag): what
    a relay can check of an envelope it cannot open."""
    return len(blob) - Header.decode(blob)[1] - TAG_BYTES


@dataclass
class ReplayGuard:
    """Accepts each (sender, round, counter) once; rejects rounds older than seen.

    Within the newest round of a sender, counters may arrive in any order;
    anything from an older round is refused. Keep one guard per (site, run) and
    persist it with :meth:`save`/:meth:`load` between SuperNode messages.
    """

    latest_round: dict[str, int] = field(default_factory=dict)
    seen: dict[str, set[int]] = field(default_factory=dict)

    def check(self, sender: str, round: int, counter: int) -> None:
        """Raise :class:`ReplayError` if (round, counter) was seen or is too old."""
        latest = self.latest_round.get(sender)
        if latest is None or round > latest:
            return
        if round < latest:
            raise ReplayError(
                f"replayed or stale envelope from {sender!r}: round {round} is older "
                f"than round {latest} already accepted"
            )
        if counter in self.seen.get(sender, set()):
            raise ReplayError(
                f"replayed envelope from {sender!r}: round {round} counter {counter} "
                "was already accepted"
            )

    def record(self, sender: str, round: int, counter: int) -> None:
        """Remember an authenticated (round, counter); call after :meth:`check`."""
        if round > self.latest_round.get(sender, -1):
            self.latest_round[sender] = round
            self.seen[sender] = set()
        self.seen[sender].add(counter)

    def to_dict(self) -> dict[str, object]:
        return {
            "latest_round": self.latest_round,
            "seen": {s: sorted(c) for s, c in self.seen.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ReplayGuard":
        return cls(
            {str(k): int(v) for k, v in d.get("latest_round", {}).items()},
            {str(k): {int(c) for c in v} for k, v in d.get("seen", {}).items()},
        )

    def save(self, path: str | Path) -> None:
        """Write atomically (0600); overwrites the previous state."""
        atomic_write(path, json.dumps(self.to_dict()).encode(), overwrite=True)

    @classmethod
    def load(cls, path: str | Path) -> "ReplayGuard":
        """Read a saved guard; an absent file gives an empty guard."""
        path = Path(path)
        if not path.exists():
            return cls()
        return cls.from_dict(json.loads(path.read_bytes()))


def open_envelope(
    recipient: SiteKeys,
    sender: SitePublicKeys,
    blob: bytes,
    *,
    run_id: str | int,
    guard: ReplayGuard | None = None,
    expected_round: int | None = None,
    expected_counter: int | None = None,
    kind: str | None = None,
) -> bytes:
    """Authenticate and decrypt an envelope from ``sender``; return the payload.

    At least one replay defence is required: a ``guard`` (updated on success),
    or an ``expected_round`` (and optionally ``expected_counter``) that the
    header must match exactly.

    Raises
    ------
    MalformedEnvelopeError
        The bytes are not an envelope.
    WrongRecipientError
        Addressed to another site.
    UnexpectedSenderError
        From a site other than ``sender``.
    ContextMismatchError
        Another run id, or another ``kind`` than asked for.
    TamperedEnvelopeError
        Authentication failed (modified bytes, or keys that don't match).
    ReplayError
        (round, counter) already accepted, older, or not the expected one.
    """
    if guard is None and expected_round is None:
        raise ValueError("open_envelope needs a ReplayGuard or an expected_round")
    header, end = Header.decode(blob)
    if header.recipient != recipient.site:
        raise WrongRecipientError(
            f"envelope is addressed to {header.recipient!r}, not to {recipient.site!r}"
        )
    if header.sender != sender.site:
        raise UnexpectedSenderError(
            f"envelope claims sender {header.sender!r}, expected {sender.site!r}"
        )
    if header.run_id != str(run_id):
        raise ContextMismatchError(
            f"envelope belongs to run {header.run_id!r}, not to run {str(run_id)!r}"
        )
    if kind is not None and header.kind != kind:
        raise ContextMismatchError(
            f"envelope is of kind {header.kind!r}, expected {kind!r}"
        )
    header_bytes = bytes(blob[:end])
    k_dir = envelope_key(recipient, sender, run_id, outgoing=False)
    try:
        payload = AESGCM(_message_key(k_dir, header_bytes)).decrypt(
            _NONCE, bytes(blob[end:]), header_bytes
        )
    except InvalidTag:
        raise TamperedEnvelopeError(
            f"envelope from {header.sender!r} failed authentication: its bytes were "
            "modified in transit, or it was not sealed with this pair of site keys"
        ) from None
    if expected_round is not None and header.round != expected_round:
        raise ReplayError(
            f"envelope from {header.sender!r} is for round {header.round}, "
            f"expected round {expected_round}"
        )
    if expected_counter is not None and header.counter != expected_counter:
        raise ReplayError(
            f"envelope from {header.sender!r} has counter {header.counter}, "
            f"expected {expected_counter}"
        )
    if guard is not None:
        guard.check(header.sender, header.round, header.counter)
        guard.record(header.sender, header.round, header.counter)
    return payload
