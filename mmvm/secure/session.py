"""A site's secure session for one run: its keys, the key directory, what it agreed.

Holds the site's own keys and the public key directory it trusts, the run id every
envelope is bound to, the state agreed during the run (its id-key contribution, the
group id key, the peers and FedAvg groups the server announced) and the replay
guard. With a ``state_dir`` both are kept on disk between messages (a SuperNode may
start a fresh process for every message): ``<site>.secure.json`` (secret: 0600),
``<site>.guard.json`` and ``<site>.received.json`` (digests of what the server sent in
the last window the site masked, which its masks are bound to).

Also here: the keyed pseudonyms of sample ids, and the group id key they are made
with, derived from every participant's sealed random contribution (the server
routes the contributions but never holds the key).
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mmvm.atomic import atomic_write
from mmvm.secure.envelope import ReplayGuard
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SiteKeys, SitePublicKeys, load_public_directory


class UnknownSiteError(SecurityError):
    """A site name that is not in this site's public key directory."""


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def unb64(s: object) -> bytes:
    """Strict base64 text to bytes (what another party sent is read with it);
    ``ValueError`` for anything else."""
    if not isinstance(s, str):
        raise ValueError(f"not base64 text but {type(s).__name__}")
    return base64.b64decode(s, validate=True)  # binascii.Error is a ValueError


def pseudonym(key: bytes, sample_id: str) -> str:
    """Keyed pseudonym of a sample id (the server sees only these)."""
    return hmac.new(key, sample_id.encode(), sha256).digest()[:16].hex()


def group_key(contributions: Mapping[str, bytes], run_id: str) -> bytes:
    """HKDF over every participant's (name, contribution), sorted by name."""
    parts = b"".join(len(n).to_bytes(2, "big") + n.encode() + c
                     for n, c in sorted(contributions.items()))
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=b"mmvm/group-id-key/v1" + str(run_id).encode()).derive(parts)


def test_key(group: bytes, run_id: str) -> bytes:
    """The id key of the test split, from the run's group id key: the test ids'
    pseudonyms cannot be linked to the training ids' (nor opened) by the server."""
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=b"mmvm/test-id-key/v1" + str(run_id).encode()).derive(group)


@dataclass
class SiteSecrets:
    """A site's keys, the directory, and its secure state for one run."""

    keys: SiteKeys
    directory: dict[str, SitePublicKeys]
    run_id: str
    state_dir: Path | None = None
    state: dict = field(default_factory=dict)
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    # the digests of the shared weights the server sent in the last window this site
    # masked (``{"window": w, "digests": {modality: hex}}``): its masks were bound
    # to them, and its unmask answer needs them
    received: dict = field(default_factory=dict)
    # the last window this site began to train and the digest of its inputs (the
    # server's mean and the rest of the request: ``{"window": w, "inputs": hex,
    # "what": "window w"}``), written before it trains
    began: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.keys.site not in self.directory:
            raise UnknownSiteError(f"site {self.keys.site!r} is not in its own public "
                                   f"key directory ({sorted(self.directory)})")
        mine = self.directory[self.keys.site]
        if (mine.kx, mine.sign) != (self.keys.public.kx, self.keys.public.sign):
            raise SecurityError(f"the directory's entry for {self.keys.site!r} does not "
                                f"match this site's keys")
        if self.state_dir is not None:
            self.state_dir = Path(self.state_dir)
            p = self._path("secure")
            if p.exists():
                self.state = json.loads(p.read_text())
            self.guard = ReplayGuard.load(self._path("guard"))
            for what in ("received", "began"):
                p = self._path(what)
                if p.exists():
                    setattr(self, what, json.loads(p.read_text()))

    @classmethod
    def load(cls, keys: str | Path, directory: str | Path | None = None, *,
             run_id: str | int, state_dir: str | Path | None = None) -> SiteSecrets:
        """``keys``: a ``site_keys.json`` or a directory holding it; ``directory``:
        ``public_keys.json`` (default: next to the site keys)."""
        keys = Path(keys).expanduser()
        key_file = keys / "site_keys.json" if keys.is_dir() else keys
        dir_file = Path(directory).expanduser() if directory else \
            key_file.parent / "public_keys.json"
        return cls(SiteKeys.load(key_file), load_public_directory(dir_file), str(run_id),
                   state_dir)

    @property
    def site(self) -> str:
        return self.keys.site

    def peer(self, name: str) -> SitePublicKeys:
        try:
            return self.directory[name]
        except KeyError:  # one text for both causes: it reaches the server too
            raise UnknownSiteError(
                f"site {self.site}: {name!r} is not a site it trusts "
                f"({sorted(self.directory)}): not in its public key directory, or not "
                f"among the peers its node config pins (peers=)") from None

    def _path(self, what: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{self.site}.{what}.json"

    def save_state(self) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path("secure"), json.dumps(self.state).encode(),
                         overwrite=True)

    def save_received(self, window: int, digests: dict[str, str]) -> None:
        self.received = {"window": int(window), "digests": dict(digests)}
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path("received"), json.dumps(self.received).encode(),
                         overwrite=True)

    def begin_window(self, window: int, inputs: str, what: str = "") -> None:
        """Record that window ``window`` (``what``, for messages: "window 3", "the
        evaluation") works on the inputs of digest ``inputs`` (the server's mean and
        the rest of the request); refused for a window before the last one begun, or
        for that one with other inputs (a retry repeats them)."""
        last = self.began.get("window", -2)
        what = what or f"window {window}"
        if window < last or window == last and inputs != self.began.get("inputs"):
            raise SecurityError(
                f"site {self.site}: {what} " + (
                    f"comes after {self.began.get('what', f'window {last}')} began"
                    if window < last else "was sent before with other inputs (its "
                    "mean, the peers' posteriors, the absent sites or the experiment "
                    "config)")
                + "; a site works on one set of inputs per window, whatever failed (a "
                  "retry repeats them)")
        self.began = {"window": int(window), "inputs": inputs, "what": what}
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path("began"), json.dumps(self.began).encode(),
                         overwrite=True)

    def save_guard(self) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.guard.save(self._path("guard"))
