"""A real secure deployment on 127.0.0.1: SuperLink + 3 SuperNodes, TLS, node auth.

One SuperLink (TLS, SuperNode authentication) and three registered SuperNodes
(sites a, b, c: one PolyMNIST modality each, data written by the test, keys by
``deploy.make_keys``) are started once for the module, each SuperNode with
``--isolation process`` and the site's fork-server SuperExec next to it
(``deploy.superexec_fork``, deploy/README.md section 8; the last test restarts site
c with Flower's stock SuperExec, a ``flwr-clientapp`` process per message); the tests
then

* run a 2-window federation with ``secure = true`` and check its final status
  (``flwr ls``), the ``results.json`` the server wrote, and that every ClientApp
  message ran in a child forked by the site's SuperExec, which stays up (site c's
  SuperExec runs only this app's bundle hash: ``--allow-fab``);
* check the server's audit log of that run (every message content the ServerApp
  sent or received, in Flower's wire encoding, recorded by the test-only ServerApp
  of ``tests/support/audit_app.py`` around the product's) for raw sample ids,
  plaintext posterior tables and the posterior values that travelled inside
  envelopes (the training's and the cross-site evaluation's);
* check the SuperLink's TLS (``mmvm site check --superlink``: its CA verifies it,
  another does not);
* start a fourth SuperNode with an unregistered key and see it refused (the three
  registered ones stay the only nodes listed);
* run with the server flipping one byte of one routed envelope: the run fails with
  the recipient's TamperedEnvelopeError and that site's state did not advance;
* refuse a run at a site pinned to another app bundle (the release's);
* restart the three sites in plaintext, c with Flower's stock SuperExec, each keeping
  its weights (``allow-collect=false``): the cross-site evaluation is then the run's
  only coherence and imputation; one site's window reply is spoiled (a NaN loss) on
  the way: the server refuses it and the run completes without that site for that
  window.

Every process started is stopped in ``finally`` (and checked). About 4 minutes
(5 runs: the good one, the tampered, the refused plaintext, the refused bundle, the
stock plaintext).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploy import make_keys
from mmvm.cli.site_findings import ERROR, OK, NodeCheck
from mmvm.cli.site_link import check_superlink
from tests.support.audit_app import blobs_in, read_dump
from tests.support.deployment import SITES, Deployment
from tests.support.processes import wait_for_log

BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=str(BIN)) is None,
        reason="flower-superlink not installed next to this Python",
    ),
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from deploy.fab_pin import fab_sha256

    dep = Deployment(tmp_path_factory.mktemp("deploy"), fork=True)
    dep.allow_fab["c"] = fab_sha256(dep.app)  # c runs this app's bundle only
    try:
        dep.start()
        dep.runs = {}
        yield dep
    finally:
        dep.fleet.stop()
        assert all(p.popen.poll() is not None for p in dep.fleet.processes)


@pytest.fixture(scope="module")
def good_run(deployment):
    """The secure run the module's tests look into; meanwhile the private copies of
    the bundle that pinned site c's tasks make are recorded (``fab_copies``)."""
    import threading

    dump, seen, done = deployment.root / "server-messages.bin", set(), threading.Event()

    def watch() -> None:  # a task's copy lives while the task runs (0.5 s or more)
        while not done.wait(0.1):
            seen.update(p.name for p in deployment.fab_tmp.glob("mmvm-fab-*"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run_id, out = deployment.run(**{"test-dump-messages": str(dump)})
    finally:
        done.set()
        watcher.join()
    deployment.fab_copies = seen
    return run_id, out, dump


def test_two_windows_secure_run_completes(deployment, good_run):
    run_id, out, _ = good_run
    assert deployment.status(run_id) == "finished:completed", out
    res = json.loads((deployment.out / f"run-{run_id}" / "results.json").read_text())
    assert res["windows"] == 2
    # the sites' node configs chose their data, state and keys: none of the run
    # config's simulation-only settings is recorded as if they had been used
    assert res["settings"]["deployment"] is True
    assert not set(res["settings"]) & {"layout", "data_dir", "n_train", "state_dir"}
    assert sorted(v["site"] for v in res["sites"].values()) == list(SITES)
    assert all(v["n"] == 96 for v in res["sites"].values())
    ev = res["evaluation"]
    assert sorted(e["site"] for e in ev.values()) == list(SITES)
    for e in ev.values():
        (m,) = e["modalities"]
        assert np.isfinite(e[f"recon_nll/{m}"]) and 0.0 <= e[f"probe/{m}"] <= 1.0
    assert res["bytes_total"] > 0
    # the cross-site evaluation over sealed test posteriors: every ordered pair of
    # the three sites' modalities scored, with the sites' own judges
    cross = res["cross_site"]
    assert len(cross["imputation"]["pairs"]) == 6 and res["cross_site_notes"] == {}
    assert len([k for k in cross["coherence"]["pairs"] if len(set(k.split("->"))) == 2]) == 6
    assert np.isfinite(cross["imputation"]["total"])
    # describe, align, attach, 2 windows and evaluate at each site, each in a child
    # forked by that site's SuperExec (the SuperNodes start none of their own)
    for s, proc in deployment.execs.items():
        assert proc.log_text().count("forked by deploy.superexec_fork") >= 6, s
        # no child re-ran the module as its __main__ (runpy warned at every message)
        assert "RuntimeWarning" not in proc.log_text(), proc.log_text()[-3000:]
        assert proc.popen.poll() is None, proc.log_text()  # the fork servers stay up
    # c ran it pinned to this app's bundle (the refusal of another: below)
    assert deployment.execs["c"].popen.args[-2:] == ["--allow-fab",
                                                     deployment.allow_fab["c"]]


def test_each_site_keeps_its_own_journal_of_what_it_sent(deployment, good_run):
    """A security walkthrough could not tell afterwards what its site had sent. Each
    site's ``<site>.sent.jsonl`` (0600, in its state folder) has one line per reply:
    the values the server then recorded, and the sealed envelopes by recipient and
    size; none of the site's sample ids."""
    import stat

    from mmvm.data.store import read_site_table

    run_id, _, _ = good_run
    res = json.loads((deployment.out / f"run-{run_id}" / "results.json").read_text())
    evaluated = {e["site"]: e for e in res["evaluation"].values()}
    for s in SITES:
        path = deployment.state / s / f"run-{run_id}" / f"{s}.sent.jsonl"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        lines = [json.loads(t) for t in text.splitlines()]
        kinds = [ln["kind"] for ln in lines]
        assert kinds[0] == "describe" and kinds.count("window") == 2, kinds
        assert {"align", "attach", "heldout", "evaluate"} <= set(kinds), kinds
        (last,) = [ln["sent"] for ln in lines if ln["kind"] == "evaluate"]
        got = {k: v for k, v in last["metrics"].items() if k.startswith("probe/")}
        assert got and all(evaluated[s][k] == v for k, v in got.items()), got
        window = next(ln["sent"] for ln in lines if ln["kind"] == "window")
        assert set(window["posteriors"]) == set(SITES) - {s}  # sealed, to each peer
        assert all(v.endswith(" bytes>") for v in window["posteriors"].values())
        ids = read_site_table(deployment.data[s] / "train.parquet").sample_ids
        assert not [i for i in ids if f'"{i}"' in text]


def test_server_never_handles_ids_or_plaintext_posteriors(deployment, good_run):
    """What this proves: no message content the ServerApp sent or received (its
    whole interface to the sites) holds a raw sample id, a plaintext Arrow
    posterior table, or any of the posterior vectors exchanged in the envelopes
    (the test opens them with the recipients' keys, which the server lacks).
    It does not inspect the SuperLink's memory; the SuperLink relays exactly
    these message contents (TLS covers the network)."""
    from mmvm.data.store import read_site_table
    from mmvm.federation.posteriors import decode_table
    from mmvm.secure.envelope import open_envelope, peek_header
    from mmvm.secure.keys import SiteKeys, load_public_directory

    run_id, out, dump_path = good_run
    records = read_dump(dump_path)
    stages = {h["stage"] for h, _ in records}
    assert {"describe", "align", "attach", "window 0", "window 1", "heldout",
            "evaluate"} <= stages
    dump = b"".join(body for _, body in records)
    ids = [i for s in SITES for split in ("train", "test")
           for i in read_site_table(deployment.data[s] / f"{split}.parquet").sample_ids]
    assert not [i for i in ids if i.encode() in dump]
    assert b"mmvm.modality" not in dump and b"sample_id" not in dump
    keys = {s: SiteKeys.load(deployment.keys / "sites" / s / "site_keys.json")
            for s in SITES}
    directory = load_public_directory(deployment.keys / "public_keys.json")
    vectors = tests = 0
    for _, body in records:
        for blob in blobs_in(body):
            head = peek_header(blob)
            if head.kind not in ("posterior", "testposterior"):
                continue
            tests += head.kind == "testposterior"
            payload = open_envelope(keys[head.recipient], directory[head.sender], blob,
                                    run_id=run_id, expected_round=head.round)
            for p in decode_table(payload).values():
                for arr in (p.mu, p.logvar):
                    for row in arr:
                        assert row[:4].astype(np.float32).tobytes() not in dump
                        vectors += 1
    assert vectors > 100  # every window's posteriors were checked
    assert tests == 12  # and the 6 test envelopes, each in its sender's reply and its
    # recipient's evaluate message


def test_the_superlink_speaks_tls_that_only_its_ca_verifies(deployment, tmp_path):
    """What ``mmvm site check --superlink`` finds: the SuperLink's certificate is
    verified by the deployment's CA and by no other."""
    assert "Uvicorn running on https://" in deployment.link.process.log_text()
    check = NodeCheck("a")
    check_superlink(check, deployment.link.address, str(deployment.keys / "ca.crt"))
    assert [f.status for f in check.findings] == [OK], check.findings
    other = tmp_path / "other"
    make_keys.write_all(make_keys.pki_files(other, ["localhost"]), force=False)
    check_superlink(check, deployment.link.address, str(other / "ca.crt"))
    assert check.findings[-1].status == ERROR
    assert f"does not verify against {other / 'ca.crt'}" in check.findings[-1].detail


def test_unregistered_site_is_refused(deployment):
    other = deployment.root / "intruder"
    assert make_keys.main(["--out", str(other), "--sites", "mallory"]) == 0
    site = other / "sites" / "mallory"
    proc = deployment.fleet.start_supernode(
        "mallory", deployment.link, auth_key=site / "mallory",
        root_certificates=deployment.keys / "ca.crt", max_retries=1,
        node_config=f'site="mallory" data="{deployment.data["a"]}" '
                    f'keys="{site / "site_keys.json"}"')
    assert wait_for_log(proc.log, ["Failed to activate SuperNode"], 90, proc.popen), \
        proc.log_text()
    proc.popen.wait(60)
    assert proc.popen.returncode != 0
    assert "No SuperNode found with the given public key" in \
        deployment.link.process.log_text()
    listed = deployment.fleet.flwr("supernode", "list", "mmvm", "--format", "json")
    nodes = json.loads(listed.stdout)["nodes"]  # the three registered sites only
    assert [n["status"] for n in nodes] == ["online"] * len(SITES), listed.stdout


def test_tampered_envelope_fails_the_run_and_applies_nothing(deployment, good_run):
    import torch

    run_id, out = deployment.run(**{"test-tamper-window": 0})
    assert deployment.status(run_id).startswith("finished:failed"), out
    m = re.search(r"TEST tamper: flipped a byte of (\w+)'s envelope to (\w+)", out)
    assert m, out
    sender, victim = m.groups()
    assert "TamperedEnvelopeError" in out and "failed authentication" in out, out
    state = deployment.state / victim / f"run-{run_id}"  # from the node config
    saved = torch.load(state / f"{victim}.pt", weights_only=True)
    assert saved["windows_done"] == 0  # attached, window 0 never applied
    guard = json.loads((state / f"{victim}.guard.json").read_text())
    assert guard["latest_round"][sender] == 0  # only the id-key round was accepted
    assert not (deployment.out / f"run-{run_id}" / "results.json").exists()


def test_a_secure_site_refuses_a_plaintext_run(deployment, good_run):
    """Whoever submits the run sets secure = false: every site's node config has
    keys, hence require-secure, so the run fails before any site sends anything."""
    run_id, out = deployment.run(secure=False)
    assert deployment.status(run_id).startswith("finished:failed"), out
    assert "require-secure" in out and "Nothing was sent" in out, out
    assert not (deployment.out / f"run-{run_id}" / "results.json").exists()
    for s in SITES:  # no site even built its state for that run
        assert not (deployment.state / s / f"run-{run_id}").exists()
        # each records, in its state folder, the run it refused and what it said
        refused = [json.loads(t) for t in
                   (deployment.state / s / "refused.jsonl").read_text().splitlines()]
        assert [(r["run"], r["kind"]) for r in refused] == [(run_id, "describe")]
        assert "require-secure" in refused[0]["refused"]


def test_a_site_pinned_to_its_reviewed_app_runs_no_other(deployment, good_run):
    """The run submitter ships the code that reads the node config: a bundle with
    those lines deleted would ignore it (a security walkthrough did so). Site c's
    SuperExec pinned to the product's release (``flwr run`` of the repository)
    refuses this deployment's app (the product plus the test's audit ServerApp):
    the run fails at describe with c's reason, and c ran none of the bundle's code
    (no state folder of that run). Pinned to this app's hash, c ran the good run
    (:func:`test_two_windows_secure_run_completes`), and each of its tasks' private
    copies of the bundle is gone. (Site c stays pinned to the release until the
    plaintext test restarts every site.)"""
    from deploy.fab_pin import fab_sha256

    dep, root = deployment, Path(__file__).resolve().parents[2]
    release, app = fab_sha256(root), dep.allow_fab["c"]
    assert release != app
    # each task's private copy of the bundle was removed when the task ended
    assert dep.fab_copies, "c's tasks made no private copy of the bundle to remove"
    deadline = time.monotonic() + 20
    while list(dep.fab_tmp.glob("mmvm-fab-*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not list(dep.fab_tmp.glob("mmvm-fab-*"))
    pinned = dep.restart_superexec("c", "c-pinned", "--allow-fab", release)
    run_id, out = dep.run(**{"cross-eval": "off"})
    assert dep.status(run_id).startswith("finished:failed"), out
    said = re.search(r"run failed: describe: site node \d+ failed: FabRefused: this site "
                     r"runs only the app bundles it reviewed \(--allow-fab (\w+)\); the "
                     r"run's is (\w+): refused before any of its code ran", out)
    assert said and said.groups() == (release[:16], app[:16]), out
    assert not (dep.state / "c" / f"run-{run_id}").exists()
    assert "FabRefused" in pinned.log_text()  # the site's own log says it too


def test_plaintext_sites_that_keep_their_weights_get_coherence_and_imputation(
        deployment, good_run):
    """The same three sites restarted without keys, each with ``allow-collect=false``
    in its node config: the server assembles no model and holds no data, so the
    cross-site evaluation is the run's only coherence and imputation: each site sends
    its test posteriors and scores its own modality from the other two sites'. One
    site's window-0 reply is refused on the way (:func:`_refused_reply_costs_window_0`).
    Site c's SuperNode now runs Flower's stock SuperExec (a ``flwr-clientapp``
    process per message, 6-8 s of CPU each here; the only test of that path: the
    guides run the fork server). (Last in the module: the sites stay so.)"""
    dep = deployment
    dep.restart_nodes(plaintext="allow-collect=false", stock=("c",))
    run_id, out = dep.run(secure=False, **{"collect-model": True, "test-spoil-window": 0})
    assert dep.status(run_id) == "finished:completed", out
    _refused_reply_costs_window_0(dep, run_id, out)
    folder = dep.out / f"run-{run_id}"
    res = json.loads((folder / "results.json").read_text())
    assert sorted(res["kept_weights"]) == list(SITES)  # their node configs said so
    assert not (folder / "checkpoint.pt").exists()
    cross = res["cross_site"]
    pairs = {f"m{i}->m{j}" for i in range(3) for j in range(3) if i != j}
    assert set(cross["imputation"]["pairs"]) == pairs, cross
    assert cross["imputation"]["samples"] == 48 and res["cross_site_notes"] == {}
    assert all(math.isfinite(v) for v in cross["imputation"]["pairs"].values())
    assert set(cross["coherence"]["pairs"]) == pairs | {f"m{i}->m{i}" for i in range(3)}
    assert all(0.0 <= v <= 1.0 for v in cross["coherence"]["pairs"].values())
    assert "cross-site evaluation" in out and "imputation NLL" in out


def _refused_reply_costs_window_0(dep, run_id: int, out: str) -> None:
    """The server refused one site's window-0 reply (it reports a NaN loss, as a site
    whose training diverged would): the run went on without that site for window 0
    (its posteriors not routed; the others' priors lacked its modality), and the site
    trained window 1 and was evaluated. (A secure run leaves such a site out through
    the same dropout path: tests/federation/test_admission.py, in one process.)"""
    m = re.search(r"TEST spoil: (\w+)'s reply to window 0", out)
    assert m, out
    site = m.group(1)
    assert re.search(rf"window 1/2 .*\(without {site}: refused, sent metrics .*nan", out), out
    res = json.loads((dep.out / f"run-{run_id}" / "results.json").read_text())
    assert res["missed_windows"] == {site: [0]}
    (refusal,) = res["refused_windows"][site]
    assert refusal["window"] == 0 and "not finite" in refusal["reason"]
    assert sorted(e["site"] for e in res["evaluation"].values()) == list(SITES)
