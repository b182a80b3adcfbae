"""At a resume a site cannot answer as another one that is away.

If it could, it would take that site's identity and its rows' inputs, and the real
site would be blamed for what it then sends. A node the saved run knew under one
name may not answer under another; in secure mode every answer is signed with the
key its site described itself with when the run began (mmvm.secure.identity), so
a node that came back with a new id is checked too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mmvm.federation import sealed_align
from mmvm.federation.coordinator import FederationError
from mmvm.federation.local import LocalTransport
from mmvm.federation.loop import run_federation
from mmvm.federation.settings import settings_for
from tests.support.crashes import Crash, CrashAt
from tests.support.federate import (
    RUN,
    make_sites,
    params,
    plain_endpoints,
    sealed_endpoints,
    site_keys,
    split,
)

pytestmark = pytest.mark.epochs(2)  # six one-step windows (conftest.py's cfg)


class AnswersAs(LocalTransport):
    """The node ``key`` answers the resume question in the name of site ``as_site``
    (with its own proof: it has no other)."""

    def __init__(self, endpoints, key: str, as_site: str):
        super().__init__(endpoints)
        self.key, self.as_site = key, as_site

    def exchange(self, requests, wait=None, need=1):
        replies = super().exchange(requests, wait, need)
        if next(iter(requests.values())).kind == "resume":
            replies[self.key] = dataclasses.replace(replies[self.key], site=self.as_site)
        return replies


def _crashed(cfg, tiny_polymnist, tmp_path, secure: bool):
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    keys, state = site_keys(sites), tmp_path / "state"

    def endpoints(which):
        return (sealed_endpoints(which, keys, state) if secure
                else plain_endpoints(which))

    opts = {"exchange": "step", "float16": False, "secure": secure, "checkpoint_every": 1,
            "min_sites": 2, "connect_timeout": 0.01}
    ckpt = tmp_path / "server_state.pt"
    with pytest.raises(Crash):
        run_federation(CrashAt(endpoints(sites), 2, False), settings_for(cfg, **opts),
                       checkpoint=ckpt)
    return sites, endpoints, settings_for(cfg, resume=RUN, **opts), ckpt


@pytest.mark.parametrize("secure", [False, True])
@pytest.mark.parametrize("target", ["away", "present", "unknown"])
def test_a_known_node_cannot_answer_as_another_site(cfg, tiny_polymnist, tmp_path, secure,
                                                    target, monkeypatch):
    """As a site that is away (to take its place), one that is present or one the run
    never had (to block the resume): refused, naming the node that lied, not the
    site it named."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    sites, endpoints, s, ckpt = _crashed(cfg, tiny_polymnist, tmp_path, secure)
    liar = sites["n1"].name
    claim = {"away": sites["n0"].name, "present": sites["n2"].name,
             "unknown": "site-zz"}[target]
    here = {k: v for k, v in sites.items() if k != "n0"}
    with pytest.raises(FederationError, match=f"the SuperNode n1 was site {liar} in that "
                       f"run and now answers as site {claim}: refused"):
        run_federation(AnswersAs(endpoints(here), "n1", claim), s, resume_from=ckpt)


def test_a_secure_node_with_a_new_id_must_sign_as_the_site_it_names(cfg, tiny_polymnist,
                                                                    tmp_path, monkeypatch):
    """Without node authentication a node's id changes at a restart: only the
    signature tells a site from one that claims to be it. The honest sites, all under
    new ids, resume and finish the run."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    sites, endpoints, s, ckpt = _crashed(cfg, tiny_polymnist, tmp_path, True)
    away = sites["n0"].name
    liar = {"new-1": sites["n1"], "n2": sites["n2"]}
    with pytest.raises(FederationError, match=f"the SuperNode new-1 answers as site {away}, "
                       f"and its answer is not signed with the key {away} began the run "
                       f"with .*: refused"):
        run_federation(AnswersAs(endpoints(liar), "new-1", away), s, resume_from=ckpt)
    renamed = {f"new-{k}": site for k, site in sites.items()}
    res = run_federation(LocalTransport(endpoints(renamed)), s, resume_from=ckpt,
                         checkpoint=ckpt)
    assert [r["window"] for r in res.history] == list(range(6))
    assert all(np.isfinite(v).all() for v in params(sites.values()).values())


def test_a_secure_site_signs_only_for_the_run_its_state_is_of(cfg, tiny_polymnist, tmp_path,
                                                              monkeypatch):
    """A signature over a run of the asker's choosing could be relayed into another
    run's resume; the site proves itself only for its own run."""
    from mmvm.federation.messages import ResumeRequest
    from mmvm.secure.errors import SecurityError

    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    sites, endpoints, s, _ = _crashed(cfg, tiny_polymnist, tmp_path, True)
    site = endpoints(sites)["n0"]
    with pytest.raises(SecurityError, match=f"asked to prove itself for run '5', its "
                       f"state is of run {RUN}"):
        site.handle(ResumeRequest(run="5", window=1, challenge="ab"))
    assert site.handle(ResumeRequest(run=RUN, window=1, challenge="ab")).proof


def test_a_proof_given_in_another_run_does_not_answer_this_ones(cfg, tiny_polymnist,
                                                                tmp_path, monkeypatch):
    """Whoever can submit runs can start one with ``resume=<run>`` (Flower run Z) and
    relay to the site there the challenge the real resumed run (Y) sent a colluding
    node: the site signs the Flower run the challenge came in, which its SuperNode
    tells it, so the signature does not answer Y's challenge (security review of
    2026-12-06). Signed in Y, the same sites resume."""
    monkeypatch.setattr(sealed_align, "pseudonym", lambda key, sid: sid)
    sites, endpoints, s, ckpt = _crashed(cfg, tiny_polymnist, tmp_path, True)
    renamed = {f"new-{k}": site for k, site in sites.items()}  # ids changed: signatures

    def asked_in(run: str):
        eps = endpoints(renamed)
        for ep in eps.values():
            ep.channel.flower_run = run
        return LocalTransport(eps)

    with pytest.raises(FederationError, match="its answer is not signed with the key .* "
                       "for this challenge in this run"):
        run_federation(asked_in("Z"), s, resume_from=ckpt, flower_run="Y")
    res = run_federation(asked_in("Y"), s, resume_from=ckpt, flower_run="Y")
    assert [r["window"] for r in res.history] == list(range(6))
