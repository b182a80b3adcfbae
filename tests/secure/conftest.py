"""Deterministic site keys for the secure-layer tests."""

from __future__ import annotations

from hashlib import sha256

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mmvm.secure.keys import SiteKeys


def fixed_keys(site: str) -> SiteKeys:
    """Keys derived from the site name: reproducible tests, never for real use."""
    kx = X25519PrivateKey.from_private_bytes(sha256(b"kx" + site.encode()).digest())
    sg = Ed25519PrivateKey.from_private_bytes(sha256(b"sg" + site.encode()).digest())
    return SiteKeys(site, kx, sg)


@pytest.fixture
def sites():
    keys = {s: fixed_keys(s) for s in ("a", "b", "c", "d")}
    return keys, {s: k.public for s, k in keys.items()}
