"""A site's long-term identity and the pairwise keys derived from it.

Each site holds two key pairs:

* X25519 for key agreement: every pair of sites derives shared secrets without
  any message through the server (static-static Diffie-Hellman on the public
  directory);
* Ed25519 for signatures: the private half signs (site name, X25519 key), so
  an entry cannot be edited to pair the name with another agreement key
  without the signing key. It proves possession of the Ed25519 key only, and
  does not make the entry trustworthy by itself (see "Trust in the directory").

Pairwise keys (RFC 7748 X25519, RFC 5869 HKDF-SHA256)::

    ikm  = X25519(sk_me, pk_peer)                  # identical on both sides
    info = "mmvm/pairwise/v1" || sorted(pk_me, pk_peer) || context
    key  = HKDF-SHA256(ikm, salt=None, info, L=32)

``context`` names the purpose, the run and the two sites (``key_context``), so
the envelope key from A to B, the one from B to A, the masking seed of {A, B}
and the id-hashing key are four independent keys, and none of them is reused
in another run. Static-static keys give no forward secrecy: a leaked X25519
private key opens that site's past envelopes of the same run ids.

Trust in the directory. The self-signature only ties a site's two public keys
together; anyone can make a fresh, self-consistent entry for any name. What
makes an entry *that site's* keys is how the directory reaches the sites: each
site generates its keys itself (``python -m deploy.make_keys --site NAME``),
sends only its public record, and the administrators compare
:attr:`SitePublicKeys.fingerprint` out of band (phone, signed e-mail). A
directory distributed by the federation operator alone lets that operator
substitute keys and read envelopes (a man in the middle), which is exactly
the party the end-to-end layer protects against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from mmvm.atomic import atomic_write
from mmvm.secure.errors import InvalidSignatureError

KEY_BYTES = 32
SIGNATURE_BYTES = 64
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PRIVATE_FORMAT = "mmvm-site-keys"
_PUBLIC_FORMAT = "mmvm-site-public-keys"
_DIRECTORY_FORMAT = "mmvm-public-keys"
_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw


def validate_site_name(name: str) -> str:
    """Return ``name`` if it is 1-64 chars of ``[A-Za-z0-9._-]``, else raise."""
    if not isinstance(name, str) or not _SITE_NAME.fullmatch(name):  # not "a\n"
        raise ValueError(
            f"invalid site name {name!r}: use 1-64 characters [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str, size: int = KEY_BYTES) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{what} is not valid base64") from err
    if len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def _field(d: Mapping[str, object], name: str, what: str) -> object:
    try:
        return d[name]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{what}: missing field {name!r}") from err


def length_prefixed(*fields: bytes) -> bytes:
    """Length-prefixed concatenation: unambiguous, unlike plain joining."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


@dataclass(frozen=True)
class SitePublicKeys:
    """The public half of a site's identity, as published in the directory."""

    site: str
    kx: bytes  # X25519 public key, 32 raw bytes
    sign: bytes  # Ed25519 public key, 32 raw bytes
    signature: bytes  # Ed25519 over _binding(site, kx)

    @staticmethod
    def _binding(site: str, kx: bytes) -> bytes:
        return length_prefixed(b"mmvm/site-binding/v1", site.encode(), kx)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ``InvalidSignatureError`` unless ``signature`` signs ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.sign).verify(signature, data)
        except InvalidSignature as err:
            raise InvalidSignatureError(
                f"bad signature from site {self.site!r}"
            ) from err

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 of the site name and both keys, for out-of-band checks.

        Formatted as 8 groups of 4 hex digits (128 bits), e.g.
        ``"3f2a 91c0 ..."``; administrators read it to each other.
        """
        digest = hashlib.sha256(
            length_prefixed(b"mmvm/fingerprint/v1", self.site.encode(), self.kx, self.sign)
        ).hexdigest()[:32]
        return " ".join(digest[i : i + 4] for i in range(0, 32, 4))

    def check(self) -> "SitePublicKeys":
        """Validate the name, key sizes and the self-signature; return self."""
        validate_site_name(self.site)
        if len(self.kx) != KEY_BYTES or len(self.sign) != KEY_BYTES:
            raise ValueError(f"site {self.site!r}: public keys must be 32 bytes")
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError(f"site {self.site!r}: signature must be 64 bytes")
        self.verify(self.signature, self._binding(self.site, self.kx))
        return self

    @property
    def x25519(self) -> X25519PublicKey:
        return X25519PublicKey.from_public_bytes(self.kx)

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict (base64 keys)."""
        return {
            "format": _PUBLIC_FORMAT,
            "version": 1,
            "site": self.site,
            "x25519": _b64(self.kx),
            "ed25519": _b64(self.sign),
            "signature": _b64(self.signature),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "SitePublicKeys":
        """Parse and verify a dict from ``to_dict``; raise ``ValueError`` if bad."""
        if not isinstance(d, Mapping):
            raise ValueError("site public key record must be a JSON object")
        if d.get("format") != _PUBLIC_FORMAT or d.get("version") != 1:
            raise ValueError("not an mmvm site public key record (format/version)")
        site = validate_site_name(str(_field(d, "site", "public key record")))
        return cls(
            site=site,
            kx=_unb64(_field(d, "x25519", site), f"{site}.x25519"),
            sign=_unb64(_field(d, "ed25519", site), f"{site}.ed25519"),
            signature=_unb64(
                _field(d, "signature", site), f"{site}.signature", SIGNATURE_BYTES
            ),
        ).check()

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes of ``to_dict``."""
        doc = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return doc.encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "SitePublicKeys":
        return cls.from_dict(json.loads(data))


@dataclass(frozen=True, eq=False)
class SiteKeys:
    """A site's private identity: X25519 (agreement) + Ed25519 (signing)."""

    site: str
    kx_private: X25519PrivateKey = field(repr=False)
    sign_private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, site: str) -> "SiteKeys":
        """Fresh random keys for ``site``."""
        validate_site_name(site)
        return cls(site, X25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    @cached_property
    def public(self) -> SitePublicKeys:
        """The public record (computed once; Ed25519 signing is deterministic)."""
        kx = self.kx_private.public_key().public_bytes(_RAW, _RAW_PUBLIC)
        sign = self.sign_private.public_key().public_bytes(_RAW, _RAW_PUBLIC)
        sig = self.sign_private.sign(SitePublicKeys._binding(self.site, kx))
        return SitePublicKeys(self.site, kx, sign, sig)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data``."""
        return self.sign_private.sign(data)

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict holding the PRIVATE keys; keep it at the site."""
        nokey = serialization.NoEncryption()
        return {
            "format": _PRIVATE_FORMAT,
            "version": 1,
            "site": self.site,
            "x25519_private": _b64(
                self.kx_private.private_bytes(_RAW, _RAW_PRIVATE, nokey)
            ),
            "ed25519_private": _b64(
                self.sign_private.private_bytes(_RAW, _RAW_PRIVATE, nokey)
            ),
            "public": self.public.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> "SiteKeys":
        """Parse a dict from ``to_dict``; raise ``ValueError`` if malformed."""
        if not isinstance(d, Mapping):
            raise ValueError("site key file must hold a JSON object")
        if d.get("format") != _PRIVATE_FORMAT or d.get("version") != 1:
            raise ValueError("not an mmvm site key file (format/version)")
        site = validate_site_name(str(_field(d, "site", "site key file")))
        keys = cls(
            site,
            X25519PrivateKey.from_private_bytes(
                _unb64(_field(d, "x25519_private", site), "x25519_private")
            ),
            Ed25519PrivateKey.from_private_bytes(
                _unb64(_field(d, "ed25519_private", site), "ed25519_private")
            ),
        )
        stored = d.get("public")
        if stored is not None:
            pub = SitePublicKeys.from_dict(stored)  # type: ignore[arg-type]
            if (pub.site, pub.kx, pub.sign) != (site, keys.public.kx, keys.public.sign):
                raise ValueError(
                    f"{site}: stored public keys do not match private keys"
                )
        return keys

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the private keys as JSON, atomically, mode 0600."""
        data = json.dumps(self.to_dict(), indent=1, sort_keys=True).encode() + b"\n"
        atomic_write(path, data, mode=0o600, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> "SiteKeys":
        """Load keys written by ``save``; refuse files readable by others."""
        path = Path(path)
        if path.stat().st_mode & 0o077:
            raise PermissionError(
                f"{path} is readable by group/others; chmod 600 it (private keys)"
            )
        return cls.from_dict(json.loads(path.read_bytes()))


def public_directory_bytes(
    publics: Mapping[str, SitePublicKeys] | list[SitePublicKeys],
) -> bytes:
    """All sites' public halves as one JSON document (the directory)."""
    items = list(publics.values()) if isinstance(publics, Mapping) else list(publics)
    names = [p.site for p in items]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate site names in the directory: {sorted(names)}")
    doc = {
        "format": _DIRECTORY_FORMAT,
        "version": 1,
        "sites": {p.site: p.to_dict() for p in sorted(items, key=lambda p: p.site)},
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def save_public_directory(
    path: str | Path, publics: Mapping[str, SitePublicKeys] | list[SitePublicKeys],
    *, overwrite: bool = False,
) -> None:
    """Write all sites' public halves as one JSON directory (mode 0644)."""
    atomic_write(path, public_directory_bytes(publics), mode=0o644, overwrite=overwrite)


def load_public_directory(path: str | Path) -> dict[str, SitePublicKeys]:
    """Read and verify a directory from ``save_public_directory``."""
    doc = json.loads(Path(path).read_bytes())
    if not isinstance(doc, dict) or doc.get("format") != _DIRECTORY_FORMAT or (
        doc.get("version") != 1
    ) or not isinstance(doc.get("sites"), dict):
        raise ValueError(f"{path}: not an mmvm public key directory")
    out: dict[str, SitePublicKeys] = {}
    for name, entry in doc["sites"].items():
        pub = SitePublicKeys.from_dict(entry)
        if pub.site != name:
            raise ValueError(f"{path}: entry {name!r} holds keys of {pub.site!r}")
        out[name] = pub
    return out


def key_context(purpose: str, run_id: str | int, first: str, second: str) -> bytes:
    """HKDF ``info`` context: purpose, run and an ordered pair of site names.

    Pass (sender, recipient) for directional keys, ``sorted`` names for
    symmetric ones (masking seeds, id hashing).
    """
    validate_site_name(first)
    validate_site_name(second)
    return length_prefixed(purpose.encode(), str(run_id).encode(), first.encode(), second.encode())


def pairwise_key(
    my_private: X25519PrivateKey | SiteKeys,
    their_public: X25519PublicKey | SitePublicKeys | bytes,
    context: bytes,
) -> bytes:
    """32-byte key shared by two sites: HKDF-SHA256 over X25519, see module doc."""
    if isinstance(my_private, SiteKeys):
        my_private = my_private.kx_private
    if isinstance(their_public, SitePublicKeys):
        their_public = their_public.x25519
    elif isinstance(their_public, bytes):
        their_public = X25519PublicKey.from_public_bytes(their_public)
    mine = my_private.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    theirs = their_public.public_bytes(_RAW, _RAW_PUBLIC)
    if mine == theirs:
        raise ValueError("pairwise_key: a site cannot agree a key with itself")
    shared = my_private.exchange(their_public)  # raises on a low-order point
    info = length_prefixed(b"mmvm/pairwise/v1", *sorted((mine, theirs)), context)
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=None, info=info).derive(shared)


def envelope_key(
    me: SiteKeys, peer: SitePublicKeys, run_id: str | int, *, outgoing: bool
) -> bytes:
    """Key for envelopes me -> peer (``outgoing``) or peer -> me."""
    sender, recipient = (me.site, peer.site) if outgoing else (peer.site, me.site)
    return pairwise_key(me, peer, key_context("envelope", run_id, sender, recipient))


def masking_seed(me: SiteKeys, peer: SitePublicKeys, run_id: str | int) -> bytes:
    """Symmetric pairwise seed for secure-aggregation masks of {me, peer}."""
    a, b = sorted((me.site, peer.site))
    return pairwise_key(me, peer, key_context("masking", run_id, a, b))


def subkey(
    key: bytes, purpose: str, *fields: str | int | bytes, length: int = 32
) -> bytes:
    """One-use key from a pairwise ``key``: HKDF-Expand(key, purpose || fields).

    ``key`` is already uniformly random (an HKDF output), so Expand alone is
    enough (RFC 5869 section 3.3). Used for per-round masking seeds, so that
    revealing one round's seed reveals nothing about other rounds.
    """
    if len(key) < KEY_BYTES:
        raise ValueError(f"subkey: key must be at least {KEY_BYTES} bytes")
    parts = [f if isinstance(f, bytes) else str(f).encode() for f in fields]
    info = length_prefixed(b"mmvm/subkey/v1", purpose.encode(), *parts)
    return HKDFExpand(hashes.SHA256(), length, info=info).derive(key)
