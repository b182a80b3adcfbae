"""Secure mode (``secure = true``): the server routes bytes it cannot read.

Both sides of the protocol live here (no Flower imports); the ServerApp and the
ClientApp only carry the dicts. Who sees what:

1. **describe** (site -> server): name, modalities, sample *count*; no ids. Each
   site draws a random 32-byte contribution and seals it (``mmvm.secure.envelope``,
   kind ``idkey``, round 0) to every other site of the public key directory.
2. **align** (server routes the contributions; site -> server): each site opens
   its peers' contributions, derives the group id key
   ``K = HKDF(sorted (site, contribution) of all participants)`` that the server
   never holds, and answers the sorted keyed pseudonyms ``HMAC-SHA256(K, id)[:16]``
   of its sample ids. The server aligns *pseudonyms* (sorted union = the row order)
   and learns only which pseudonyms several sites share (the intersection
   structure and sizes), never an id.
3. **attach** (server -> site): the number of rows ``n``, the row of each of the
   site's own pseudonyms, the plan, and per peer the rows the two share and the
   peer's modalities, and the holders of each shared modality. The site maps rows
   back to its own ids; a row it does not hold gets a placeholder it never trains.
4. **windows**: after training window ``w`` each site seals, per peer, the
   posteriors of its own modalities for the rows of window ``w+1`` that peer shares
   with it (row numbers as keys, never ids), kind ``posterior``, round ``w+2``.
   The server routes ``{sender: {recipient: blob}}`` -> ``{recipient: {sender: blob}}``.
   The recipient opens every blob (expected round ``w+1``, a :class:`ReplayGuard`
   persisted in its state dir) *before* it applies anything; a tampered, replayed,
   mis-addressed, unexpected or missing envelope raises a
   :class:`~mmvm.secure.errors.SecurityError` and the site's state is not advanced.
   Weights of modalities several sites hold are sent masked
   (``mmvm.secure.masking.mask_update``, round ``w``, group ``weights/<m>``); the
   server recovers only their sample-weighted mean (``aggregate_masked``).

What the server still sees: pseudonyms and their overlap, counts, who sends how
many bytes to whom, per-window training metrics (sums), the averaged shared
weights it hands back, the evaluation metrics, and the final model if
``collect-model`` is on. See ``deploy/README.md`` (threat model).
"""

from __future__ import annotations

import base64
import copy
import hmac
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.posteriors import (
    Posteriors,
    PosteriorError,
    decode_table,
    encode_table,
    merge_tables,
)
from mmvm.federation import endpoint
from mmvm.federation.site import Site
from mmvm.secure.envelope import ReplayGuard, open_envelope, seal
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import SiteKeys, SitePublicKeys, atomic_write, load_public_directory
from mmvm.secure.masking import aggregate_masked, mask_update

KIND_IDKEY = "idkey"
KIND_POSTERIOR = "posterior"
WEIGHT_KEY = "__weight__"  # the masked sample count, next to the masked parameters
_PLACEHOLDER = "\x00row-"  # global rows a site does not hold (never a real id)


class UnknownSiteError(SecurityError):
    """A site name that is not in this site's public key directory."""


class MissingEnvelopeError(SecurityError):
    """A peer's envelope that the protocol requires did not arrive."""


class UnexpectedEnvelopeError(SecurityError):
    """An envelope from a site that has nothing to send us in this window."""


# ---------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SecureSettings:
    """Run-config keys of secure mode (see ``[tool.flwr.app.config]``)."""

    secure: bool = False
    keys_dir: str = ""  # simulation/test bed: a `make_keys --sites` output dir
    dump_messages: str = ""  # test only: the server appends every message here
    tamper_window: int = -1  # test only: the server flips a byte in window w's blobs


def secure_settings(rc: Mapping) -> SecureSettings:
    """Parse the secure-mode keys of a Flower run config (absent keys: defaults)."""
    from mmvm.federation.settings import _as_bool

    d = SecureSettings()
    return SecureSettings(
        secure=_as_bool(rc.get("secure", d.secure), "secure"),
        keys_dir=str(Path(str(rc.get("keys-dir", ""))).expanduser())
        if rc.get("keys-dir") else "",
        dump_messages=str(rc.get("test-dump-messages", "")),
        tamper_window=int(rc.get("test-tamper-window", -1)))


# ---------------------------------------------------------------------- site secrets
def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


@dataclass
class SiteSecrets:
    """A site's keys, the directory, and its secure state for one run.

    ``state_dir`` (if given) keeps ``<site>.secure.json`` (group id key, peers; 0600)
    and ``<site>.guard.json`` (the replay guard) between messages: a SuperNode
    starts a fresh process for every message.
    """

    keys: SiteKeys
    directory: dict[str, SitePublicKeys]
    run_id: str
    state_dir: Path | None = None
    state: dict = field(default_factory=dict)
    guard: ReplayGuard = field(default_factory=ReplayGuard)

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

    @classmethod
    def load(cls, keys: str | Path, directory: str | Path | None = None, *,
             run_id: str | int, state_dir: str | Path | None = None) -> "SiteSecrets":
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
        except KeyError:
            raise UnknownSiteError(f"site {self.site}: {name!r} is not in the public key "
                                   f"directory ({sorted(self.directory)})") from None

    def _path(self, what: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"{self.site}.{what}.json"

    def save_state(self) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path("secure"), json.dumps(self.state).encode(),
                         overwrite=True)

    def save_guard(self) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.guard.save(self._path("guard"))


def pseudonym(key: bytes, sample_id: str) -> str:
    """Keyed pseudonym of a sample id (the server sees only these)."""
    return hmac.new(key, sample_id.encode(), sha256).digest()[:16].hex()


def group_key(contributions: Mapping[str, bytes], run_id: str) -> bytes:
    parts = b"".join(len(n).to_bytes(2, "big") + n.encode() + c
                     for n, c in sorted(contributions.items()))
    return HKDF(hashes.SHA256(), 32, salt=None,
                info=b"mmvm/group-id-key/v1" + str(run_id).encode()).derive(parts)


# ---------------------------------------------------------------------- site side
def describe(site: Site, sec: SiteSecrets, req: Mapping | None = None) -> dict:
    if site.name != sec.site:
        raise SecurityError(f"node config names site {site.name!r} but its keys are "
                            f"those of {sec.site!r}")
    contribution = os.urandom(32)
    sec.state = {"contribution": _b64(contribution)}
    sec.guard = ReplayGuard()
    sec.save_state()
    sec.save_guard()
    sealed = {peer: seal(sec.keys, pub, contribution, run_id=sec.run_id, round=0,
                         kind=KIND_IDKEY)
              for peer, pub in sorted(sec.directory.items()) if peer != sec.site}
    d = site.describe()
    return {"site": d["site"], "modalities": d["modalities"], "n": d["n"],
            "labelled": d["labelled"], "sealed": sealed}


def _my_pseudonyms(site: Site, sec: SiteSecrets) -> list[tuple[str, str]]:
    key = _unb64(sec.state["group_key"])
    return sorted((pseudonym(key, s), s) for s in site.data.sample_ids)


def align(site: Site, sec: SiteSecrets, req: Mapping) -> dict:
    if "contribution" not in sec.state:
        raise SecurityError(f"site {sec.site}: align before describe (no contribution)")
    contributions = {sec.site: _unb64(sec.state["contribution"])}
    guard = copy.deepcopy(sec.guard)
    for sender, blob in sorted(dict(req.get("sealed", {})).items()):
        contributions[sender] = open_envelope(
            sec.keys, sec.peer(sender), blob, run_id=sec.run_id, guard=guard,
            expected_round=0, kind=KIND_IDKEY)
        if len(contributions[sender]) != 32:
            raise SecurityError(f"site {sec.site}: malformed id-key contribution from "
                                f"{sender!r}")
    sec.state.update(group_key=_b64(group_key(contributions, sec.run_id)),
                     members=sorted(contributions))
    sec.guard = guard
    sec.save_state()
    sec.save_guard()
    return {"pseudonyms": [p for p, _ in _my_pseudonyms(site, sec)]}


def attach(site: Site, sec: SiteSecrets, req: Mapping) -> dict:
    if "group_key" not in sec.state:
        raise SecurityError(f"site {sec.site}: attach before align (no group key)")
    members = set(sec.state["members"])
    n, rows = int(req["n"]), [int(r) for r in req["rows"]]
    mine = _my_pseudonyms(site, sec)
    if len(rows) != len(mine):
        raise FederationError(f"site {sec.site}: the server assigned {len(rows)} rows "
                              f"to {len(mine)} samples")
    global_ids = [f"{_PLACEHOLDER}{r}" for r in range(n)]
    for r, (_, sid) in zip(rows, mine):
        if not 0 <= r < n or not global_ids[r].startswith(_PLACEHOLDER):
            raise FederationError(f"site {sec.site}: invalid or repeated row {r}")
        global_ids[r] = sid
    peers = {str(p): {"rows": sorted(int(r) for r in v["rows"]),
                      "modalities": list(v["modalities"])}
             for p, v in dict(req.get("peers", {})).items()}
    holders = {str(m): sorted(map(str, v)) for m, v in dict(req.get("shared", {})).items()}
    named = set(peers) | {h for v in holders.values() for h in v}
    strangers = named - members
    if strangers or sec.site in peers:
        raise SecurityError(f"site {sec.site}: the server names peers {sorted(strangers)} "
                            f"that did not take part in the id-key agreement")
    for m, hs in holders.items():
        if m not in site.names or sec.site not in hs:
            raise FederationError(f"site {sec.site}: told to share modality {m!r} with "
                                  f"{hs}")
    site.attach(global_ids, dict(req["plan"]))
    site.float16 = bool(req.get("float16", False))
    site.shared = sorted(holders)
    sec.state.update(peers=peers, holders=holders)
    sec.save_state()
    return {"sealed": _seal_posteriors(site, sec, 0)}


def _seal_posteriors(site: Site, sec: SiteSecrets, index: int) -> dict[str, bytes]:
    """Per peer: own posteriors for the rows of window ``index`` the peer shares."""
    if index >= len(site.plan):
        return {}
    wrows = {int(r) for r in site.plan[index].rows}
    table = site.encode(site.window_ids(index))
    row_of = {sid: r for r, sid in enumerate(site.global_ids)
              if not sid.startswith(_PLACEHOLDER)}
    out = {}
    for peer, info in sorted(sec.state["peers"].items()):
        need = set(info["rows"]) & wrows
        if not need:
            continue
        sub = {}
        for m, p in table.items():
            if m in info["modalities"]:
                continue
            keep = [i for i, s in enumerate(p.sample_ids) if row_of[s] in need]
            if keep:
                sub[m] = Posteriors([str(row_of[p.sample_ids[i]]) for i in keep],
                                    p.mu[keep], p.logvar[keep])
        out[peer] = seal(sec.keys, sec.peer(peer), encode_table(sub, site.float16),
                         run_id=sec.run_id, round=index + 1, kind=KIND_POSTERIOR)
    return out


def open_posteriors(site: Site, sec: SiteSecrets, index: int, blobs: Mapping[str, bytes]
                    ) -> tuple[dict[str, Posteriors], ReplayGuard]:
    """Open and check every envelope of window ``index``; nothing is applied here.

    Returns the posteriors keyed by this site's own ids and the updated replay
    guard (to be stored once the window is applied)."""
    wrows = {int(r) for r in site.plan[index].rows}
    peers = sec.state["peers"]
    expected = {p for p, info in peers.items() if set(info["rows"]) & wrows}
    unexpected = set(blobs) - expected
    if unexpected:
        raise UnexpectedEnvelopeError(f"site {sec.site}, window {index}: envelopes from "
                                      f"{sorted(unexpected)}, which share no row of this "
                                      f"window with us")
    missing = expected - set(blobs)
    if missing:
        raise MissingEnvelopeError(f"site {sec.site}, window {index}: no posteriors from "
                                   f"{sorted(missing)}; nothing was applied")
    guard = copy.deepcopy(sec.guard)
    tables = []
    for sender in sorted(blobs):
        payload = open_envelope(sec.keys, sec.peer(sender), blobs[sender],
                                run_id=sec.run_id, guard=guard, expected_round=index + 1,
                                kind=KIND_POSTERIOR)
        t = decode_table(payload, latent_dim=site.model.latent_dim, sender=sender)
        allowed = set(peers[sender]["rows"]) & wrows
        out = {}
        for m, p in t.items():
            if m in site.names or m not in site.global_names:
                raise PosteriorError(f"site {sec.site}: {sender} sent posteriors of "
                                     f"modality {m!r}")
            try:
                rows = [int(s) for s in p.sample_ids]
            except ValueError:
                raise PosteriorError(f"site {sec.site}: {sender} sent a non-row key") \
                    from None
            bad = [r for r in rows if r not in allowed]
            if bad:
                raise PosteriorError(f"site {sec.site}: {sender} sent row {bad[0]}, which "
                                     f"is not a shared row of window {index}")
            out[m] = Posteriors([site.global_ids[r] for r in rows], p.mu, p.logvar)
        tables.append(out)
    return merge_tables(tables), guard


def window(site: Site, sec: SiteSecrets, req: Mapping) -> dict:
    index = int(req["window"])
    if not 0 <= index < len(site.plan):
        raise FederationError(f"site {sec.site}: window {index} is not in the plan")
    others, guard = open_posteriors(site, sec, index, dict(req.get("sealed", {})))
    for arrays in req.get("weights", {}).values():
        site.load_weights(arrays)
    metrics = site.train_window(index, others)
    reply: dict = {"metrics": metrics, "sealed": _seal_posteriors(site, sec, index + 1)}
    masked = {m: _mask(site, sec, m, index) for m in site.shared if m in site.names}
    if masked:
        reply["masked"] = masked
    sec.guard = guard
    sec.save_guard()
    return reply


def _mask(site: Site, sec: SiteSecrets, m: str, index: int) -> dict[str, np.ndarray]:
    holders = sec.state["holders"][m]
    peers = {h: sec.peer(h) for h in holders if h != sec.site}
    arrays = site.weights(m)
    names = sorted(arrays)
    masked = mask_update(sec.keys, peers, [arrays[n] for n in names], run_id=sec.run_id,
                         round=index, weight=float(len(site.data)), group=f"weights/{m}")
    out = dict(zip(names, masked[:-1]))
    out[WEIGHT_KEY] = masked[-1]
    return out


def evaluate(site: Site, sec: SiteSecrets, req: Mapping) -> dict:
    """As in plaintext mode (the final weights go to the server only if collected)."""
    return endpoint.evaluate(site, req)


class SecureLocalTransport:
    """In-process secure sites (tests): ``{key: (Site, SiteSecrets)}``."""

    def __init__(self, sites: Mapping[str, tuple[Site, SiteSecrets]]) -> None:
        self.sites = dict(sites)

    def _each(self, fn, requests):
        return {k: fn(*self.sites[k], r) for k, r in requests.items()}

    def describe(self) -> list[dict]:
        return [{"key": k, **describe(*s)} for k, s in self.sites.items()]

    def align(self, requests):
        return self._each(align, requests)

    def attach(self, requests):
        return self._each(attach, requests)

    def window(self, requests):
        return self._each(window, requests)

    def evaluate(self, requests):
        return self._each(evaluate, requests)


# ---------------------------------------------------------------------- server side
def _blob_dict(rep: Mapping, who: str) -> dict[str, bytes]:
    sealed = rep.get("sealed", {})
    if not isinstance(sealed, Mapping) or not all(
            isinstance(b, (bytes, bytearray)) for b in sealed.values()):
        raise FederationError(f"site {who} sent a malformed sealed map")
    return {str(k): bytes(v) for k, v in sealed.items()}


def route(replies: Mapping[str, Mapping], names: Mapping[str, str]
          ) -> dict[str, dict[str, bytes]]:
    """``{sender key: {"sealed": {recipient name: blob}}}`` -> per recipient key
    ``{sender name: blob}``; the server never opens a blob."""
    key_of = {n: k for k, n in names.items()}
    inbox: dict[str, dict[str, bytes]] = {k: {} for k in names}
    for key, rep in replies.items():
        for recipient, blob in _blob_dict(rep, names[key]).items():
            if recipient not in key_of or recipient == names[key]:
                raise FederationError(f"site {names[key]} sent an envelope to "
                                      f"{recipient!r}, which is not another participant")
            inbox[key_of[recipient]][names[key]] = blob
    return inbox


def secure_fedavg(coord: Coordinator, replies: Mapping[str, Mapping]
                  ) -> dict[str, dict[str, np.ndarray]]:
    """Sample-weighted mean of each shared modality from masked updates only."""
    out = {}
    for m, keys in coord.shared.items():
        masked = {}
        for k in keys:
            got = replies[k].get("masked", {}).get(m)
            if got is None:
                raise FederationError(f"site {coord.sites[k].name} sent no masked update "
                                      f"of {m!r} (dropout recovery is not wired)")
            masked[coord.sites[k].name] = got
        first = next(iter(masked.values()))
        params = sorted(n for n in first if n != WEIGHT_KEY)
        means = aggregate_masked(
            {s: [a[n] for n in params] + [a[WEIGHT_KEY]] for s, a in masked.items()},
            participants=sorted(masked))
        out[m] = {n: v.astype(np.float32) for n, v in zip(params, means)}
    return out


def _masked_bytes(replies: Mapping[str, Mapping]) -> int:
    return int(sum(a.nbytes for r in replies.values()
                   for arrays in r.get("masked", {}).values() for a in arrays.values()))


def _sealed_bytes(replies: Mapping[str, Mapping]) -> int:
    return int(sum(len(b) for r in replies.values() for b in r.get("sealed", {}).values()))


def run_sealed(transport, modalities: list[str], *, batch_size: int, seed: int,
               epochs: int, exchange: str = "step", k: int = 1, local_epochs: int = 1,
               warmup: bool = False,
               float16: bool = False, latent_dim: int | None = None,
               collect_model: bool = False,
               on_window: Callable[[dict], None] | None = None):
    """The round loop of secure mode (same result type as ``run_federation``)."""
    from mmvm.federation.driver import (FederationResult, _nbytes, _weights_for, _window_row,
                                        final_evaluation)

    t0 = time.perf_counter()
    described = {d["key"]: d for d in transport.describe()}
    names = {key: str(d["site"]) for key, d in described.items()}
    if len(set(names.values())) != len(names):
        raise FederationError(f"two sites report the same name: {sorted(names.values())}")
    inbox = route(described, names)
    aligned = transport.align({key: {"sealed": inbox[key]} for key in described})
    infos = []
    for key, d in described.items():
        pseud = list(aligned[key]["pseudonyms"])
        if len(pseud) != int(d["n"]) or len(set(pseud)) != len(pseud):
            raise FederationError(f"site {names[key]}: {len(pseud)} pseudonyms for "
                                  f"{d['n']} samples")
        infos.append(SiteInfo(key, names[key], list(d["modalities"]), pseud))
    coord = Coordinator(infos, modalities, batch_size=batch_size, seed=seed, epochs=epochs,
                        exchange=exchange, k=k, local_epochs=local_epochs, warmup=warmup)
    result = FederationResult(sites={i.key: {"site": i.name, "modalities": i.modalities,
                                             "n": len(i.held)} for i in infos})
    row = {p: r for r, p in enumerate(coord.ids)}
    requests = {}
    for key, info in coord.sites.items():
        peers = {}
        for other, o in coord.sites.items():
            shared = info.held & o.held if other != key else set()
            if shared:
                peers[o.name] = {"rows": sorted(row[p] for p in shared),
                                 "modalities": o.modalities}
        requests[key] = {
            "n": len(coord.ids), "rows": [row[p] for p in info.sample_ids],
            "plan": coord.plan_args, "float16": float16, "peers": peers,
            "shared": {m: sorted(coord.sites[h].name for h in hs)
                       for m, hs in coord.shared.items() if key in hs}}
    replies = transport.attach(requests)
    result.bytes_total += (sum(len(b) for d in described.values()
                               for b in d["sealed"].values())
                           + sum(32 * len(r["pseudonyms"]) for r in aligned.values())
                           + _sealed_bytes(replies))
    averaged: dict[str, dict[str, np.ndarray]] = {}
    for w in range(len(coord.plan)):
        tw = time.perf_counter()
        inbox = route(replies, names)
        requests = {key: {"window": w, "sealed": inbox[key],
                          "weights": _weights_for(coord, key, averaged)}
                    for key in coord.sites}
        sent = sum(sum(len(b) for b in r["sealed"].values()) + _nbytes(r["weights"])
                   for r in requests.values())
        replies = transport.window(requests)
        averaged = secure_fedavg(coord, replies)
        received = _sealed_bytes(replies) + _masked_bytes(replies)
        result.bytes_total += sent + received
        row_w = _window_row(w, coord, replies, sent + received, time.perf_counter() - tw)
        result.history.append(row_w)
        if on_window:
            on_window(row_w)
    final_evaluation(transport, coord, averaged, collect_model, result)
    result.seconds = time.perf_counter() - t0
    return result
