"""A site that fails a window, or whose reply the server refuses, misses that window
as an away site does (``mmvm/federation/admission.py``), in one process: real sites,
endpoints and round loop. The same in a real deployment: tests/deploy/test_deployment.py.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from mmvm.federation import sealed_align
from mmvm.federation.coordinator import FederationError
from mmvm.federation.local import LocalTransport, Outages
from mmvm.federation.loop import FederationResult
from mmvm.federation.messages import SERVER
from mmvm.federation.posteriors import decode_table
from mmvm.federation.report import summary, window_line
from tests.support.federate import (
    Spoiler,
    failing,
    federate,
    make_sites,
    params,
    plain_endpoints,
    sealed_endpoints,
    site_keys,
    split,
)


def test_a_site_that_fails_a_window_ends_as_if_it_had_been_away(cfg, tmp_path,
                                                                  tiny_polymnist,
                                                                  monkeypatch):
    """n1 raises when it trains window 1 (before applying anything): every site's
    parameters end exactly as in the run where n1 was away in window 1."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    away = make_sites(cfg, specs, root)
    want = federate(cfg, {}, Outages(LocalTransport(plain_endpoints(away)), {"n1": {1}}),
                    exchange="step")
    sites = make_sites(cfg, specs, root)
    failing(monkeypatch, sites["n1"], {1})
    res = federate(cfg, plain_endpoints(sites), exchange="step")
    name = sites["n1"].name
    assert res.missed == want.missed == {name: [1]}
    assert res.history[1]["refused"] == {name: "failed: RuntimeError: CUDA out of memory"}
    assert [r["refused"] for r in res.history[::2]] == [{}, {}]
    # n1 alone holds its modality: window 1's loss is unknown, not the others' sum
    assert np.isnan(res.history[1]["rec_nll"]) and res.history[1]["estimated"] == 1
    assert [r["estimated"] for r in res.history[::2]] == [0, 0]
    a, b = params(away.values()), params(sites.values())
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    assert res.model_state is not None  # it answered the final evaluation


def test_fedavg_goes_on_without_a_site_that_sent_nan_weights(cfg, tmp_path, tiny_polymnist):
    """m0 is held by three sites; n0's window-0 weights are NaN (its training
    diverged): refused, and the weights every holder gets for window 1 are the
    sample-weighted mean of the two others' window-0 weights."""
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=3)
    sites = make_sites(cfg, specs, root)

    def nan(w, k, r):
        if (w, k) != (0, "n0"):
            return r
        bad = {n: np.full_like(a, np.nan) for n, a in r.weights["m0"].items()}
        return dataclasses.replace(r, weights={**r.weights, "m0": bad})

    spy = Spoiler(plain_endpoints(sites), nan)
    res = federate(cfg, {}, spy, exchange="step")
    (why,) = res.history[0]["refused"].values()
    assert f"site {sites['n0'].name} sent non-finite weights m0/" in why
    assert res.missed == {sites["n0"].name: [0]}
    assert spy.requests[1, "n0"].resync and not spy.requests[1, "n1"].resync
    counts = {k: len(sites[k].data) for k in ("n1", "n2")}
    for k in ("n0", "n1", "n2"):
        for name, value in spy.requests[1, k].weights["m0"].items():
            want = sum(c / sum(counts.values())
                       * spy.replies[0, j].weights["m0"][name].astype(np.float64)
                       for j, c in counts.items())
            np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7)
    assert all(np.isfinite(v).all() for v in params(sites.values()).values())
    # window 0's loss: n0's m0 terms are estimated from n1's and n2's; its own reply
    # (taken before the spoiling) says what the loss of the whole window was
    sums = {k: spy.replies[0, k].metrics["rec_nll"] for k in sites}
    true, biased = (sum(sums.values()) / cfg.train.batch_size,
                    (sums["n1"] + sums["n2"]) / cfg.train.batch_size)
    got = res.history[0]
    assert got["estimated"] == 1 and res.history[1]["estimated"] == 0
    assert abs(got["rec_nll"] - true) < abs(biased - true) / 2, (got["rec_nll"], true, biased)


def test_posteriors_that_do_not_decode_leave_the_prior(cfg, tmp_path, tiny_polymnist):
    """n1's window-0 posterior table is cut short in transit: refused, so window 1's
    prior at n0 has only m2's rows (as if n1 had been away), and n1 is back in 2."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)

    def cut(w, k, r):
        if (w, k) != (0, "n1"):
            return r
        return dataclasses.replace(r, posteriors={SERVER: r.posteriors[SERVER][:-40]})

    spy = Spoiler(plain_endpoints(sites), cut)
    res = federate(cfg, {}, spy, exchange="step")
    name = sites["n1"].name
    assert list(res.history[0]["refused"]) == [name]
    assert [r["missed"] for r in res.history] == [[name], [], []]
    n0 = sites["n0"].linked()
    got = decode_table(spy.requests[1, "n0"].posteriors[SERVER], latent_dim=8, n_rows=192,
                       sender=SERVER, frame=n0.frame(sites["n0"].window_rows(1)))
    assert set(got) == {"m2"} and spy.requests[1, "n0"].absent == [name]
    assert (2, "n1") in spy.replies and spy.requests[1, "n1"].resync


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_event_triggered_exchange_starts_afresh_after_a_refusal(cfg, tmp_path,
                                                                tiny_polymnist, quantize):
    """With delta-tol the site sends only rows that moved (int8: increments on what it
    believes the server holds). Its refused reply never reached the server's cache, so
    the next window tells it to resync (start its caches afresh); every later reply
    decodes against the server's cache and is taken, and training stays finite."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)

    def nan(w, k, r):
        if (w, k) != (0, "n1"):
            return r
        return dataclasses.replace(r, metrics={**r.metrics, "rec_nll": float("nan")})

    spy = Spoiler(plain_endpoints(sites), nan)
    res = federate(cfg, {}, spy, exchange="step", delta_tol=0.0, quantize=quantize)
    assert list(res.history[0]["refused"]) == [sites["n1"].name]
    assert spy.requests[1, "n1"].resync and (2, "n1") in spy.replies
    assert [r["refused"] for r in res.history[1:]] == [{}, {}]
    assert all(np.isfinite(v).all() for v in params(sites.values()).values())


def test_a_window_in_which_every_site_is_refused_stops_the_run_at_once(
        cfg, tmp_path, tiny_polymnist):
    """All sites refused by the same window: the run's fault (a config, mixed code
    versions), not one site's; waiting max-refused windows would only hide it."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)

    def nan(w, k, r):
        return dataclasses.replace(r, metrics={**r.metrics, "reg": float("nan")})

    with pytest.raises(FederationError, match=r"window 1/\d+: every site failed or was "
                                              r"refused, so the fault is more likely the "
                                              r"run's.*site-m0: sent metrics"):
        federate(cfg, {}, Spoiler(plain_endpoints(sites), nan), exchange="step")


def test_every_site_out_of_disk_is_said_to_be_a_full_disk(cfg, tmp_path, tiny_polymnist,
                                                          monkeypatch):
    """One state-dir for all simulated sites, full: the message blamed the run's
    config or code versions."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    for site in sites.values():
        failing(monkeypatch, site, {1}, OSError(28, "No space left on device"))
    with pytest.raises(FederationError, match=r"window 2/\d+: every site failed or was "
                                              r"refused, so the disk they write to is "
                                              r"full \(one file system under a shared "
                                              r"state-dir\?\): site-m0: failed: OSError"):
        federate(cfg, plain_endpoints(sites), exchange="step")


def test_secure_mode_leaves_a_failed_site_out_through_the_dropout_path(
        cfg, tmp_path, tiny_polymnist, monkeypatch):
    """A group of four holders; n0 fails window 1 in a secure run: the survivors'
    masked sum is unmasked without it, as plaintext averages without an away n0."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)  # same row order
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=4)
    plain = make_sites(cfg, specs, root)
    want = federate(cfg, {}, Outages(LocalTransport(plain_endpoints(plain)), {"n0": {1}}),
                    exchange="step")
    sites = make_sites(cfg, specs, root)
    failing(monkeypatch, sites["n0"], {1})
    res = federate(cfg, sealed_endpoints(sites, site_keys(sites), tmp_path / "state"),
                   exchange="step", secure=True)
    assert res.missed == want.missed == {sites["n0"].name: [1]}
    a, b = params(plain.values()), params(sites.values())
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5


@pytest.mark.parametrize("limit", [2, 0])
def test_a_site_that_fails_the_unmask_step_leaves_that_windows_mean_out(
        cfg, tmp_path, tiny_polymnist, monkeypatch, limit):
    """Secure, groups of four holders; n0 answers window 1 but fails its unmask step:
    the modalities it shares are not averaged that window (each holder keeps its own
    weights, as when a survivor is away at the unmask step), and it counts as a
    refusal (max-refused = 0: it is excluded from the rest of the run, named)."""
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=4)
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state")
    channel, unmask = endpoints["n0"].channel, endpoints["n0"].channel.unmask

    def failing(site, req):
        if req.window == 1:
            raise OSError(28, "No space left on device")
        return unmask(site, req)

    monkeypatch.setattr(channel, "unmask", failing)
    spy = Spoiler(endpoints)
    name = sites["n0"].name
    if limit == 0:
        res = federate(cfg, {}, spy, exchange="step", secure=True, max_refused=0)
        assert re.search(r"failed, .* the last time: failed the unmask step: OSError",
                         res.history[1]["excluded"][name])
        assert res.history[2]["left_out"] == [name]
        return
    res = federate(cfg, {}, spy, exchange="step", secure=True)
    assert res.history[1]["refused"] == {
        name: "failed the unmask step: OSError: [Errno 28] No space left on device"}
    assert res.history[1]["missed"] == [] and res.missed == {}
    for m in sites["n0"].names:  # window 1 averaged nothing of n0's modalities
        for k in ("n0", "n1"):
            got, before = spy.requests[2, k].weights[m], spy.requests[1, k].weights[m]
            assert all(np.array_equal(got[n], before[n]) for n in before)


@pytest.mark.parametrize("payload", [b"not an Arrow table", "own-modality",
                                     "third-modality", "huge-logvar"])
def test_a_peer_that_seals_bad_posteriors_is_named_not_its_recipient(
        cfg, tmp_path, tiny_polymnist, monkeypatch, payload):
    """A malicious n0 seals, with its own valid keys, posteriors that do not decode or
    that claim the recipient's own modality. The recipient's protection refuses them
    (a SecurityError: the run stops, it is not a fault to ride through) and names n0,
    so an honest recipient is never the one refused or blamed."""
    from mmvm.federation.posteriors import Posteriors, encode_table
    from mmvm.federation.site_errors import refused_by_protection
    from mmvm.secure.envelope import seal
    from mmvm.secure.errors import PeerContentError
    from tests.support.federate import RUN

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    endpoints = sealed_endpoints(sites, keys, tmp_path / "state")
    evil, real = endpoints["n0"].channel, endpoints["n0"].channel.outgoing

    def outgoing(site, index):
        out = {}
        for peer in real(site, index):
            body, mine = payload, site.names[0]
            theirs = next(s.names[0] for s in sites.values() if s.name == peer)
            m = {"own-modality": theirs, "huge-logvar": mine,
                 "third-modality": ({"m0", "m1", "m2"} - {mine, theirs}).pop()}.get(payload)
            if m is not None:  # rows of this window it shares with the peer
                rows = np.intersect1d(site.window_rows(index),
                                      evil.sec.state["peers"][peer]["rows"])
                lv = np.full((len(rows), 8), 200.0 if payload == "huge-logvar" else 0.0,
                             np.float32)
                body = encode_table({m: Posteriors(rows, np.zeros_like(lv), lv)}, False)
            out[peer] = seal(keys[site.name], keys[peer].public, body, run_id=RUN,
                             round=index + 1, kind="posterior")
        return out

    monkeypatch.setattr(evil, "outgoing", outgoing)
    with pytest.raises(PeerContentError, match=rf": {sites['n0'].name} sent ") as info:
        federate(cfg, {}, LocalTransport(endpoints), exchange="step", secure=True)
    assert refused_by_protection(f"PeerContentError: {info.value}")


def test_the_console_says_which_window_was_refused_and_why():
    row = {"window": 3, "epoch": 1, "rec_nll": 1.0, "reg": 0.1, "bytes": 10, "seconds": 1.0,
           "missed": ["b", "c"], "refused": {"c": "failed: OSError: disk full"}}
    assert window_line(row, 10, 4.0).endswith(
        "(without b: no reply)  (without c: refused, failed: OSError: disk full)")

    result = FederationResult(
        seconds=1.0, missed={"c": [3, 4]},
        history=[{**row, "window": w, "refused": {"c": f"failed: {w}"}} for w in (3, 4)])
    text = summary(result, "/runs/1", {}, None)
    assert "windows refused" in text and "c 4-5 (last: failed: 4)" in text


def test_a_reason_keeps_its_text_not_a_terminals_colour_codes():
    """A site killed in a simulation failed with Ray's coloured traceback: the
    window's record and the console showed '[36mray::ClientAppActor.run()'."""
    from mmvm.federation.admission import REASON_KEPT, short_reason

    said = short_reason("failed: \x1b[36mray::ClientAppActor.run()\x1b[39m (pid=7)\nx")
    assert said == "failed: ray::ClientAppActor.run() (pid=7) x"
    assert short_reason("y" * 400) == "y" * REASON_KEPT + " ..."
