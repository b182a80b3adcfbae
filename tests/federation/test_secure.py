"""Secure mode in one process (SecureLocalTransport): routing, exactness, rejection.

The sealed protocol must train exactly like the plaintext one (with pseudonyms
replaced by the ids themselves, the row order is the same), the server-side dicts
must hold neither ids nor plaintext posterior tables, and a tampered, replayed or
missing envelope must stop a site before it applies anything.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from client.wire import parse_wire, to_record, wire_bytes
from mmvm.data.sites import site_layout, split_sites
from mmvm.federation import sealed
from mmvm.federation.driver import run_federation
from mmvm.federation.endpoint import LocalTransport
from mmvm.federation.posteriors import decode_table
from mmvm.federation.site import Site
from mmvm.secure.envelope import open_envelope, peek_header
from mmvm.secure.errors import ReplayError, SecurityError, TamperedEnvelopeError
from mmvm.secure.keys import SiteKeys

RUN = "77"


def _sites(cfg, tmp_path, layout):
    specs = site_layout(layout, ["m0", "m1", "m2"], 2)
    root = tmp_path / f"sites-{layout}"
    if not root.exists():
        split_sites(cfg.data.root + "/train.parquet", root, specs)
    return specs, root


def _plain(cfg, specs, root, **kw):
    local = {f"n{i}": Site(cfg, s.name, root / s.name / "train.parquet")
             for i, s in enumerate(specs)}
    res = run_federation(LocalTransport(local), ["m0", "m1", "m2"],
                         batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                         epochs=cfg.train.epochs, latent_dim=cfg.model.latent_dim, **kw)
    return res, local


def _secure_sites(cfg, specs, root, state, keys=None):
    keys = keys or {s.name: SiteKeys.generate(s.name) for s in specs}
    directory = {n: k.public for n, k in keys.items()}
    return {f"n{i}": (Site(cfg, s.name, root / s.name / "train.parquet"),
                      sealed.SiteSecrets(keys[s.name], directory, RUN, state))
            for i, s in enumerate(specs)}, keys


def _params(sites):
    out = {}
    for site in sites:
        for m in site.names:
            out.update(site.weights(m))
    return out


def _secure(cfg, sites, transport=None, **kw):
    return run_federation(transport or sealed.SecureLocalTransport(sites),
                          ["m0", "m1", "m2"], batch_size=cfg.train.batch_size,
                          seed=cfg.train.seed, epochs=cfg.train.epochs,
                          latent_dim=cfg.model.latent_dim, secure=True, **kw)


@pytest.fixture
def cfg(tiny_polymnist, tiny_config):
    torch.set_num_threads(1)
    return tiny_config(tiny_polymnist, epochs=1)


@pytest.fixture
def identity_pseudonyms(monkeypatch):
    """Pseudonym = id: the secure run then uses the plaintext run's row order."""
    monkeypatch.setattr(sealed, "pseudonym", lambda key, sid: sid)


@pytest.mark.parametrize("layout", ["vertical", "hybrid"])
def test_secure_equals_plaintext(cfg, tmp_path, layout, identity_pseudonyms):
    """Same parameters as the plaintext federation: posteriors routed sealed per peer
    (vertical) and, for hybrid, m0's weights averaged through masking."""
    specs, root = _sites(cfg, tmp_path, layout)
    plain_res, plain = _plain(cfg, specs, root)
    sites, _ = _secure_sites(cfg, specs, root, tmp_path / "state")
    res = _secure(cfg, sites)
    assert len(res.history) == len(plain_res.history) == 3
    a = _params(plain.values())
    b = _params(s for s, _ in sites.values())
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    # vertical: bit-identical math; hybrid: masked FedAvg in 2^-24 fixed point
    assert worst < (1e-7 if layout == "vertical" else 1e-5), worst
    for r0, r1 in zip(plain_res.history, res.history):
        assert r0["rec_nll"] == pytest.approx(r1["rec_nll"], rel=1e-4)


class Recorder:
    """Wraps a transport and keeps, in Flower's wire encoding, every message the
    server sends and receives (what a ServerApp would hold)."""

    def __init__(self, inner):
        self.inner, self.blobs = inner, []

    def _log(self, d):
        self.blobs.append(wire_bytes(to_record(d)))

    def _call(self, name, requests):
        for r in requests.values():
            self._log(r)
        replies = getattr(self.inner, name)(requests)
        for r in replies.values():
            self._log(r)
        return replies

    def describe(self):
        out = self.inner.describe()
        for d in out:
            self._log(d)
        return out

    def align(self, r):
        return self._call("align", r)

    def attach(self, r):
        return self._call("attach", r)

    def window(self, r):
        return self._call("window", r)

    def evaluate(self, r):
        return self._call("evaluate", r)


def _leaks(dump: bytes, ids: list[str]) -> list[str]:
    found = [i for i in ids if i.encode() in dump]
    found += [m.decode() for m in (b"mmvm.modality", b"sample_id") if m in dump]
    return found


def test_server_sees_no_ids_and_no_posteriors(cfg, tmp_path):
    specs, root = _sites(cfg, tmp_path, "hybrid")
    ids = Site(cfg, specs[-1].name, root / specs[-1].name / "train.parquet").data.sample_ids
    # control: the plaintext protocol does carry ids and Arrow posterior tables
    plain = Recorder(LocalTransport({f"n{i}": Site(cfg, s.name, root / s.name / "train.parquet")
                                     for i, s in enumerate(specs)}))
    run_federation(plain, ["m0", "m1", "m2"], batch_size=64, seed=3, epochs=1, latent_dim=8)
    assert len(_leaks(b"".join(plain.blobs), ids)) > 10
    sites, keys = _secure_sites(cfg, specs, root, tmp_path / "state")
    rec = Recorder(sealed.SecureLocalTransport(sites))
    _secure(cfg, sites, rec)
    dump = b"".join(rec.blobs)
    assert _leaks(dump, ids) == []
    # open every envelope with the recipients' keys (the test knows them all): the
    # posterior values inside never appear in what the server handled
    opened = 0
    for body in rec.blobs:
        d = parse_wire(body)
        for other, blob in d.get("sealed", {}).items():
            head = peek_header(blob)
            if head.kind != "posterior":
                continue
            payload = open_envelope(keys[head.recipient], keys[head.sender].public, blob,
                                    run_id=RUN, expected_round=head.round)
            for p in decode_table(payload).values():
                for row in p.mu[:5]:
                    assert row[:4].astype(np.float32).tobytes() not in dump
                    opened += 1
    assert opened > 0


def _run_until(cfg, tmp_path, attack):
    """Secure vertical run whose window-1 requests pass through ``attack``."""
    specs, root = _sites(cfg, tmp_path, "vertical")
    sites, _ = _secure_sites(cfg, specs, root, tmp_path / "state")
    inner = sealed.SecureLocalTransport(sites)
    seen = []

    class Evil(sealed.SecureLocalTransport):
        def window(self, requests):
            w = next(iter(requests.values()))["window"]
            seen.append(requests)
            if w == 1:
                attack(requests, seen)
            return inner.window(requests)

    return sites, Evil(sites)


def _state(site):
    return site.windows_done, {k: v.clone() for k, v in site.model.state_dict().items()}


def _victim(requests):
    key = sorted(requests)[0]
    return key, sorted(requests[key]["sealed"])[0]


@pytest.mark.parametrize("attack,error", [("tamper", TamperedEnvelopeError),
                                          ("replay", ReplayError),
                                          ("drop", sealed.MissingEnvelopeError)])
def test_attacks_are_rejected_before_anything_is_applied(cfg, tmp_path, attack, error):
    victim = {}

    def act(requests, seen):
        key, sender = _victim(requests)
        victim["key"] = key
        victim["before"] = _state(sites[key][0])
        if attack == "tamper":
            b = bytearray(requests[key]["sealed"][sender])
            b[-1] ^= 1
            requests[key]["sealed"][sender] = bytes(b)
        elif attack == "replay":  # window 0's envelope again
            requests[key]["sealed"][sender] = seen[0][key]["sealed"][sender]
        else:
            del requests[key]["sealed"][sender]

    sites, transport = _run_until(cfg, tmp_path, act)
    with pytest.raises(error) as info:
        _secure(cfg, sites, transport)
    assert isinstance(info.value, SecurityError)
    site, secrets = sites[victim["key"]]
    done, params = victim["before"]
    assert site.windows_done == done == 1
    after = site.model.state_dict()
    assert all(torch.equal(params[k], after[k]) for k in params)
    # the persisted guard did not record window 1 (round 2) of anyone
    fresh = sealed.SiteSecrets(secrets.keys, secrets.directory, RUN, secrets.state_dir)
    assert max(fresh.guard.latest_round.values()) == 1


def test_replay_of_an_accepted_window_is_refused(cfg, tmp_path):
    """The same window-0 message a second time (new process: guard from disk)."""
    specs, root = _sites(cfg, tmp_path, "vertical")
    sites, _ = _secure_sites(cfg, specs, root, tmp_path / "state")
    log = []

    class Tap(sealed.SecureLocalTransport):
        def window(self, requests):
            log.append(requests)
            return super().window(requests)

    _secure(cfg, sites, Tap(sites))
    key = sorted(log[0])[0]
    site, secrets = sites[key]
    fresh = sealed.SiteSecrets(secrets.keys, secrets.directory, RUN, secrets.state_dir)
    with pytest.raises(ReplayError):
        sealed.window(site, fresh, log[0][key])


def test_unknown_site_is_refused(cfg, tmp_path):
    specs, root = _sites(cfg, tmp_path, "vertical")
    sites, keys = _secure_sites(cfg, specs, root, tmp_path / "state")
    site, sec = sites["n0"]
    sealed.describe(site, sec)
    intruder = SiteKeys.generate("mallory")
    blob = sealed.seal(intruder, keys[site.name].public, b"k" * 32, run_id=RUN, round=0,
                       kind="idkey")
    with pytest.raises(sealed.UnknownSiteError):
        sealed.align(site, sec, {"sealed": {"mallory": blob}})
    # a key not matching the directory entry: authentication fails
    forged = sealed.seal(SiteKeys.generate(specs[1].name), keys[site.name].public,
                         b"k" * 32, run_id=RUN, round=0, kind="idkey")
    with pytest.raises(TamperedEnvelopeError):
        sealed.align(site, sec, {"sealed": {specs[1].name: forged}})


def test_pseudonyms_hide_ids_but_align(cfg, tmp_path):
    specs, root = _sites(cfg, tmp_path, "vertical")
    sites, _ = _secure_sites(cfg, specs, root, tmp_path / "state")
    t = sealed.SecureLocalTransport(sites)
    described = {d["key"]: d for d in t.describe()}
    names = {k: d["site"] for k, d in described.items()}
    inbox = sealed.route(described, names)
    aligned = t.align({k: {"sealed": inbox[k]} for k in described})
    ps = [set(r["pseudonyms"]) for r in aligned.values()]
    assert ps[0] == ps[1] == ps[2]  # vertical: every site holds every sample
    ids = sites["n0"][0].data.sample_ids
    assert not set(ids) & ps[0]
    keys = {sec.state["group_key"] for _, sec in sites.values()}
    assert len(keys) == 1
