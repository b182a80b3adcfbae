"""Faults with real processes: SuperNodes killed mid-run, and the SuperLink killed.

A secure deployment on 127.0.0.1 (SuperLink with TLS, node auth and a database file;
three SuperNodes; ``tests/support/deployment.py``), shared by two runs:

1. ``site-timeout`` 30 s, ``min-sites = 2``. After window 2 site b's SuperNode is
   killed with SIGKILL (its ClientApp too: the whole process group) and restarted
   20 s later with the same node key and state dir, retried as a service manager
   would until the SuperLink takes it back; after window 3 site c's SuperNode is
   killed for good. While only a answers, a window waits up to twice the site-timeout
   for a second site (and the server pauses once the SuperLink counts the dead nodes
   offline); when b is back the run goes on with a and b and completes.
   ``results.json`` lists the windows each site missed; b trained the last window
   (its own state file says so) and c never came back.
2. c is started again; a new run is killed with the SuperLink (SIGKILL to its process
   group, the ServerApp included) after window 2, the SuperLink is started again on
   its database, and ``flwr run`` with ``resume=<id>`` continues: every window of the
   plan trained exactly once at every site, none missed. (That the resumed result
   equals an uninterrupted run is shown in one process, where the row order of the
   sealed protocol can be fixed: tests/federation/test_resume.py.)

Flower starts a ClientApp process per message: ~12 s a window. About 4 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time

import pytest
import torch

from tests.support.deployment import BIN, SITES, Deployment
from tests.support.processes import wait_for_log

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=str(BIN)) is None,
        reason="flower-superlink not installed next to this Python",
    ),
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("faults"))
    try:
        dep.start(database=True)
        yield dep
    finally:
        dep.fleet.stop()


def _kill(proc) -> None:
    os.killpg(proc.popen.pid, signal.SIGKILL)  # SuperNode and its ClientApp process
    proc.popen.wait(10)


def _results(dep, out: str) -> tuple[int, dict]:
    run_id = int(re.findall(r"Successfully started run (\d+)", out)[-1])
    return run_id, json.loads((dep.out / f"run-{run_id}" / "results.json").read_text())


def _site_state(dep, site: str, run_id: int) -> dict:
    return torch.load(dep.state / site / f"run-{run_id}" / f"{site}.pt", weights_only=True)


def test_sites_drop_out_one_rejoins_and_the_run_completes(deployment, tmp_path):
    dep, windows, log = deployment, 6, tmp_path / "run.log"
    run = dep.submit(log, **{"set": f"train.epochs={windows}", "site-timeout": 30.0,
                             "min-sites": 2, "pause-timeout": 300.0})
    assert wait_for_log(log, [f"window 2/{windows}"], 240, run), log.read_text()
    _kill(dep.nodes["b"])
    killed = time.monotonic()
    assert wait_for_log(log, [f"window 3/{windows}"], 120, run), log.read_text()
    _kill(dep.nodes["c"])
    time.sleep(max(0.0, 20 - (time.monotonic() - killed)))
    dep.restart_node("b")
    run.wait(600)
    out = log.read_text()
    run_id, res = _results(dep, out)
    assert res["windows"] == windows, out
    missed = res["missed_windows"]
    assert {"b", "c"} <= set(missed), missed  # (a slow window may also cost a one)
    assert missed["b"] and max(missed["b"]) < windows - 1, missed  # b trained again
    assert windows - 1 in missed["c"] and res["not_evaluated"] == ["c"], res
    assert "without b" in out and "windows missed" in out, out
    assert {e["site"] for e in res["evaluation"].values()} == {"a", "b"}
    state = _site_state(dep, "b", run_id)
    assert state["progress"]["window"] == windows - 1
    # it trained every window it answered, and perhaps the one it was killed in (whose
    # reply never arrived)
    assert windows - len(missed["b"]) <= state["windows_done"] <= windows


def test_a_killed_superlink_and_serverapp_resume_the_run(deployment, tmp_path):
    dep, windows = deployment, 5
    dep.restart_node("c")  # killed for good by the test above
    log = tmp_path / "run.log"
    run = dep.submit(log, **{"set": f"train.epochs={windows}", "site-timeout": 60.0})
    assert wait_for_log(log, [f"window 2/{windows}"], 240, run), log.read_text()
    dep.restart_superlink()
    run.wait(60)
    first = int(re.search(r"Successfully started run (\d+)", log.read_text()).group(1))
    assert (dep.out / f"run-{first}" / "server_state.pt").exists()
    log2 = tmp_path / "resumed.log"
    run = dep.submit(log2, **{"set": f"train.epochs={windows}", "site-timeout": 60.0,
                              "resume": str(first), "connect-timeout": 180.0})
    run.wait(600)
    out = log2.read_text()
    run_id, res = _results(dep, out)
    assert f"mmvm: resuming run {first} after window" in out, out
    assert res["windows"] == windows and res["missed_windows"] == {}, res
    rows = (dep.out / f"run-{run_id}" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(windows))
    for s in SITES:  # the sites continued their state of the first run: each window once
        state = _site_state(dep, s, first)
        assert state["progress"]["window"] == windows - 1
        assert state["windows_done"] == windows
        assert state["progress"]["phase"] == "evaluated"
    assert sorted(e["site"] for e in res["evaluation"].values()) == list(SITES)
    assert run_id != first
