"""What a deployed site's node config decides at the site, whatever the run config
says: its state folders and their lock, its device, the largest model and tables it
holds, and the experiments it runs (a resume under another config, a config made to
be inverted), each refused before anything is sent."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from client import site_node
from mmvm.federation.settings import app_run_config
from mmvm.federation.site_errors import untagged
from tests.support.site_nodes import describe


def test_the_state_folders_a_site_makes_are_its_own(plain_site):
    """The node config's state folder and the run's in it are made 0700 (its own
    check warns of anything wider), not only the innermost one."""
    from pathlib import Path

    assert not isinstance(describe(plain_site, run_id=70), str)
    state = Path(plain_site["state"])
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "run-70").stat().st_mode & 0o777 == 0o700


def test_a_resume_where_the_site_has_no_state_leaves_nothing_behind(plain_site):
    """A resume sent to a state folder without the run (a wrong state-dir) is refused
    naming it, and makes no run folder there (it left one with the site's lock file)."""
    from pathlib import Path

    from mmvm.federation.messages import ResumeRequest
    from wire.records import to_record

    context = Context(run_id=71, node_id=1, node_config=plain_site, state=RecordDict(),
                      run_config=dict(app_run_config(), resume="70"))
    said = site_node.answer("resume", to_record(ResumeRequest(run="70", window=3)), context)
    assert isinstance(said, str) and "has no state of this run (its state-dir" in said
    assert not (Path(plain_site["state"]) / "run-70").exists()


def test_a_site_without_keys_refuses_a_secure_run_naming_what_it_lacks(plain_site):
    """A deployed site whose node config has no keys, asked to run secure: it cannot
    seal anything, and says what its administrator would add (not a stack trace from
    the key loader)."""
    from mmvm.federation.messages import DescribeRequest
    from wire.records import to_record

    context = Context(run_id=72, node_id=1, node_config=plain_site, state=RecordDict(),
                      run_config=app_run_config(secure=True))
    said = site_node.answer("describe", to_record(DescribeRequest()), context)
    assert isinstance(said, str) and "secure = true needs the site's keys in its node " \
        "config (keys=" in said, said


def test_the_sites_device_is_its_node_configs(plain_site):
    """A run config asking for CUDA at a CPU site: the site trains where its node
    config says, and without the key where its host can (``auto``), never where the
    submitter says (a ``cuda:N`` of another group on a shared host)."""
    from mmvm.federation.messages import DescribeRequest
    from wire.records import to_record

    def describe(nc, run_id):
        context = Context(run_id=run_id, node_id=1, node_config=nc, state=RecordDict(),
                          run_config=app_run_config(set="train.device=cuda:1"))
        return site_node.answer("describe", to_record(DescribeRequest()), context)

    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has two GPUs: the run's device would work")
    assert not isinstance(describe({**plain_site, "device": "cpu"}, 71), str)
    assert not isinstance(describe(plain_site, 72), str)


def test_the_sites_max_params_refuses_the_runs_model_before_it_is_built(plain_site):
    reply = untagged(describe({**plain_site, "max-params": "1000"}))[1]
    assert isinstance(reply, str) and reply.startswith("PolicyError: site site-m0: the "
                                                       "run's model has ") \
        and "allows 1,000 (max-params)" in reply, reply
    assert not isinstance(describe(plain_site, run_id=8), str)  # the default admits it


def test_a_second_process_on_the_sites_state_is_refused_naming_no_path(plain_site,
                                                                       monkeypatch):
    """Two SuperNodes given one state folder: while one answers, the other waits, then
    is refused; the reply names the lock, not the site's folders."""
    import functools
    import subprocess
    from pathlib import Path

    from mmvm.federation.state_lock import state_lock

    lock = Path(plain_site["state"]) / "run-7" / "site-m0.lock"
    lock.parent.mkdir(parents=True)
    hold = ("import sys, time\nfrom mmvm.federation.state_lock import state_lock\n"
            "with state_lock(sys.argv[1]):\n    print('held', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(lock)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        monkeypatch.setattr(site_node, "state_lock", functools.partial(state_lock, wait=0.3))
        reply = describe(plain_site)
    finally:
        proc.kill()
        proc.wait()
    assert reply.startswith("[site site-m0] StateBusyError: run-7/site-m0.lock: another "
                            "process"), reply
    assert plain_site["state"] not in reply
    assert not isinstance(describe(plain_site), str)  # the holder gone: answered


def test_a_resume_that_brings_another_experiment_is_refused_before_it_trains(plain_site):
    """A run attached under the app's config; a run resuming it whose `set` declares
    200 modalities the site does not hold (its parameters, so its saved state, stay
    the same, but every step pairs all of them) would train past the max-step-gib
    checked at attach. Every message of the resumed run is refused; the same config
    resumes."""
    from mmvm.federation.messages import (
        AttachRequest,
        DescribeRequest,
        ResumeRequest,
        WindowRequest,
    )
    from wire.records import reply_from_record, to_record

    nc = {**plain_site, "max-step-gib": "1"}

    def send(req, rc, run_id):
        site_node._NODES.clear()  # a fresh ClientApp process per message
        context = Context(run_id=run_id, node_id=1, node_config=nc, state=RecordDict(),
                          run_config=rc)
        out = site_node.answer(req.kind, to_record(req), context)
        return out if isinstance(out, str) else reply_from_record(req.kind, out)

    honest = app_run_config()
    wide = ";".join(f'model.modalities.x{i}={{kind="vector",shape=[1]}}' for i in range(200))
    d = send(DescribeRequest(), honest, 90)
    plan = {"batch_size": 32, "seed": 0, "epochs": 1, "exchange": "step"}
    assert not isinstance(send(AttachRequest(n=d.n, rows=list(range(d.n)), float16=False,
                                             shared={}, peers={}, plan=plan), honest, 90), str)
    widened = dict(app_run_config(set=wide), resume="90")
    said = send(ResumeRequest(run="90", window=-1), widened, 91)
    assert isinstance(said, str) and "this run began under another experiment config" \
        in said, said
    said = send(WindowRequest(window=0), widened, 91)  # its resume was refused
    assert isinstance(said, str) and "answers Flower run 90" in said, said
    assert not isinstance(send(ResumeRequest(run="90", window=-1), dict(honest, resume="90"),
                               92), str)
    again = send(WindowRequest(window=0), dict(honest, resume="90"), 92)
    assert not isinstance(again, str) and again.metrics["rows"] > 0


def _wide_latent_site(plain_site: dict, latent: int, run_id: int):
    """A site (max-step-gib 1) described in a run whose latent is ``latent`` wide over
    1-unit MLPs; returns ``attach(plan, delta_tol)`` -> the site's reply."""
    from mmvm.federation.messages import AttachRequest, DescribeRequest
    from wire.records import reply_from_record, to_record

    nc = {**plain_site, "max-step-gib": "1"}
    mods = ";".join(f"model.modalities.{m}.kind=vector;model.modalities.{m}.network=mlp;"
                    f"model.modalities.{m}.width=1;model.modalities.{m}.layers=1"
                    for m in ("m0", "m1", "m2"))
    context = Context(run_id=run_id, node_id=1, node_config=nc, state=RecordDict(),
                      run_config=app_run_config(set=f"model.latent_dim={latent};{mods}"))
    site_node._NODES.clear()
    d = reply_from_record("describe", site_node.answer(
        "describe", to_record(DescribeRequest()), context))

    def attach(plan: dict, delta_tol: float = -1.0):
        return site_node.answer("attach", to_record(AttachRequest(
            n=d.n, rows=list(range(d.n)), float16=False, shared={}, peers={}, plan=plan,
            delta_tol=delta_tol)), context)
    return attach


@pytest.mark.parametrize("exchange, what", [
    ("round", "a window's posteriors (192 rows x 3 modalities)"),
    ("step", "the final evaluation's latents"),
])
def test_a_latent_that_would_fill_memory_in_tables_is_refused_at_attach(plain_site,
                                                                         exchange, what,
                                                                         capfd):
    """A run config with a 600,000-dimensional latent over 1-unit MLPs passes
    max-params and a batch-of-one step, but a round window's posteriors (rows x
    latent) or the evaluation's latents of every row would need GiBs: refused at
    attach, before anything is encoded, naming what and the limit. How much it would
    need is in the SuperNode's log only (of the latents, it would tell the server how
    many test rows the site has)."""
    attach = _wide_latent_site(plain_site, 600_000, 93)
    said = attach({"batch_size": 1 if exchange == "round" else 4, "seed": 0,
                   "epochs": 1, "exchange": exchange})
    assert isinstance(said, str) and \
        untagged(said)[1].startswith(f"PolicyError: site site-m0: {what}")
    assert said.endswith("its node config allows, 1 GiB (max-step-gib); its log says "
                         "how much")
    assert re.search(r"attach failed: PolicyError: .*how much \[[\d,]+ bytes\]",
                     capfd.readouterr().err)


def test_the_latents_check_counts_test_rows_as_a_power_of_two(plain_site):
    """192 train and 96 test rows at a 440,000-wide latent: 288 rows would fit in
    1 GiB, 192 + 128 do not. The submitter chooses the latent; refusals at sizes of
    its choosing read the exact test count off a site that withholds sizes, so the
    check counts test rows rounded up to a power of two (review, 2026-12-07)."""
    from mmvm.federation.settings import load_settings
    from mmvm.footprint import table_bytes

    cfg = load_settings(app_run_config(set="model.latent_dim=440000")).experiment
    assert table_bytes(cfg, 192 + 96, 1) < 2**30 < table_bytes(cfg, 192 + 128, 1)
    attach = _wide_latent_site(plain_site, 440_000, 95)
    said = attach({"batch_size": 4, "seed": 0, "epochs": 1, "exchange": "step"})
    assert isinstance(said, str) and "the final evaluation's latents" in said, said


def test_event_triggered_exchange_counts_every_row_the_caches_keep(plain_site):
    """With delta-tol the site keeps every row it received or sent, for every
    modality: a batch-of-one plan's window tables are small, the caches are not."""
    attach = _wide_latent_site(plain_site, 300_000, 94)
    plan = {"batch_size": 1, "seed": 0, "epochs": 1, "exchange": "step"}
    said = attach(plan, 0.05)
    assert isinstance(said, str) and "a window's posteriors (192 rows x 3 " in said
    assert not isinstance(attach(plan), str)  # without it: one row per window


def test_a_site_that_pins_its_experiment_refuses_a_config_made_to_be_inverted(plain_site):
    """The review's attack (2026-12-05): a run config whose `set` makes m0's encoder an
    injective MLP as wide as the image, with a learning rate of ~0, would send the
    site's images as their posteriors. With `experiment` in its node config the site
    answers the app's config and refuses that one at describe, before anything is
    read or sent."""
    from mmvm.config import config_digest
    from mmvm.federation.settings import load_settings

    digest = config_digest(load_settings(app_run_config(), app_only=True).experiment)
    pinned = {**plain_site, "experiment": digest}
    assert not isinstance(describe(pinned, run_id=11), str)
    invert = ("model.latent_dim=4704;model.modalities.m0.kind=\"vector\";"
              "model.modalities.m0.network=\"mlp\";model.modalities.m0.width=4704;"
              "model.modalities.m0.layers=1;train.lr=1e-30")
    from mmvm.federation.messages import DescribeRequest
    from wire.records import to_record

    site_node._NODES.clear()
    context = Context(run_id=12, node_id=1, node_config=pinned, state=RecordDict(),
                      run_config=app_run_config(set=invert))
    reply = untagged(site_node.answer("describe", to_record(DescribeRequest()), context))[1]
    assert isinstance(reply, str) and reply.startswith(
        "PolicyError: site site-m0: the run's experiment config (digest ") \
        and f"(experiment={digest[:16]}...)" in reply and "Nothing was sent" in reply, reply


def test_a_run_that_only_describes_leaves_no_model_on_the_sites_disk(plain_site):
    """Security review (2026-12-06): one describe message of a new run wrote the
    site's whole model and optimizer (320 MB for a width the run's starter chose),
    and every run id that reached the site left one. Before attach the model is the
    seed's: the state file holds the protocol's place only, and a later process
    rebuilds the same model from the config."""
    import torch

    from mmvm.federation.site import Site

    for run_id, width in ((101, 4), (102, 256)):
        ctx = Context(run_id=run_id, node_id=1, node_config=plain_site, state=RecordDict(),
                      run_config=app_run_config(set=f"model.modalities.m0.width={width}"))
        from mmvm.federation.messages import DescribeRequest
        from wire.records import to_record

        assert not isinstance(site_node.answer("describe", to_record(DescribeRequest()),
                                               ctx), str)
        pt = Path(plain_site["state"]) / f"run-{run_id}" / "site-m0.pt"
        assert pt.stat().st_size < 100_000, pt.stat().st_size
    state = torch.load(pt, weights_only=False)
    assert state["model"] is None and state["progress"]["phase"] == "described"
    s, _, files = site_node.settings_and_policy(ctx)
    fresh, other = Site(s.experiment, *files), Site(s.experiment, *files)
    with torch.no_grad():  # a process that holds other weights (a review: restored
        for p in fresh.model.parameters():  # into it, they stayed)
            p.add_(1.0)
    fresh.restore(pt)  # as the process of the next message: the same model as any
    assert fresh.progress.phase == "described"
    theirs = other.model.state_dict()
    assert all(torch.equal(theirs[k], v) for k, v in fresh.model.state_dict().items())


def test_a_malformed_message_is_refused_before_the_site_reads_its_files(
        plain_site, monkeypatch):
    """Security review (2026-12-07): every message built the site (its whole train
    file read, the run's model built, its state restored) before the message was
    decoded, so a server repeating malformed messages made the site do seconds of
    work and allocate the model's memory for each. Now it is decoded first."""
    def built(*args, **kwargs):
        raise AssertionError("the site was built for a malformed message")

    context = Context(run_id=83, node_id=1, node_config=plain_site, state=RecordDict(),
                      run_config=app_run_config())
    assert not isinstance(describe(plain_site, 83), str)
    kept = site_node._NODES[(83, 1)]  # a site host keeps it between messages
    monkeypatch.setattr(site_node, "Site", built)
    said = site_node.answer("window", RecordDict(), context, resident=True)
    assert isinstance(said, str) and "MessageError" in said and "no 'body'" in said, said
    assert site_node._NODES[(83, 1)] is kept  # as it was: a plaintext host's training
    # since its last checkpoint is not thrown away for a message it could not read


def test_a_new_run_is_refused_while_the_earlier_runs_state_exceeds_max_state_gib(
        plain_site, capsys):
    """Each run keeps its state, and any server may start runs: past its node config's
    max-state-gib a site refuses new runs (journalled, the amount in its log only),
    while a run it has begun goes on."""
    import json

    from mmvm.federation.messages import AttachRequest
    from wire.records import to_record

    state = Path(plain_site["state"])
    tight = dict(plain_site, **{"max-state-gib": "1"})
    assert not isinstance(describe(tight, 76), str)  # described while there was room
    (state / "run-1").mkdir(parents=True)
    with open(state / "run-1" / "big.pt", "wb") as fh:  # 2 GiB, sparse: no disk used
        fh.truncate(2 * 2**30)
    said = describe(tight, 74)
    assert isinstance(said, str) and "its earlier runs' state takes more than its node " \
        "config allows, 1 GiB (max-state-gib)" in said and str(state) not in said
    assert not (state / "run-74").exists()
    assert re.search(rf"\[2,147,4\d\d,\d{{3}} bytes in {re.escape(str(state))}\]",
                     capsys.readouterr().err)  # its log's (the run described, too)
    refused = [json.loads(t) for t in (state / "refused.jsonl").read_text().splitlines()]
    assert "max-state-gib" in refused[-1]["refused"]
    # a run described while there was room begins to keep its state at attach: refused
    # there (a server that described many runs first would fill the disk at attach)
    context = Context(run_id=76, node_id=1, node_config=tight, state=RecordDict(),
                      run_config=app_run_config())
    said = site_node.answer("attach", to_record(AttachRequest(n=1, rows=[0], float16=False,
                                                              plan={})), context)
    assert isinstance(said, str) and "(max-state-gib)" in said, said
    assert not isinstance(describe(tight, 1), str)  # a run it has begun goes on
    assert not isinstance(describe(plain_site, 75), str)  # the default: 100 GiB
    # mmvm site check says so before the server does
    from mmvm.cli.site_check import check_node_config
    from mmvm.cli.site_findings import WARNING

    said = [f.detail for f in check_node_config(tight).findings
            if f.status == WARNING and f.item == "state"]
    assert "its runs' folders hold 2.0 GiB of max-state-gib 1; new runs are refused " \
        "until old run-<id> folders are removed" in said, said
