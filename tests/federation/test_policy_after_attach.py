"""A node config tightened after a run attached holds for that run too.

The checks of attach (the server's groups against ``allow-collect``, ``experiment``
and ``holders``; the plan's size against the ``max-*`` limits; a secure plan against
``min-rows``) once ran at attach only. A site whose operator tightened its node
config and restarted the SuperNode then answered the run's next windows, continued
by its server or brought back with ``resume``, under the policy it attached with:
weights in clear every window, the server's "mean" loaded (security review of
2026-12-07). Each test attaches and trains window 0 under a loose policy, then
plays the restarted site: a fresh endpoint over the site's saved state, with the
tightened policy.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmvm.config import config_digest
from mmvm.federation.channel import PlainChannel
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.messages import WindowRequest
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.site import Site
from mmvm.federation.site_store import SiteStore
from tests.support.federate import federate, make_sites, split
from tests.support.malicious import StopAfterWindow0, hybrid_sites


def _plain_run(cfg, tmp_path, data_root):
    """A plaintext hybrid run stopped after window 0 (every site under a deployment's
    default policy, which averages weights in clear): the sites, their stores and a
    holder of a shared modality."""
    specs, root = split(data_root, tmp_path, "hybrid", shards=3)
    sites = make_sites(cfg, specs, root)
    stores = {k: SiteStore(tmp_path / "state" / f"{s.name}.pt") for k, s in sites.items()}
    endpoints = {k: Endpoint(s, PlainChannel(), SitePolicy(), stores[k])
                 for k, s in sites.items()}
    with pytest.raises(RuntimeError, match="stops after window 0"):
        federate(cfg, {}, transport=StopAfterWindow0(endpoints), exchange="step")
    victim = next(k for k, s in sites.items() if s.link.shared)
    return sites, stores, victim


def _restarted(cfg, sites, stores, key, channel, policy) -> Endpoint:
    """The site as a new process after a SuperNode restart finds it: its state file."""
    old = sites[key]
    fresh = Site(cfg, old.name, old.train_path, old.test_path)
    store = SiteStore(stores[key].path)
    store.refresh(fresh)
    return Endpoint(fresh, channel, policy, store)


def _tightened(cfg, name, shared):
    return [
        (SitePolicy(allow_collect=False), r"keeps its weights \(allow-collect = false\)"),
        (SitePolicy(experiments=(config_digest(cfg),)), r"pins the experiment"),
        (SitePolicy(holders={m: frozenset({name}) for m in shared}),
         rf"holders= lists \['{name}'\]"),
        (SitePolicy(max_batch=8), r"a batch of 64 rows; its node config allows 8"),
    ]


def test_a_plaintext_run_attached_before_a_policy_was_tightened_is_refused(
        cfg, tmp_path, tiny_polymnist):
    sites, stores, victim = _plain_run(cfg, tmp_path, tiny_polymnist)
    name, shared = sites[victim].name, sites[victim].link.shared
    for policy, says in _tightened(cfg, name, shared):
        endpoint = _restarted(cfg, sites, stores, victim, PlainChannel(), policy)
        before = {m: endpoint.site.weights(m) for m in shared}
        with pytest.raises(PolicyError, match=says) as refused:
            endpoint.handle(WindowRequest(window=1))
        assert "the run attached before the node config said so" in str(refused.value)
        site = endpoint.site
        assert site.progress.window == 0  # nothing trained, nothing sent
        for m in shared:
            assert all(np.array_equal(before[m][k], v) for k, v in site.weights(m).items())
    # the operator loosens it again: the run goes on (a refusal is not final)
    endpoint = _restarted(cfg, sites, stores, victim, PlainChannel(), SitePolicy())
    reply = endpoint.handle(WindowRequest(window=1))
    assert endpoint.site.progress.window == 1 and set(reply.weights) == set(shared)


def test_the_checks_run_again_only_when_the_node_config_changed(cfg, tmp_path,
                                                                tiny_polymnist,
                                                                monkeypatch):
    """Every message is a new process in a deployment: the node config under which
    the checks last passed is kept with the link in the site's state, so an unchanged
    one costs no check (a model built on the meta device, a pass over the plan)."""
    import mmvm.federation.site_limits as limits

    sites, stores, victim = _plain_run(cfg, tmp_path, tiny_polymnist)
    endpoint = _restarted(cfg, sites, stores, victim, PlainChannel(), SitePolicy())
    assert endpoint.site.link.checked  # written at attach, read back from the state
    calls = []
    monkeypatch.setattr(limits, "check_request", lambda *a: calls.append(a))
    endpoint.handle(WindowRequest(window=1))
    assert calls == []
    endpoint = _restarted(cfg, sites, stores, victim, PlainChannel(),
                          SitePolicy(max_batch=1000))
    endpoint.handle(WindowRequest(window=2))
    assert len(calls) == 1  # changed (here: loosened): checked once, and it passed


def test_a_state_without_the_groups_is_checked_but_for_them(cfg, tmp_path,
                                                             tiny_polymnist):
    """A state written before links kept the server's groups: every check that needs
    no holder names runs (a plaintext run goes on, or is refused by allow-collect as
    any); a node config with holders= cannot be checked, and says to start anew."""
    sites, stores, victim = _plain_run(cfg, tmp_path, tiny_polymnist)
    name = sites[victim].name
    for policy, says in ((SitePolicy(), None),
                         (SitePolicy(allow_collect=False), "keeps its weights"),
                         (SitePolicy(holders={"m0": frozenset({name})}),
                          "attached before sites recorded the groups they share weights "
                          "with.*start a new run")):
        endpoint = _restarted(cfg, sites, stores, victim, PlainChannel(), policy)
        link = endpoint.site.link
        state = link.state()
        state.pop("holders")
        state["shared"] = link.shared  # as states before holders were kept wrote it
        legacy = type(link).from_state({**state, "checked": ""})
        assert legacy.shared == link.shared and not any(legacy.holders.values())
        endpoint.site.link = legacy
        if says is None:
            endpoint.handle(WindowRequest(window=1))
            assert endpoint.site.progress.window == 1
            continue
        with pytest.raises(PolicyError, match=says):
            endpoint.handle(WindowRequest(window=1))


def test_a_secure_run_attached_before_min_rows_was_raised_is_refused_without_counts(
        cfg, tmp_path, tiny_polymnist):
    sites, _, endpoints = hybrid_sites(cfg, tmp_path, tiny_polymnist,
                                       policy=SitePolicy(test_bed=True))
    with pytest.raises(RuntimeError, match="stops after window 0"):
        federate(cfg, {}, transport=StopAfterWindow0(endpoints), secure=True,
                 exchange="step")
    key = next(k for k, s in sites.items() if s.link.shared)
    strict = SitePolicy(test_bed=True, min_rows=1000)
    endpoint = endpoints[key]
    endpoint.policy = strict
    before = endpoint.site.weights(endpoint.site.link.shared[0])
    with pytest.raises(PolicyError, match=r"fewer of its rows than its min-rows = 1000"
                                          r".*attached before the node config") as refused:
        endpoint.handle(WindowRequest(window=1))
    text = str(refused.value).replace("min-rows = 1000", "").replace(sites[key].name, "")
    assert not re.search(r"\d", text), text  # the counts are the site's log's
    assert "min-rows = 1000" in str(refused.value.__cause__)
    after = endpoint.site.weights(endpoint.site.link.shared[0])
    assert all(np.array_equal(before[k], v) for k, v in after.items())
    assert endpoint.site.progress.window == 0
