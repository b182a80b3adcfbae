"""A server that dies mid-run and is started again continues the run exactly.

The server writes its state after attach and after every window
(``mmvm.federation.server_state``); a crash is simulated by a transport that raises
when window k is sent, either before the sites see it or after they trained it (the
server died before it recorded their replies: the sites are one window ahead and
must repeat their replies, not train or mask again). The sites are rebuilt from
their state files, as restarted processes would be, and a new loop resumes from the
server's checkpoint. In exact mode the result equals a run without the crash.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.config import ConfigError
from mmvm.federation import sealed_align
from mmvm.federation.coordinator import FederationError
from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.settings import settings_for
from mmvm.federation.site import Site
from mmvm.federation.site_store import SiteStore
from tests.support.crashes import (
    Crash,
    CrashAt,
    GoneAtResume,
    StaleListed,
    Stored,
    every_third,
)
from tests.support.federate import (
    RUN,
    make_sites,
    params,
    plain_endpoints,
    restarted,
    sealed_endpoints,
    site_keys,
    split,
)

pytestmark = pytest.mark.epochs(2)  # six one-step windows (conftest.py's cfg)


def _endpoints(sites, secure, keys, state):
    return sealed_endpoints(sites, keys, state) if secure else plain_endpoints(sites)


@pytest.mark.parametrize("secure,layout,k,delivered", [
    (False, "vertical", 3, False), (False, "vertical", 3, True),
    (True, "hybrid", 2, True)])
def test_a_resumed_run_ends_as_if_nothing_happened(cfg, tmp_path, tiny_polymnist, secure,
                                                   layout, k, delivered, monkeypatch):
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)  # one row order
    specs, root = split(tiny_polymnist, tmp_path, layout, shards=4)
    opts = {"exchange": "step", "float16": False, "secure": secure, "checkpoint_every": 1}
    ref_sites = make_sites(cfg, specs, root)
    ref_keys = site_keys(ref_sites)
    ref = run_federation(LocalTransport(_endpoints(ref_sites, secure, ref_keys,
                                                   tmp_path / "ref-state")),
                         settings_for(cfg, **opts))

    sites = make_sites(cfg, specs, root)
    keys, state, ckpt = ref_keys, tmp_path / "state", tmp_path / "server_state.pt"
    with pytest.raises(Crash):
        run_federation(CrashAt(_endpoints(sites, secure, keys, state), k, delivered),
                       settings_for(cfg, **opts), checkpoint=ckpt)
    if delivered:
        assert all(s.progress.window == k for s in sites.values())  # one ahead
    sites = restarted(cfg, sites, tmp_path)
    lines = []
    res = run_federation(LocalTransport(_endpoints(sites, secure, keys, state)),
                         settings_for(cfg, resume=RUN, **opts), log=lines.append,
                         checkpoint=ckpt, resume_from=ckpt)
    assert f"after window {k}/6" in lines[0]
    assert [r["window"] for r in res.history] == list(range(6))
    assert res.resumed_after == k  # the summary says k of the 6 came before the resume
    a, b = params(ref_sites.values()), params(sites.values())
    worst = max(float(np.abs(a[n] - b[n]).max()) for n in a)
    assert worst == 0.0, worst
    assert [r["rec_nll"] for r in res.history] == pytest.approx(
        [r["rec_nll"] for r in ref.history], rel=1e-6)


def test_resume_refuses_other_settings_and_other_sites(cfg, tmp_path, tiny_polymnist):
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    ckpt = tmp_path / "server_state.pt"
    with pytest.raises(Crash):
        run_federation(CrashAt(plain_endpoints(sites), 1, False),
                       settings_for(cfg, exchange="step"), checkpoint=ckpt)
    with pytest.raises(ConfigError, match=r"other settings \(plan\.exchange: 'step' -> "
                                          r"'round'\); a resumed run must train"):
        run_federation(LocalTransport(plain_endpoints(sites)),
                       settings_for(cfg, exchange="round", resume=RUN), resume_from=ckpt)
    # the experiment the sites train (they refused another without naming the key), and
    # a simulation's data (other samples misaligned every row, in 700 lines of Ray)
    import dataclasses

    lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.5))
    with pytest.raises(ConfigError, match=r"\(experiment\.train\.lr: 0\.001 -> 0\.5\)"):
        run_federation(LocalTransport(plain_endpoints(sites)),
                       settings_for(lr, exchange="step", resume=RUN), resume_from=ckpt)
    with pytest.raises(ConfigError, match=r"\(simulation\.n-train: \d+ -> 200\)"):
        run_federation(LocalTransport(plain_endpoints(sites)),
                       settings_for(cfg, exchange="step", n_train=200, resume=RUN),
                       resume_from=ckpt)
    strangers = make_sites(cfg, *split(tiny_polymnist, tmp_path, "horizontal", shards=3))
    with pytest.raises(FederationError, match="resume refused: the site has no state of "
                       "this run \\(its state-dir"):
        run_federation(LocalTransport(plain_endpoints(strangers)),
                       settings_for(cfg, exchange="step", resume=RUN), resume_from=ckpt)
    fresh = make_sites(cfg, specs, root)  # sites that never took part
    with pytest.raises(FederationError, match="resume refused: the site has no state of "
                       "this run \\(its state-dir"):
        run_federation(LocalTransport(plain_endpoints(fresh)),
                       settings_for(cfg, exchange="step", resume=RUN), resume_from=ckpt)
    with pytest.raises(ConfigError, match="no server state"):
        run_federation(LocalTransport(plain_endpoints(sites)),
                       settings_for(cfg, exchange="step", resume=RUN),
                       resume_from=tmp_path / "missing.pt")


def test_a_listed_site_that_is_gone_at_resume_is_away_not_fatal(cfg, tmp_path,
                                                                tiny_polymnist):
    """After a restart the SuperLink may still list a SuperNode that died (its
    heartbeat not yet expired). The resumed run goes on with the others (min-sites
    allowing), says the site is away, and the site trains again when it answers;
    with fewer answers than min-sites the resume fails, saying so."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites, ckpt = make_sites(cfg, specs, root), tmp_path / "server_state.pt"
    opts = {"exchange": "step", "checkpoint_every": 1}
    with pytest.raises(Crash):
        run_federation(CrashAt(plain_endpoints(sites), 3, False), settings_for(cfg, **opts),
                       checkpoint=ckpt)
    with pytest.raises(FederationError, match=r"2 of the 3 connected SuperNodes .* "
                                              r"min-sites = 3"):
        run_federation(GoneAtResume(plain_endpoints(sites), "n2"),
                       settings_for(cfg, resume=RUN, min_sites=3, site_timeout=5.0, **opts),
                       resume_from=ckpt, checkpoint=ckpt)
    lines = []
    res = run_federation(GoneAtResume(plain_endpoints(sites), "n1"),
                         settings_for(cfg, resume=RUN, min_sites=2, **opts),
                         log=lines.append, checkpoint=ckpt, resume_from=ckpt)
    assert f"away: {sites['n1'].name})" in lines[0], lines[0]
    assert [r["window"] for r in res.history] == list(range(6))
    assert sites["n1"].progress.window == 5  # it answered the windows after the resume


def test_sites_that_come_back_with_other_node_ids_are_found_by_name(cfg, tmp_path,
                                                                     tiny_polymnist):
    """Simulated SuperNodes, or SuperNodes without node authentication, get a new node
    id when they start again: the resumed run maps them by site name, exactly."""
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=3)
    ref = make_sites(cfg, specs, root)
    run_federation(LocalTransport(plain_endpoints(ref)),
                   settings_for(cfg, exchange="step", delta_tol=0.0, checkpoint_every=1))
    sites = make_sites(cfg, specs, root)
    ckpt = tmp_path / "server_state.pt"
    with pytest.raises(Crash):
        run_federation(CrashAt(plain_endpoints(sites), 4, True),
                       settings_for(cfg, exchange="step", delta_tol=0.0, checkpoint_every=1),
                       checkpoint=ckpt)
    renamed = {f"new-{k}": s for k, s in reversed(list(sites.items()))}
    # the old node ids are still listed a while (Flower: until their heartbeats lapse,
    # up to a minute): the resume waits for them to go, asking no extra node (a
    # plaintext one's answer is only its word: it could answer as a slow site)
    stale = StaleListed(plain_endpoints(renamed), stale=list(sites), lapse=3)
    opts = {"exchange": "step", "delta_tol": 0.0, "resume": RUN, "checkpoint_every": 1}
    with pytest.raises(FederationError, match=r"10 SuperNodes are connected, the run had "
                                              r"5 sites \(still after \d+ s: a SuperNode"):
        run_federation(StaleListed(plain_endpoints(renamed), list(sites), stale_wait=0.01),
                       settings_for(cfg, **opts), resume_from=ckpt)
    lines = []
    run_federation(stale, settings_for(cfg, **opts), resume_from=ckpt, log=lines.append)
    assert stale.asked == [] and stale.lapse == 0
    assert [ln for ln in lines if "waiting up to 60 s" in ln] == [
        "mmvm: resume: 10 SuperNodes are listed for the run's 5 sites: waiting up to "
        "60 s for the ids of SuperNodes that are gone to lapse (their heartbeats)"]
    a, b = params(ref.values()), params(sites.values())
    assert max(float(np.abs(a[n] - b[n]).max()) for n in a) == 0.0


def test_a_site_repeats_its_reply_but_never_trains_a_window_twice(cfg, tmp_path,
                                                                   tiny_polymnist):
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    crash = CrashAt(plain_endpoints(sites), 2, True)
    with pytest.raises(Crash):
        run_federation(crash, settings_for(cfg, exchange="step"))
    site = sites["n0"]
    endpoint = plain_endpoints({"n0": site})["n0"]
    weights = {k: v.copy() for k, v in site.weights("m0").items()}
    from mmvm.federation.messages import WindowRequest

    first = endpoint.handle(crash.sent["n0"])  # the same request: the kept reply
    assert endpoint.handle(crash.sent["n0"]) is first and site.progress.window == 2
    assert all(np.array_equal(weights[k], v) for k, v in site.weights("m0").items())
    # other inputs for that window (another run over this state, a concurrent
    # resume with its peers' posteriors left out, say): not the kept reply, refused
    with pytest.raises(FederationError, match="window 2 is already done"):
        endpoint.handle(WindowRequest(window=2))
    with pytest.raises(FederationError, match="window 1 refused"):
        endpoint.handle(WindowRequest(window=1))


@pytest.fixture(scope="module")
def uninterrupted(tiny_polymnist, tiny_config, tmp_path_factory):
    """``run(delta_tol)``: the result and final parameters of the run without a crash
    (hybrid layout, checkpoint_every = 3), once per module."""
    runs = {}

    def run(delta_tol):
        if delta_tol not in runs:
            cfg = tiny_config(tiny_polymnist, epochs=2)
            sites = make_sites(cfg, *split(tiny_polymnist, tmp_path_factory.mktemp("ref"),
                                           "hybrid"))
            res = run_federation(LocalTransport(plain_endpoints(sites)),
                                 settings_for(cfg, **every_third(delta_tol)))
            runs[delta_tol] = res, params(sites.values())
        return runs[delta_tol]
    return run


def _from_live_file(cfg, site: Site, folder) -> Site:
    fresh = Site(cfg, site.name, site.train_path, site.test_path)
    SiteStore(folder / f"{site.name}.pt").refresh(fresh)
    return fresh


@pytest.mark.parametrize("resident,restart,k,delivered,delta_tol", [
    (True, False, 5, False, None), (False, True, 4, True, 0.0),
    (True, True, 5, True, None), (True, False, 1, True, 0.0)])
def test_plaintext_sites_ahead_of_the_checkpoint_roll_back_to_it(
        cfg, tmp_path, tiny_polymnist, uninterrupted, resident, restart, k, delivered,
        delta_tol):
    """checkpoint_every = 3 over 6 windows: the server checkpoints after attach and
    windows 3 and 6 (1-based). Killed at window ``k`` (0-based), it resumes after
    window 3 (or after attach, k = 1) with sites two or three windows past that: a
    ``resident`` site (it writes at checkpoints only) still in memory, or, with
    ``restart``, a site process started again from its live file (written after
    every message, or, resident, after the last window, which the server did not live
    to record). Each goes back to its snapshot of the server's window, and the
    resumed run ends exactly as the run without the crash."""
    specs, root = split(tiny_polymnist, tmp_path, "hybrid")
    opts = every_third(delta_tol)
    ref, ref_params = uninterrupted(delta_tol)

    sites, folder = make_sites(cfg, specs, root), tmp_path / "state"
    ckpt, saved = tmp_path / "server_state.pt", 2 if k > 2 else -1
    with pytest.raises(Crash):
        run_federation(CrashAt({key: Stored(s, folder, resident) for key, s in sites.items()},
                               k, delivered), settings_for(cfg, **opts), checkpoint=ckpt)
    ahead = k if delivered else k - 1
    assert ahead >= saved + 2
    assert all(s.progress.window == ahead for s in sites.values())
    kept = [2, 5] if ahead == 5 else sorted({-1, saved})  # the last two
    for site in sites.values():
        assert SiteStore(folder / f"{site.name}.pt").snapshots() == kept
    if restart:  # restarted processes: each site is its live file
        sites = {key: _from_live_file(cfg, s, folder) for key, s in sites.items()}
        assert all(s.progress.window == ahead for s in sites.values())
    lines = []
    res = run_federation(
        LocalTransport({key: Stored(s, folder, resident) for key, s in sites.items()}),
        settings_for(cfg, resume=RUN, **opts), log=lines.append, checkpoint=ckpt,
        resume_from=ckpt)
    at = ", ".join(f"{s.name} {saved + 1}" for s in sites.values())
    assert f"after window {saved + 1}/6 (sites' last windows: {at})" in lines[0]
    assert all(s.progress.window == 5 for s in sites.values())
    a, b = ref_params, params(sites.values())
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[n] - b[n]).max()) for n in a)
    assert worst == 0.0, worst
    assert [r["window"] for r in res.history] == list(range(6))
    for key in ("rec_nll", "reg", "bytes"):
        assert [r[key] for r in res.history] == [r[key] for r in ref.history], key
    assert res.evaluation == ref.evaluation


def test_a_secure_site_ahead_of_the_checkpoint_refuses_to_go_back(cfg, tmp_path,
                                                                   tiny_polymnist,
                                                                   monkeypatch):
    """A secure server checkpoints every window, so its sites are never two windows
    ahead; a server started from an older checkpoint finds them so, and they refuse
    (a window is masked once), whether or not they keep snapshots."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=4)
    opts = {"exchange": "step", "float16": False, "secure": True, "checkpoint_every": 3}
    sites = make_sites(cfg, specs, root)
    keys, state, ckpt = site_keys(sites), tmp_path / "state", tmp_path / "server_state.pt"
    old = tmp_path / "window-1.pt"

    def keep_first(row):
        if row["window"] == 0:
            old.write_bytes(ckpt.read_bytes())

    with pytest.raises(Crash):
        run_federation(CrashAt(sealed_endpoints(sites, keys, state), 2, True),
                       settings_for(cfg, **opts), on_window=keep_first, checkpoint=ckpt)
    endpoints = sealed_endpoints(sites, keys, state)
    for e in endpoints.values():
        e.store = SiteStore(tmp_path / "snapshots" / f"{e.site.name}.pt")
    with pytest.raises(FederationError, match=r"trained up to window 3, the server resumes "
                       r"after window 1; a secure site never trains a window twice"):
        run_federation(LocalTransport(endpoints), settings_for(cfg, resume=RUN, **opts),
                       resume_from=old)
    assert all(s.progress.window == 2 for s in sites.values())


def test_a_stop_request_checkpoints_the_next_window_and_resumes_from_it(
        cfg, tmp_path, tiny_polymnist):
    """``mmvm run``'s Ctrl-C asks the ServerApp to stop (Flower's stop alone left a
    simulation's ServerApp training to the end): the window after the request is
    checkpointed by everyone, also between the run's own checkpoints, and a resume
    continues from it as if nothing happened."""
    from mmvm.federation.loop import RunStopped
    from mmvm.federation.server_state import load_server_state

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    opts = {"exchange": "step", "float16": False}  # checkpoints after windows 3 and 6
    ref_sites = make_sites(cfg, specs, root)
    ref = run_federation(LocalTransport(plain_endpoints(ref_sites)), settings_for(cfg, **opts))
    sites, ckpt = make_sites(cfg, specs, root), tmp_path / "server_state.pt"
    asked = iter([False, False, False, True])  # (before describe, after attach) the
    # request comes during window 1
    with pytest.raises(RunStopped, match=r"stopped on request after window 2/6"):
        run_federation(LocalTransport(plain_endpoints(sites)), settings_for(cfg, **opts),
                       checkpoint=ckpt, should_stop=lambda: next(asked))
    assert load_server_state(ckpt, settings_for(cfg, **opts)).window == 1
    assert all(s.progress.window == 1 for s in sites.values())
    sites = restarted(cfg, sites, tmp_path)
    res = run_federation(LocalTransport(plain_endpoints(sites)),
                         settings_for(cfg, resume=RUN, **opts), checkpoint=ckpt,
                         resume_from=ckpt)
    assert [r["window"] for r in res.history] == list(range(6))
    a, b = params(ref_sites.values()), params(sites.values())
    assert max(float(np.abs(a[n] - b[n]).max()) for n in a) == 0.0
    assert [r["rec_nll"] for r in res.history] == pytest.approx(
        [r["rec_nll"] for r in ref.history], rel=1e-6)


def test_a_stop_before_the_sites_attach_keeps_nothing_or_what_attach_wrote(
        cfg, tmp_path, tiny_polymnist):
    """Ctrl-C while Ray started: the ServerApp read the request only when a window
    began, so a run whose sites were slow to attach trained on (flwr stop alone did
    not end it). Asked before describe: nothing is done or kept; asked while the sites
    attached: the run stops after attach, its state written, and resumes from it."""
    from mmvm.federation.loop import RunStopped

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    opts = {"exchange": "step", "float16": False}
    sites, ckpt = make_sites(cfg, specs, root), tmp_path / "server_state.pt"
    with pytest.raises(RunStopped, match=r"^stopped on request before its sites attached$"):
        run_federation(LocalTransport(plain_endpoints(sites)), settings_for(cfg, **opts),
                       checkpoint=ckpt, should_stop=lambda: True)
    assert not ckpt.exists() and all(s.progress.phase == "new" for s in sites.values())
    asked = iter([False, True])
    with pytest.raises(RunStopped, match=r"stopped on request after window 0/6") as info:
        run_federation(LocalTransport(plain_endpoints(sites)), settings_for(cfg, **opts),
                       checkpoint=ckpt, should_stop=lambda: next(asked))
    assert info.value.window == -1 and ckpt.is_file()
    res = run_federation(LocalTransport(plain_endpoints(restarted(cfg, sites, tmp_path))),
                         settings_for(cfg, resume=RUN, **opts), checkpoint=ckpt,
                         resume_from=ckpt)
    assert [r["window"] for r in res.history] == list(range(6))


def test_a_stop_asked_during_a_checkpoint_window_stops_right_after_it(cfg, tmp_path,
                                                                      tiny_polymnist):
    """The request comes while window 3 (a checkpoint window: everyone writes it)
    trains: the run stops after it, not after window 4 as it did (a deployment
    walkthrough saw one window more than `mmvm run` promised)."""
    from mmvm.federation.loop import RunStopped
    from mmvm.federation.server_state import load_server_state

    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    opts = {"exchange": "step", "float16": False}  # checkpoints after windows 3 and 6
    sites, ckpt = make_sites(cfg, specs, root), tmp_path / "server_state.pt"
    calls = []  # asked before describe, after attach, before windows 1, 2, 3; the
    # request comes before the 6th ask

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 5
    with pytest.raises(RunStopped, match=r"stopped on request after window 3/6"):
        run_federation(LocalTransport(plain_endpoints(sites)), settings_for(cfg, **opts),
                       checkpoint=ckpt, should_stop=should_stop)
    assert load_server_state(ckpt, settings_for(cfg, **opts)).window == 2
    assert all(s.progress.window == 2 for s in sites.values())
