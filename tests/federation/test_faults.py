"""Sites that miss windows, in one process (real sites, endpoints and round loop).

A site that is away in window w (:class:`mmvm.federation.local.Outages`: it receives
neither the window nor its unmask step) must leave the mixture prior of the next
window (its posteriors for those rows never arrived) and FedAvg, train again when it
is back, and get the averaged weights it missed. Secure mode must do exactly what
plaintext does with the same outages (the masking's dropout path). Real processes
(SuperNodes killed and restarted) are in tests/deploy/test_node_faults.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.federation import sealed_align
from mmvm.federation.attendance import Attendance
from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.local import LocalTransport, Outages
from mmvm.federation.loop import FederationResult
from mmvm.federation.messages import SERVER
from mmvm.federation.posteriors import decode_table
from mmvm.federation.report import summary, window_line
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.federation.site import Site
from mmvm.federation.site_store import SiteStore
from tests.support.federate import (
    Spoiler,
    federate,
    make_sites,
    params,
    plain_endpoints,
    sealed_endpoints,
    secrets,
    site_keys,
    split,
)


def _adam_steps(site) -> int:
    return int(next(iter(site.optimizer.state_dict()["state"].values()))["step"])


def test_an_away_site_leaves_the_prior_and_trains_again(cfg, tmp_path, tiny_polymnist):
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    spy = Spoiler(plain_endpoints(sites))
    res = federate(cfg, {}, Outages(spy, {"n1": {1}}), exchange="step")
    away = sites["n1"].name
    assert res.missed == {away: [1]}
    assert [r["missed"] for r in res.history] == [[], [away], []]
    assert [r["back"] for r in res.history] == [{}, {}, {away: [1]}]
    # window 1: n1's posteriors came with its window-0 reply; window 2: none (away in 1)
    n0 = sites["n0"].linked()
    seen = {w: set(decode_table(spy.requests[w, "n0"].posteriors[SERVER], latent_dim=8,
                                n_rows=192, sender=SERVER,
                                frame=n0.frame(sites["n0"].window_rows(w)))) for w in (1, 2)}
    assert seen == {1: {"m1", "m2"}, 2: {"m2"}}
    assert spy.requests[2, "n0"].absent == [away] and spy.requests[2, "n1"].resync
    assert (1, "n1") not in spy.replies and (2, "n1") in spy.replies  # back in window 2
    assert [_adam_steps(sites[k]) for k in ("n0", "n1", "n2")] == [3, 2, 3]
    assert res.model_state is not None  # everyone answered the final evaluation


def test_fedavg_goes_on_among_the_sites_that_answered(cfg, tmp_path, tiny_polymnist):
    """m0 is held by three sites; n0 is away in window 0: the weights n0 gets when it
    is back are the sample-weighted mean of the two others' window-0 weights."""
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=3)
    sites = make_sites(cfg, specs, root)
    spy = Spoiler(plain_endpoints(sites))
    res = federate(cfg, {}, Outages(spy, {"n0": {0}}), exchange="step")
    assert res.missed == {sites["n0"].name: [0]}
    counts = {k: len(sites[k].data) for k in ("n1", "n2")}
    total = sum(counts.values())
    got = spy.requests[1, "n0"].weights["m0"]
    for name, value in got.items():
        want = sum(c / total * spy.replies[0, k].weights["m0"][name].astype(np.float64)
                   for k, c in counts.items())
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", ["vertical", "hybrid"])
def test_secure_dropout_equals_plaintext_dropout(cfg, tmp_path, tiny_polymnist, layout,
                                                 monkeypatch):
    """Envelopes from an absent peer are not required; its masked update leaves the
    sum through the survivors' revealed pair seeds: the same parameters as plaintext."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)  # same row order
    specs, root = split(tiny_polymnist, tmp_path, layout, shards=4)  # a group of 4
    away = {"n0": {1}}  # can lose one holder (a group of 3 cannot: test_routing)
    plain = make_sites(cfg, specs, root)
    plain_res = federate(cfg, {}, Outages(LocalTransport(plain_endpoints(plain)), away),
                         exchange="step")
    sites = make_sites(cfg, specs, root)
    endpoints = sealed_endpoints(sites, site_keys(sites), tmp_path / "state")
    res = federate(cfg, {}, Outages(LocalTransport(endpoints), away), exchange="step",
                   secure=True)
    assert res.missed == plain_res.missed == {sites["n0"].name: [1]}
    a, b = params(plain.values()), params(sites.values())
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst < (1e-7 if layout == "vertical" else 1e-5), worst


def test_below_min_sites_the_server_pauses_then_fails_clearly(cfg, tmp_path, tiny_polymnist):
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    outages = Outages(LocalTransport(plain_endpoints(sites)), {"n1": {1, 2}})
    with pytest.raises(FederationError, match=r"min-sites = 3; sites \['site-m1'\] did "
                                              r"not return within pause-timeout"):
        federate(cfg, {}, outages, exchange="step", min_sites=3, pause_timeout=0.2)


def test_attendance_counts_missed_windows_and_the_quorum():
    att = Attendance({"k0": "a", "k1": "b", "k2": "c"}, min_sites=2, pause_timeout=1.0)
    assert att.record(0, ["k0", "k1", "k2"]) == []
    assert att.record(1, ["k0"]) == ["b", "c"]
    assert att.record(2, ["k0", "k2"]) == ["b"]
    assert att.summary() == {"b": [1, 2], "c": [1]}
    att.wait_for_quorum(lambda: [])  # the last window had 2 answers: no pause
    att.record(3, ["k0"])
    att.wait_for_quorum(lambda: ["k0", "k1"])  # two connected again: go on
    att.pause_timeout = 0.0
    with pytest.raises(FederationError, match=r"only 1 of the 3 sites"):
        att.wait_for_quorum(lambda: ["k0"])
    with pytest.raises(FederationError, match=r"although 3 are connected: a window takes "
                                              r"longer than site-timeout"):
        att.wait_for_quorum(lambda: ["k0", "k1", "k2"])


def test_a_site_that_returns_and_the_end_of_a_pause_are_said():
    """Walkthrough (deployment): the console said 'without hospital-b' and 'paused',
    never that hospital-b had come back or that the run went on."""
    att = Attendance({"k0": "a", "k1": "b", "k2": "c"}, min_sites=2, pause_timeout=5.0,
                     poll=0.01)
    att.record(0, ["k0", "k1", "k2"])
    att.record(1, ["k0", "k2"])
    att.record(2, ["k0"])  # b and c away: below the quorum
    said, calls = [], iter([["k0"], ["k0"], ["k0", "k1"]])
    att.wait_for_quorum(lambda: next(calls), said.append)
    assert said[0].startswith("mmvm: paused: 1 of 3 sites connected")
    assert said[1].startswith("mmvm: going on: 2 of 3 sites connected again after")
    assert len(said) == 2
    att.record(3, ["k0", "k1"])
    assert att.back == {"b": [1, 2]}
    att.record(4, ["k0", "k1", "k2"])
    assert att.back == {"c": [2, 3]}
    att.record(5, ["k0", "k1", "k2"])
    assert att.back == {}
    row = {"window": 4, "epoch": 1, "rec_nll": 1.0, "reg": 0.1, "bytes": 10,
           "seconds": 1.0, "missed": [], "back": {"c": [2, 3]}}
    assert window_line(row, 10, 4.0).endswith("(c answers again after missing windows 3-4)")
    row["back"] = {"b": [1]}
    assert window_line(row, 10, 4.0).endswith("(b answers again after missing window 2)")


def test_a_node_of_no_site_while_one_is_away_is_named_once():
    """Walkthrough (deployment without node authentication): site b's SuperNode,
    killed and restarted, registered as a new node id; the run went on without b to
    the end, 'completed', and nothing said that b had come back under another id."""
    att = Attendance({"k0": "a", "k1": "b", "k2": "c"}, min_sites=2, pause_timeout=1.0)
    said = []
    att.record(0, ["k0", "k2"])
    att.wait_for_quorum(lambda: ["k0", "k2", "k9"], said.append)
    att.wait_for_quorum(lambda: ["k0", "k2", "k9"], said.append)  # said once
    (line,) = said
    assert line.startswith("mmvm: note: node k9 connected, none of this run's sites, "
                           "while b is away: a SuperNode restarted without node "
                           "authentication comes back under a new node id")
    att.record(1, ["k0", "k1", "k2"])  # nobody away: not asked
    att.wait_for_quorum(lambda: ["k0", "k1", "k2", "k8"], said.append)
    assert len(said) == 1


def test_the_console_says_which_site_was_missing():
    row = {"window": 3, "epoch": 1, "rec_nll": 1.0, "reg": 0.1, "bytes": 10, "seconds": 1.0,
           "missed": ["hospital-b"]}
    assert window_line(row, 10, 4.0).endswith("(without hospital-b: no reply)")

    result = FederationResult(seconds=1.0, missed={"hospital-b": [2, 3, 4, 7]},
                              not_evaluated=["c"])
    text = summary(result, "/runs/1", {}, None)
    assert "hospital-b 3-5, 8" in text and "sites ['c'] did not answer" in text


@pytest.mark.parametrize("kind", ["window", "align"])
def test_a_secure_site_that_dies_before_writing_its_state_can_retry(cfg, tmp_path,
                                                                    tiny_polymnist, kind):
    """A site's replay guard is committed after its state is written. A process that
    dies in between (here: the disk is full when it writes window 1, or its alignment
    step) comes back with the state before that message and must be able to answer it
    again from the same envelopes; committed first, the guard would refuse them as a
    replay and the site could never continue the run."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys = site_keys(sites)
    endpoints = sealed_endpoints(sites, keys, tmp_path / "state")
    victim, site = "n0", sites["n0"]
    store = SiteStore(tmp_path / "live" / f"{site.name}.pt")
    endpoints[victim] = Endpoint(site, endpoints[victim].channel, store=store)
    seen = {}

    class Stop(Exception):
        pass

    class DiskFull(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests[victim]
            if r.kind == kind and getattr(r, "window", 1) == 1:
                seen["request"] = r

                def full(*args, **kwargs):
                    raise OSError(28, "No space left on device")
                store.save = full
                replies = super().exchange(requests, wait, need)
                seen["failed"] = replies.get(victim)
                raise Stop  # the server asks again (here: as a restarted one would)
            return super().exchange(requests, wait, need)

    # alignment is a step every site must answer: its failure fails the run at once
    with pytest.raises(Stop if kind == "window" else OSError):
        federate(cfg, {}, transport=DiskFull(endpoints), secure=True, exchange="step")
    # the SuperNode's next process: the site and its session as they are on disk
    again = Site(cfg, site.name, site.train_path, site.test_path)
    SiteStore(store.path).refresh(again)
    assert (again.progress.phase, again.progress.window) == \
        (("attached", 0) if kind == "window" else ("described", -1))
    fresh = Endpoint(again, SealedChannel(secrets(again, keys, tmp_path / "state")),
                     store=SiteStore(store.path))
    reply = fresh.handle(seen["request"])
    if kind == "window":
        assert "No space left" in str(seen["failed"])
        assert again.progress.window == 1 and reply.metrics["rows"] > 0
        assert fresh.handle(seen["request"]) is reply  # asked again: the kept reply
    else:
        assert again.progress.phase == "aligned"
        assert len(reply.identifiers) == len(again.data)


def test_a_site_that_fails_the_final_evaluation_leaves_the_run_written(cfg, tmp_path,
                                                                       tiny_polymnist):
    """One site's evaluation raises (e.g. its test file is corrupt): the trained run is
    kept, with the others' numbers, that site listed with its reason, and no
    assembled model (its weights stayed with it); it used to fail the whole run."""
    from mmvm.federation.results import write_results
    from mmvm.federation.settings import settings_for

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    name = sites["n2"].name
    test_file = next((root / name).glob("test*.parquet"))
    test_file.write_bytes(test_file.read_bytes()[:500])  # cut short, as the tester did
    res = federate(cfg, plain_endpoints(sites), exchange="step")
    assert len(res.history) == 3 and res.not_evaluated == [name]
    assert list(res.evaluation_errors) == [name]
    assert "not a Parquet file" in res.evaluation_errors[name]
    assert sorted(e["site"] for e in res.evaluation.values()) == sorted(
        sites[k].name for k in ("n0", "n1"))
    assert res.model_state is None
    text = summary(res, str(tmp_path / "run"),
                   {"results": str(tmp_path / "run" / "results.json")}, None)
    assert f"{name} failed it: {res.evaluation_errors[name]}" in text
    write_results(tmp_path / "run", settings_for(cfg), res)
    assert (tmp_path / "run" / "results.json").is_file()


@pytest.mark.parametrize("delta_tol", [None, 0.0])
def test_a_site_restarted_from_an_older_checkpoint_goes_on(cfg, tmp_path, tiny_polymnist,
                                                           delta_tol):
    """A simulation's site host that dies is started again from the site's last
    checkpoint (here: its state after attach) while the server believes it trained
    the last window. Exact exchange sends a window's posteriors in full: the site
    trains on from that state and the run records what it lost. Event-triggered
    exchange sends only news on what the site no longer holds: it sits the window
    out, then resyncs (a killed host failed the run after max-refused windows)."""
    from mmvm.federation.channel import PlainChannel

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    victim, name = "n1", sites["n1"].name
    path = tmp_path / "live" / f"{name}.pt"

    class Restart(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            r = requests.get(victim)
            if r is not None and r.kind == "window" and r.window == 1:
                back = Site(cfg, name, sites[victim].train_path, sites[victim].test_path)
                SiteStore(path).refresh(back)
                self.endpoints[victim] = Endpoint(back, PlainChannel())
                self.back = back
            replies = super().exchange(requests, wait, need)
            if r is not None and r.kind == "attach":  # the checkpoint after attach
                SiteStore(path).save(sites[victim], snapshot=False)
            return replies

    transport = Restart(plain_endpoints(sites))
    res = federate(cfg, {}, transport, exchange="step",
                   **({} if delta_tol is None else {"delta_tol": delta_tol}))
    assert len(res.history) == 3 and res.model_state is not None
    if delta_tol is None:
        assert [r["restored"] for r in res.history] == [{}, {name: -1}, {}]
        assert [r["missed"] for r in res.history] == [[], [], []]
        assert _adam_steps(transport.back) == 2  # windows 1 and 2: window 0's is lost
        text = summary(res, "/runs/1", {}, None)
        assert f"{name} at window 2 (from its state after attach)" in text
        line = window_line(res.history[1], 3, 1.0)
        assert f"({name} restarted from its state after attach" in line
    else:
        assert res.missed == {name: [1]} and "restarted" in res.history[1]["refused"][name]
        assert [r["restored"] for r in res.history] == [{}, {}, {}]  # resynced at 2
        assert _adam_steps(transport.back) == 1


def test_a_window_that_waited_its_whole_site_timeout_says_so_once(cfg, tmp_path,
                                                                   tiny_polymnist):
    """Sites slower than site-timeout train their windows all the same and are
    listed as having missed them (the deployment walkthrough, at 20 s): a note says
    so, once, when a window waited its whole site-timeout and went on without some."""
    from mmvm.federation.loop import run_federation
    from mmvm.federation.settings import settings_for

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    lines = []
    run_federation(Outages(LocalTransport(plain_endpoints(sites)), {"n1": {1, 2}}),
                   settings_for(cfg, exchange="step", float16=False, site_timeout=1e-6),
                   log=lines.append)
    notes = [line for line in lines if "waited its site-timeout" in line]
    assert len(notes) == 1 and notes[0].startswith("mmvm: note: window 2 waited its "
                                                   "site-timeout = 1e-06 s")
    assert "raise site-timeout if they are slow, not away" in notes[0]


class BackForTheEvaluation(Outages):
    """Away in its windows; connected again a few polls after the last one."""

    def __init__(self, inner, away, polls: int = 3) -> None:
        super().__init__(inner, away)
        self.polls = polls

    def online(self):
        self.polls -= 1
        return self.inner.online() if self.polls < 0 else super().online()


def test_a_site_lost_in_the_last_window_is_waited_for_before_the_evaluation(
        cfg, tmp_path, tiny_polymnist):
    """Two hospitals, min-sites = 2: one lost during the last window, and the run went
    on to evaluate without it and finished 'completed' with no pause, though it was
    back a minute later (deployment walkthrough)."""
    import dataclasses

    from mmvm.federation.loop import run_federation
    from mmvm.federation.settings import settings_for

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    said = []
    s = settings_for(cfg, exchange="step", min_sites=3, pause_timeout=30.0, float16=False)
    transport = BackForTheEvaluation(LocalTransport(plain_endpoints(sites)), {"n1": {2}})
    res = run_federation(transport, dataclasses.replace(s), log=said.append)
    assert res.missed == {sites["n1"].name: [2]}
    assert any(line.startswith("mmvm: paused: 2 of 3 sites connected, waiting for "
                               "min-sites = 3") for line in said)
    assert not res.not_evaluated and res.model_state is not None  # n1 evaluated too
    # away for good: the pause fails as a window's does
    gone = Outages(LocalTransport(plain_endpoints(make_sites(cfg, specs, root))),
                   {"n1": {2}})
    with pytest.raises(FederationError, match=r"sites \['site-m1'\] did not return "
                                              r"within pause-timeout"):
        federate(cfg, {}, gone, exchange="step", min_sites=3, pause_timeout=0.2)


def test_a_corrupt_masked_update_costs_its_modality_one_window_not_the_run(
        cfg, tmp_path, tiny_polymnist):
    """One holder of m0 sends a masked update whose weight word is off (a corrupt
    machine, or a hostile site): the unmasked total is not the holders' count. That
    ended the run for everyone, naming no one (review of a hostile site, 2026-12-07).
    Now m0 is not averaged that window, the console says why, and the run trains on:
    m0 is averaged again the next window."""
    from tests.support.federate import Tampering
    from tests.support.malicious import hybrid_sites

    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist)
    holder = next(k for k, s in sites.items() if "m0" in s.names)

    def corrupt(requests, replies):
        r = replies.get(holder)
        if next(iter(requests.values())).kind == "window" and \
                next(iter(requests.values())).window == 0 and "m0" in r.weights:
            r.weights["m0"]["__weight__"] = r.weights["m0"]["__weight__"] + np.uint64(1 << 40)

    result = federate(cfg, {}, transport=Tampering(endpoints, corrupt), secure=True,
                      exchange="step")
    first, *rest = result.history
    assert "m0" in first["unaveraged"] and "total weight" in first["unaveraged_why"]["m0"]
    assert rest and all("m0" not in row["unaveraged"] for row in rest)
    assert "(m0 not averaged this window: masked FedAvg of 'm0': total weight" in window_line(
        first, len(result.history), 1.0)
    assert len(result.evaluation) == len(sites)  # every site trained to the end
