"""Faults with real processes: SuperNodes killed mid-run, one restarted, one for good.

A secure deployment on 127.0.0.1 (SuperLink with TLS and node auth, three SuperNodes,
``tests/support/deployment.py``) runs a many-window federation with ``site-timeout``
30 s and ``min-sites = 2``. After window 2 site b's SuperNode is killed with SIGKILL
(its ClientApp too: the whole process group) and restarted 20 s later with the same
node key and state dir, retried as a service manager would until the SuperLink takes
it back; after window 3 site c's SuperNode is killed for good. While only site a
answers, the windows wait up to twice the site-timeout for a second site (and pause
once the SuperLink counts the dead nodes offline); when b is back the run goes on
with a and b and completes.
``results.json`` lists the windows each site missed; b trained the last window (its
own state file says so) and c never came back. About 3 minutes (Flower starts a ClientApp process per message: ~12 s a window).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.support.deployment import BIN, Deployment
from tests.support.processes import wait_for_log

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=str(BIN)) is None,
        reason="flower-superlink not installed next to this Python",
    ),
]
WINDOWS = 8


def _kill(proc) -> None:
    os.killpg(proc.popen.pid, signal.SIGKILL)  # SuperNode and its ClientApp process
    proc.popen.wait(10)


def test_sites_drop_out_one_rejoins_and_the_run_completes(tmp_path):
    dep = Deployment(tmp_path)
    log = tmp_path / "run.log"
    try:
        dep.start()
        run = dep.submit(log, **{"set": f"train.epochs={WINDOWS}", "site-timeout": 30.0,
                                 "min-sites": 2, "pause-timeout": 300.0})
        assert wait_for_log(log, [f"window 2/{WINDOWS}"], 240, run), log.read_text()
        _kill(dep.nodes["b"])
        killed = time.monotonic()
        assert wait_for_log(log, [f"window 3/{WINDOWS}"], 120, run), log.read_text()
        _kill(dep.nodes["c"])
        time.sleep(max(0.0, 20 - (time.monotonic() - killed)))
        dep.restart_node("b")
        run.wait(600)
    finally:
        dep.fleet.stop()
    out = log.read_text()
    run_id = int(re.search(r"Successfully started run (\d+)", out).group(1))
    res = json.loads((dep.out / f"run-{run_id}" / "results.json").read_text())
    assert res["windows"] == WINDOWS, out
    missed = res["missed_windows"]
    assert {"b", "c"} <= set(missed), missed  # (a slow window may also cost a one)
    assert missed["b"] and max(missed["b"]) < WINDOWS - 1, missed  # b trained again
    assert WINDOWS - 1 in missed["c"] and res["not_evaluated"] == ["c"], res
    assert "without b" in out and "windows missed" in out, out
    evaluated = {e["site"] for e in res["evaluation"].values()}
    assert evaluated == {"a", "b"}
    state = torch.load(Path(dep.state) / "b" / f"run-{run_id}" / "b.pt", weights_only=True)
    assert state["progress"]["window"] == WINDOWS - 1
    assert state["windows_done"] == WINDOWS - len(missed["b"])
