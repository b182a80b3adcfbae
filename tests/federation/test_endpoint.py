"""A site's endpoint: requests dispatched by type, checked before the site changes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mmvm.federation.channel import PlainChannel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.messages import (
    AlignRequest,
    AttachRequest,
    DescribeRequest,
    EvaluateRequest,
    ResumeRequest,
    UnmaskRequest,
    WindowRequest,
)
from mmvm.federation.plan import PlanArgs
from mmvm.federation.policy import SitePolicy
from mmvm.federation.progress import ProtocolOrderError
from tests.support.federate import make_sites, split


@pytest.fixture
def endpoint(tiny_polymnist, tiny_config, tmp_path):
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    return Endpoint(make_sites(cfg, specs, root)["n0"], PlainChannel())


def _attach(ep, **change):
    site = ep.site
    if site.progress.phase == "new":
        ep.handle(DescribeRequest())
    n = len(site.data)
    kw = dict(n=n, rows=list(range(n)), float16=False,
              plan=PlanArgs(batch_size=64, seed=3, epochs=1).to_dict())
    return ep.handle(AttachRequest(**{**kw, **change}))


def test_describe_attach_window_evaluate(endpoint):
    d = endpoint.handle(DescribeRequest())
    assert (d.site, d.modalities, d.n) == ("site-m0", ["m0"], 192)
    assert endpoint.site.progress.phase == "described"
    assert d.identifiers == endpoint.site.data.sample_ids and d.sealed == {}
    first = _attach(endpoint)
    assert list(first.posteriors) == ["server"]
    reply = endpoint.handle(WindowRequest(window=0))
    assert reply.metrics["rows"] == 64 and reply.metrics["steps"] == 1
    assert reply.weights == {}  # nothing shared in a vertical split
    ev = endpoint.handle(EvaluateRequest(collect=True))
    assert ev.site == "site-m0" and "probe/m0" in ev.metrics
    assert set(ev.model) == {"m0"}
    # a server that died before it wrote the results resumes and asks again: the
    # same reply, byte for byte; other inputs, or more training, are refused
    back = endpoint.handle(ResumeRequest(run="1", window=0))
    assert (back.phase, back.window) == ("evaluated", 0)
    again = endpoint.handle(EvaluateRequest(collect=True))
    assert again.metrics == ev.metrics and again.model is ev.model
    with pytest.raises(ProtocolOrderError, match="evaluate refused: it answered the final "
                       "evaluation to other inputs; the run is complete here"):
        endpoint.handle(EvaluateRequest(collect=False))
    # its node config now keeps its weights: the kept answer (which hands them in) is not
    # repeated (nor is any, under a changed node config)
    keeps = Endpoint(endpoint.site, PlainChannel(), SitePolicy(test_bed=True,
                                                               allow_collect=False))
    with pytest.raises(ProtocolOrderError, match="to other inputs"):
        keeps.handle(EvaluateRequest(collect=True))
    with pytest.raises(ProtocolOrderError, match="window 1 refused: the site is 'evaluated'"):
        endpoint.handle(WindowRequest(window=1))


def test_a_label_column_outside_the_sites_eval_labels_gets_no_probe(
        tiny_polymnist, tiny_config, tmp_path):
    """The submitter names ``data.label``; a site reports a probe of it (accuracy,
    classes, the commonest class's share) only if its node config allows the column,
    and then does not say whether it has it. Reconstruction is still evaluated."""
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    site = make_sites(cfg, specs, root)["n0"]
    assert site.data.labels is not None  # it has the column the run asks for
    ep = Endpoint(site, PlainChannel(), SitePolicy(eval_labels=("label.dx",)))
    assert ep.handle(DescribeRequest()).labelled is False
    _attach(ep)
    ep.handle(WindowRequest(window=0))
    ev = ep.handle(EvaluateRequest(collect=False)).metrics
    assert ev["probes_withheld"] == 1.0 and np.isfinite(ev["recon_nll/m0"])
    assert not [k for k in ev if k.split("/")[0] in ("probe", "classes", "majority")]
    allowed = Endpoint(make_sites(cfg, specs, root)["n0"], PlainChannel(),
                       SitePolicy(eval_labels=("label",)))
    assert allowed.handle(DescribeRequest()).labelled is True
    _attach(allowed)
    ev = allowed.handle(EvaluateRequest(collect=False)).metrics
    assert "probe/m0" in ev and "majority/m0" in ev and "probes_withheld" not in ev


def test_the_encoder_pass_of_a_reply_counts_as_training_not_message_coding(
        endpoint, monkeypatch):
    """A window's reply carries the posteriors of the next batch: the encoder pass
    that makes them is the site's compute (train_s), not serialization (codec_s)."""
    _attach(endpoint)
    model, encode = endpoint.site.model, endpoint.site.model.encode_modality
    clock = [0.0]  # a clock only the encoder pass moves, an hour per call: no timing

    def slow(*args, **kwargs):
        clock[0] += 3600.0
        return encode(*args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(model, "encode_modality", slow)
    metrics = endpoint.handle(WindowRequest(window=0)).metrics
    calls = metrics["train_s"] / 3600.0
    assert calls >= 1 and calls == int(calls) and metrics["codec_s"] == 0.0


def test_requests_out_of_order_or_out_of_plan_are_refused(endpoint):
    with pytest.raises(FederationError, match=r"window 0 refused: the site is 'new'"):
        endpoint.handle(WindowRequest(window=0))
    with pytest.raises(FederationError, match=r"attach refused: the site is 'new'"):
        endpoint.handle(AttachRequest(n=1, rows=[0], float16=False, plan={}))
    endpoint.handle(DescribeRequest())
    with pytest.raises(FederationError, match="describe refused"):
        endpoint.handle(DescribeRequest())  # once per run
    with pytest.raises(FederationError, match="align is a secure-mode message"):
        endpoint.handle(AlignRequest())
    _attach(endpoint)
    with pytest.raises(FederationError, match="attach refused"):
        _attach(endpoint)  # a second attach (e.g. with another plan) is refused
    with pytest.raises(FederationError, match=r"window 3 is not in the plan \(3 windows\)"):
        endpoint.handle(WindowRequest(window=3))
    first = endpoint.handle(WindowRequest(window=1))  # a window may be skipped (missed)
    with pytest.raises(FederationError, match=r"window 0 refused: window 1 is already "
                                              r"done"):
        endpoint.handle(WindowRequest(window=0))  # ... but windows never go back
    steps = endpoint.site.windows_done
    assert endpoint.handle(WindowRequest(window=1)) is first  # asked again (a restarted
    assert endpoint.site.windows_done == steps  # server): the same reply, not trained
    with pytest.raises(FederationError, match="unmask is a secure-mode message"):
        endpoint.handle(UnmaskRequest(window=1))
    with pytest.raises(FederationError, match="unknown request"):
        endpoint.handle(object())


@pytest.mark.parametrize("change,match", [
    ({"rows": [0, 0]}, r"assigned 2 rows to 192 samples"),
    ({"shared": {"m1": ["site-m0", "x"]}}, r"told to share modality 'm1'"),
    ({"shared": {"m0": ["site-m0"]}}, r"told to share modality 'm0'"),
    ({"shared": {"m0": "site-m0"}}, r"told to share modality 'm0'"),  # not a list
    ({"shared": {"m0": ["site-m0", 7]}}, r"told to share modality 'm0'"),
    ({"plan": {"batch_size": 64}}, r"plan arguments"),
    ({"plan": {"batch_size": "64", "seed": 3, "epochs": 1}}, r"is not a int"),
    ({"plan": {"batch_size": 0, "seed": 3, "epochs": 1}}, r"batch_size out of range"),
    # seed * 100_003 overflowed the plan's generator after the attach was recorded
    ({"plan": {"batch_size": 8, "seed": 2**62, "epochs": 1}}, r"seed = 4611686018427387904 "
                                                              r"is not in 0\.\."),
    ({"plan": {"batch_size": 8, "seed": -1, "epochs": 1}}, r"seed = -1 is not in 0\.\."),
    ({"plan": {"batch_size": 8, "seed": 3, "epochs": -1}}, r"epochs out of range"),
    ({"plan": {"batch_size": 8, "seed": 3, "epochs": 1, "exchange": "x"}},
     r"exchange out of range"),
    ({"n": 0, "rows": []}, r"attach with n = 0 rows"),
    # ignored by a step plan, but kept in the state file (torch refuses to load it)
    ({"plan": {"batch_size": 8, "seed": 3, "epochs": 1, "k": 10 ** 1000}},
     r"plan argument k: an integer beyond 64 bits"),
])
def test_bad_attach_requests_name_what_is_wrong(endpoint, change, match):
    with pytest.raises(FederationError, match=match):
        _attach(endpoint, **change)
    assert endpoint.site.link is None


def test_an_attach_beyond_the_sites_limits_is_refused_before_the_plan_is_built(endpoint):
    """One attach asking for 10^9 epochs would build the plan in memory until the
    host runs out; the site's max-visits refuses it at once."""
    from mmvm.federation.node_config import load_policy
    from mmvm.federation.policy import PolicyError

    endpoint.policy = load_policy({"data": "/d"}, endpoint.site.name)  # a deployment's
    n = len(endpoint.site.data)
    with pytest.raises(PolicyError, match=r"\(max-visits\)"):  # (built, it would hang)
        _attach(endpoint, plan=PlanArgs(batch_size=64, seed=3, epochs=10**9).to_dict())
    assert endpoint.site.link is None
    with pytest.raises(PolicyError, match=r"\(max-batch\)"):
        _attach(endpoint, plan=PlanArgs(batch_size=10**6, seed=3, epochs=1).to_dict())
    first = _attach(endpoint, rows=list(range(n)))  # the site still attaches after
    assert endpoint.site.progress.phase == "attached" and first.posteriors


def test_a_step_beyond_the_sites_memory_limit_is_refused_at_attach(
        tiny_polymnist, tmp_path):
    """A run config that declares hundreds of modalities nobody holds leaves the
    site's parameters as they are, but every step would pair all of them
    ([B, M, M, D]): max-step-gib refuses the plan's batch before anything trains."""
    from mmvm.config import config_from_dict
    from mmvm.federation.node_config import load_policy
    from mmvm.federation.policy import PolicyError

    mods = {m: {"kind": "image", "shape": [3, 28, 28], "width": 4} for m in ("m0", "m1", "m2")}
    mods.update({f"x{i}": {"kind": "vector", "shape": [1]} for i in range(400)})
    cfg = config_from_dict({"data": {"root": str(tiny_polymnist)}, "model": {
        "latent_dim": 64, "modalities": mods}, "train": {"batch_size": 64, "seed": 3}})
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    ep = Endpoint(make_sites(cfg, specs, root)["n0"], PlainChannel(),
                  load_policy({"data": "/d", "max-step-gib": "1"}, "site-m0"))
    with pytest.raises(PolicyError, match=r"batch of 4,096 rows needs about [\d,.]+ GiB"
                                          r"; its node config allows 1 GiB"):
        _attach(ep, plan=PlanArgs(batch_size=4096, seed=3, epochs=1).to_dict())
    assert ep.site.link is None


def test_a_site_pinned_to_an_experiment_refuses_a_plan_that_is_not_its(endpoint):
    """The server sends batch size, epochs and seed apart from the experiment config:
    a pinned site trains the pinned experiment's plan only (batch 1 for 500 epochs
    would otherwise run under the digest of batch 64 for 1)."""
    from mmvm.config import config_digest
    from mmvm.federation.policy import PolicyError

    site = endpoint.site
    pinned = Endpoint(site, PlainChannel(), SitePolicy(
        experiments=(config_digest(site.cfg),), max_step_gib=1))
    pinned.handle(DescribeRequest())
    n = len(site.data)
    for plan, says in [(PlanArgs(batch_size=1, seed=3, epochs=500),
                        r"batch_size 1 \(the experiment's: 64\), epochs 500 \(the "
                        r"experiment's: 1\)"),
                       (PlanArgs(batch_size=64, seed=4, epochs=1),
                        r"seed 4 \(the experiment's: 3\)")]:
        with pytest.raises(PolicyError, match="the plan is not the pinned experiment's: "
                           + says):
            pinned.handle(AttachRequest(n=n, rows=list(range(n)), float16=False,
                                        plan=plan.to_dict()))
        assert site.link is None  # nothing of it attached
    reply = pinned.handle(AttachRequest(n=n, rows=list(range(n)), float16=False,
                                        plan=PlanArgs(batch_size=64, seed=3,
                                                      epochs=1).to_dict()))
    assert list(reply.posteriors) == ["server"]


@pytest.mark.parametrize("delta_tol", [-1.0, 0.0])  # every row / event-triggered
def test_server_posteriors_outside_the_window_or_of_its_own_modality_are_refused(
        endpoint, delta_tol):
    """An explicit row column is bounded by the aligned rows alone: a server sending
    rows this site does not train in the window (kept by an event cache, past every
    limit) or posteriors of the site's own modality is refused, and nothing trains."""
    from mmvm.federation.messages import SERVER
    from mmvm.federation.posteriors import Posteriors, encode_table

    _attach(endpoint, delta_tol=delta_tol)
    site = endpoint.site
    frame = site.linked().frame(site.window_rows(0))
    outside = np.setdiff1d(np.arange(site.linked().n), frame)[:2]
    d = site.model.latent_dim

    def table(m, rows):
        return {SERVER: encode_table({m: Posteriors(rows, np.zeros((len(rows), d),
                                                                   np.float32),
                                                    np.zeros((len(rows), d), np.float32))})}

    for blobs, says in [(table("m1", outside), rf"row {outside[0]} of 'm1', which is not "
                                               r"a row of this window the site holds"),
                        (table("m0", frame[:2]), r"posteriors of 'm0', not one of the "
                                                 r"run's other modalities \['m1', 'm2'\]")]:
        with pytest.raises(FederationError, match=says):
            endpoint.handle(WindowRequest(window=0, posteriors=blobs))
        assert site.progress.window == -1 and not site.linked().others_cache.stores
    assert endpoint.handle(WindowRequest(window=0, posteriors=table("m1", frame)))


def test_rows_must_be_a_permutation_within_n(endpoint):
    with pytest.raises(FederationError, match="invalid or repeated rows"):
        _attach(endpoint, rows=[0] * 192)
    with pytest.raises(FederationError, match="invalid or repeated rows"):
        _attach(endpoint, n=10, rows=list(range(192)))


def test_weights_only_for_shared_modalities(endpoint):
    _attach(endpoint)
    w = endpoint.site.weights("m0")
    before = {k: v.copy() for k, v in w.items()}
    with pytest.raises(FederationError, match=r"weights for \['m0'\], which it does not share"):
        endpoint.handle(WindowRequest(window=0, weights={"m0": w}))
    after = endpoint.site.weights("m0")
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert endpoint.site.windows_done == 0


def test_the_state_answers_the_flower_run_that_began_or_last_resumed_it(endpoint):
    """A user whose log stream ended resumes a run whose server still lives: the two
    servers' messages interleaved over one state (windows refused as done, strikes,
    an exclusion). Now the resume takes the state over and the old server is told."""
    site = endpoint.site
    first = Endpoint(site, PlainChannel(), flower_run="11")
    first.handle(DescribeRequest())
    _attach(first)
    first.handle(WindowRequest(window=0))
    assert site.progress.owner == "11"
    other = Endpoint(site, PlainChannel(), flower_run="12")
    with pytest.raises(ProtocolOrderError, match="window of Flower run 12 refused: the "
                       "site's state of this run answers Flower run 11"):
        other.handle(WindowRequest(window=1))
    assert site.progress.window == 0  # nothing moved
    other.handle(ResumeRequest(run="11", window=0))
    with pytest.raises(ProtocolOrderError, match="window of Flower run 11 refused: .* "
                       "answers Flower run 12"):
        first.handle(WindowRequest(window=1))
    assert other.handle(WindowRequest(window=1)).metrics["steps"] == 1


def test_an_evaluated_site_is_not_rolled_back_to_be_evaluated_again(endpoint, tmp_path):
    """A server that never checkpoints its windows (only attach's snapshot), then asks
    for the evaluation and a resume from attach: the site went back, trained the
    server's windows again and answered one evaluation after another, each under
    weights of the server's choosing (review of the session's diff). Its training
    is over once it answered the evaluation: no rollback."""
    from mmvm.federation.site_store import SiteStore

    site = endpoint.site
    store = SiteStore(tmp_path / "state" / f"{site.name}.pt")
    (tmp_path / "state").mkdir()
    ep = Endpoint(site, PlainChannel(), SitePolicy(test_bed=True), store, flower_run="7")
    _attach(ep)
    for w in range(3):
        ep.handle(WindowRequest(window=w, persist=False))
    assert store.snapshots() == [-1]
    ep.handle(EvaluateRequest(collect=True))
    with pytest.raises(FederationError, match="its training is over \\(it answered "
                                              "heldout or the evaluation\\)"):
        ep.handle(ResumeRequest(run="1", window=-1))
    assert site.progress.phase == "evaluated" and site.progress.window == 2
    assert ep.handle(ResumeRequest(run="1", window=1)).phase == "evaluated"  # its own
