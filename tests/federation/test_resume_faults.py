"""A resumed run survives what used to end it or lose its results: a server killed
in the final evaluation, a site without a snapshot of the server's checkpoint, a
site away at the resume and back ahead of the run, a resume after an exclusion."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.federation import sealed_align
from mmvm.federation.channel import PlainChannel
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.policy import SitePolicy
from mmvm.federation.settings import settings_for
from mmvm.federation.site_store import SiteStore
from tests.support.crashes import (
    Crash,
    CrashAt,
    CrashInEvaluation,
    GoneAtResume,
    Stored,
    every_third,
)
from tests.support.federate import (
    RUN,
    make_sites,
    plain_endpoints,
    restarted,
    sealed_endpoints,
    site_keys,
    split,
)

pytestmark = pytest.mark.epochs(2)  # six one-step windows (conftest.py's cfg)


@pytest.mark.parametrize("secure", [False, True])
def test_a_server_that_dies_in_the_final_evaluation_resumes_to_the_same_results(
        cfg, tmp_path, tiny_polymnist, secure, monkeypatch):
    """The final evaluation can take many minutes (the judges train at every site).
    A site that had answered it refused every resume ("the run is complete here"),
    so a crash there lost a finished run's results. It now repeats its answers to
    the same requests: the resumed run's evaluation is the uninterrupted one's."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=3)
    opts = {"exchange": "round", "float16": False, "secure": secure, "cross_eval": "mean",
            "collect_model": not secure}
    ref_sites = make_sites(cfg, specs, root)
    keys = site_keys(ref_sites)

    def endpoints(sites, state):  # no label column allowed: no judge to train
        quiet = SitePolicy(eval_labels=())
        return sealed_endpoints(sites, keys, state, quiet) if secure else \
            {k: Endpoint(s, PlainChannel(), quiet) for k, s in sites.items()}

    ref = run_federation(LocalTransport(endpoints(ref_sites, tmp_path / "ref-state")),
                         settings_for(cfg, **opts))
    sites, state, ckpt = make_sites(cfg, specs, root), tmp_path / "state", \
        tmp_path / "server_state.pt"
    with pytest.raises(Crash):
        run_federation(CrashInEvaluation(endpoints(sites, state)),
                       settings_for(cfg, **opts), checkpoint=ckpt)
    assert sorted(s.progress.phase for s in sites.values()) == \
        ["attached"] * (len(sites) - 1) + ["evaluated"]
    sites = restarted(cfg, sites, tmp_path)
    res = run_federation(LocalTransport(endpoints(sites, state)),
                         settings_for(cfg, resume=RUN, **opts), checkpoint=ckpt,
                         resume_from=ckpt)
    assert not res.evaluation_errors and not res.not_evaluated
    assert res.evaluation == ref.evaluation
    assert res.cross_site and res.cross_site == ref.cross_site
    if not secure:  # the assembled model of the same weights
        assert all(np.array_equal(ref.model_state[n], res.model_state[n])
                   for n in ref.model_state)



def test_a_site_without_a_snapshot_of_the_checkpoint_goes_back_to_an_older_one(
        cfg, tmp_path, tiny_polymnist):
    """A site away at checkpoint window 3 keeps no snapshot of it. After a crash at
    window 5 every resume failed ("kept snapshots of windows [0] only"); it now goes
    back to its snapshot of attach, is behind, and trains on as a restarted site
    does. The run completes."""
    from mmvm.federation.local import Outages

    specs, root = split(tiny_polymnist, tmp_path, "hybrid")
    opts = {**every_third(None), "min_sites": 2}
    sites, folder = make_sites(cfg, specs, root), tmp_path / "state"
    ckpt, away = tmp_path / "server_state.pt", "n0"
    stored = {key: Stored(s, folder, False) for key, s in sites.items()}
    with pytest.raises(Crash):
        run_federation(Outages(CrashAt(stored, 4, True), {away: {2}}),
                       settings_for(cfg, **opts), checkpoint=ckpt)
    assert SiteStore(folder / f"{sites[away].name}.pt").snapshots() == [-1]
    assert sites[away].progress.window == 4
    stored = {key: Stored(s, folder, False) for key, s in sites.items()}
    res = run_federation(LocalTransport(stored), settings_for(cfg, resume=RUN, **opts),
                         checkpoint=ckpt, resume_from=ckpt)
    assert [r["window"] for r in res.history] == list(range(6))
    assert not res.history[3]["missed"] and not res.history[3]["refused"]  # it trained
    assert all(s.progress.window == 5 for s in sites.values())




@pytest.mark.parametrize("secure", [False, True])
def test_a_site_away_at_the_resume_is_asked_when_it_is_back(cfg, tmp_path, tiny_polymnist,
                                                            secure):
    """Killed at window 6 (plaintext: checkpoint after window 3); site n2 misses the
    resume exchange and is back for the next window, its state ahead: every window was
    refused as done until it was excluded, and the run stopped (the only holder of
    m2). It is now asked where it is before its first window (a plaintext site goes
    back to its snapshot; a secure one signs its answer, checked), and the run ends
    as it would have."""
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites, folder = make_sites(cfg, specs, root), tmp_path / "state"
    opts, ckpt = {**every_third(None), "min_sites": 2}, tmp_path / "server_state.pt"
    keys = site_keys(sites)

    def endpoints():
        return sealed_endpoints(sites, keys, folder) if secure else \
            {k: Stored(s, folder, False) for k, s in sites.items()}

    with pytest.raises(Crash):
        run_federation(CrashAt(endpoints(), 5, True),
                       settings_for(cfg, secure=secure, **opts), checkpoint=ckpt)
    assert sites["n2"].progress.window == 5
    opts["secure"] = secure
    lines = []
    res = run_federation(GoneAtResume(endpoints(), "n2"),
                         settings_for(cfg, resume=RUN, **opts), log=lines.append,
                         checkpoint=ckpt, resume_from=ckpt)
    assert f"away: {sites['n2'].name})" in lines[0]
    assert [r["window"] for r in res.history] == list(range(6))
    assert not any(r["refused"] for r in res.history) and not res.evaluation_errors
    assert sites["n2"].progress.window == 5 and sites["n2"].progress.phase == "evaluated"


def test_a_resume_after_an_exclusion_repeats_the_kept_window_replies(cfg, tmp_path,
                                                                     tiny_polymnist,
                                                                     monkeypatch):
    """n0 is excluded in window 1, the server dies after the sites answered window 4.
    The resumed run asks window 4 again without the exclusion (it sends the excluded
    site windows again): the others repeat their kept replies; when the exclusion was
    part of what a reply answers, each was refused as "already done"."""
    from tests.support.federate import failing

    specs, root = split(tiny_polymnist, tmp_path, "hybrid", shards=4)
    sites, ckpt = make_sites(cfg, specs, root), tmp_path / "server_state.pt"
    failing(monkeypatch, sites["n0"], set(range(10)))
    opts = {"exchange": "step", "checkpoint_every": 1, "max_refused": 0, "min_sites": 2}
    with pytest.raises(Crash):
        run_federation(CrashAt(plain_endpoints(sites), 3, True), settings_for(cfg, **opts),
                       checkpoint=ckpt)
    res = run_federation(LocalTransport(plain_endpoints(sites)),
                         settings_for(cfg, resume=RUN, **opts), checkpoint=ckpt,
                         resume_from=ckpt)
    assert [r["window"] for r in res.history] == list(range(6))
    n0 = sites["n0"].name
    assert all(set(r["refused"]) <= {n0} for r in res.history), res.history[3]["refused"]

