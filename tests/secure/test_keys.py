"""Site identities: serialization, directory verification, pairwise keys."""

from __future__ import annotations

import dataclasses
import os

import pytest

from mmvm.secure.errors import InvalidSignatureError, SecurityError
from mmvm.secure.keys import (
    SiteKeys,
    SitePublicKeys,
    envelope_key,
    load_public_directory,
    masking_seed,
    save_public_directory,
    subkey,
    validate_site_name,
)


def test_save_load_roundtrip_and_mode(tmp_path, sites):
    keys, _ = sites
    path = tmp_path / "a.json"
    keys["a"].save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = SiteKeys.load(path)
    assert loaded.public == keys["a"].public
    with pytest.raises(FileExistsError):
        keys["a"].save(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        SiteKeys.load(path)


def test_directory_roundtrip_and_tampering(tmp_path, sites):
    _, pubs = sites
    path = tmp_path / "public_keys.json"
    save_public_directory(path, pubs)
    assert load_public_directory(path) == pubs
    # pairing b's name with a's agreement key breaks the self-signature
    forged = dataclasses.replace(pubs["b"], kx=pubs["a"].kx)
    with pytest.raises(InvalidSignatureError) as err:
        forged.check()
    assert isinstance(err.value, SecurityError) and isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="missing field"):
        SitePublicKeys.from_dict({"format": "mmvm-site-public-keys", "version": 1})


def test_fingerprint_is_stable_and_distinct(sites):
    _, pubs = sites
    fp = pubs["a"].fingerprint
    assert fp == SitePublicKeys.from_bytes(pubs["a"].to_bytes()).fingerprint
    assert len(fp.split()) == 8 and fp != pubs["b"].fingerprint


def test_pairwise_keys_agree_and_are_separated(sites):
    keys, pubs = sites
    a, b = keys["a"], keys["b"]
    assert masking_seed(a, pubs["b"], 1) == masking_seed(b, pubs["a"], 1)
    ab = envelope_key(a, pubs["b"], 1, outgoing=True)
    assert ab == envelope_key(b, pubs["a"], 1, outgoing=False)
    ba = envelope_key(a, pubs["b"], 1, outgoing=False)
    derived = {ab, ba, masking_seed(a, pubs["b"], 1), masking_seed(a, pubs["b"], 2),
               masking_seed(a, pubs["c"], 1)}
    assert len(derived) == 5  # purpose, direction, run and pair all matter
    with pytest.raises(ValueError, match="itself"):
        masking_seed(a, pubs["a"], 1)


def test_subkey_and_names():
    k = bytes(range(32))
    assert subkey(k, "mask", "m0", 1) != subkey(k, "mask", "m0", 2)
    assert subkey(k, "mask", "m0", 1) != subkey(k, "mask", "m1", 1)
    assert validate_site_name("site-1.a") == "site-1.a"
    for bad in ("", "-a", "a b", "a/b", "x" * 65):
        with pytest.raises(ValueError):
            validate_site_name(bad)
