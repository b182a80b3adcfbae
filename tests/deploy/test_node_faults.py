"""Faults with real processes: SuperNodes killed mid-run, then the SuperLink killed.

A secure deployment on 127.0.0.1 (SuperLink with TLS, node auth and a database file;
three SuperNodes, each site with the fork-server SuperExec of deploy/README.md section 8;
``tests/support/deployment.py``) runs one federation of 10 windows
with ``site-timeout`` 15 s and ``min-sites = 2``, and this happens to it:

1. after window 2 site b's SuperNode and SuperExec are killed with SIGKILL (their
   process groups: its ClientApp too) and restarted 20 s later with the same node key and state
   dir, retried as a service manager would until the SuperLink takes it back;
2. after window 3 site c is killed for good. While only a answers, a
   window waits up to twice the site-timeout for a second site (and the server
   pauses once the SuperLink counts the dead nodes offline);
3. once b has answered a window again, the SuperLink is killed with SIGKILL (its
   process group: the ServerApp too) and started again on its database; the
   SuperNodes reconnect on their own, and ``flwr run`` with ``resume=<id>`` continues
   the run with a and b (c is still away) to the end.

``results.json`` lists the windows each site missed; b trained again after it came
back and trained the last window (its own state file says so), every window was
trained once at a, and c never came back. (That a resumed run equals an uninterrupted
one is shown in one process, where the row order of the sealed protocol can be fixed:
tests/federation/test_resume.py.) The fork-server SuperExec answers a message in a
forked child of a process that imported torch once; with Flower's stock SuperExec (a
``flwr-clientapp`` process per message, ~12 s a window on 2 slow cores; that path is
what tests/deploy/test_deployment.py's last test runs) this test took 5 minutes.
"""

from __future__ import annotations

import json
import re
import shutil
import time

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
WINDOWS = 10  # b is back by window 5-7 (2 cores): windows left to resume


def _site_state(dep, site: str, run_id: int) -> dict:
    return torch.load(dep.state / site / f"run-{run_id}" / f"{site}.pt", weights_only=True)


def _without(line: str) -> set[str]:
    """The sites a progress line says the window went on without."""
    m = re.search(r"\(without ([^:]*): no reply\)", line)
    return set(m.group(1).split(", ")) if m else set()


def _b_answered_after(log, start: int, run, timeout: float) -> int:
    """The first window (1-based) after ``start`` characters of the log in which b
    took part; 0 if none did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        for line in log.read_text()[start:].splitlines():
            if line.startswith("window ") and "b" not in _without(line):
                return int(line.split()[1].split("/")[0])
        time.sleep(1)
    return 0


def test_sites_drop_out_rejoin_and_the_server_resumes(tmp_path):
    dep = Deployment(tmp_path / "dep", fork=True)
    log, log2 = tmp_path / "run.log", tmp_path / "resumed.log"
    opts = {"set": f"train.epochs={WINDOWS}", "site-timeout": 15.0, "min-sites": 2,
            "pause-timeout": 300.0, "cross-eval": "off"}  # (faults, not the evaluation)
    run = None
    try:
        dep.start(database=True)
        run = dep.submit(log, **opts)
        assert wait_for_log(log, [f"window 2/{WINDOWS}"], 240, run), log.read_text()
        dep.kill_node("b")
        killed = time.monotonic()
        assert wait_for_log(log, [f"window 3/{WINDOWS}"], 120, run), log.read_text()
        dep.kill_node("c")
        time.sleep(max(0.0, 20 - (time.monotonic() - killed)))
        dep.restart_node("b")
        mark = len(log.read_text())
        back = _b_answered_after(log, mark, run, 240)
        # the SuperLink must go down with windows left (at least one after b's next):
        # b is let back in only once the SuperLink has counted it offline (Flower's
        # heartbeats, ~60 s), and a slow machine ran 7 windows before that
        assert 0 < back <= WINDOWS - 2, f"b back at window {back}\n{log.read_text()}"
        dep.restart_superlink()
        run.wait(60)
        first = int(re.search(r"Successfully started run (\d+)", log.read_text()).group(1))
        run = dep.submit(log2, **opts, **{"resume": str(first), "connect-timeout": 10.0})
        run.wait(600)
    finally:
        if run is not None and run.poll() is None:
            run.kill()  # a failed assertion left `flwr run --stream` running
        dep.fleet.stop()
    before, out = log.read_text(), log2.read_text()
    assert f"mmvm: resuming run {first} after window" in out and "away: c" in out, out
    run_id = int(re.search(r"Successfully started run (\d+)", out).group(1))
    res = json.loads((dep.out / f"run-{run_id}" / "results.json").read_text())
    assert res["windows"] == WINDOWS, before + out
    missed = res["missed_windows"]
    assert {"b", "c"} <= set(missed), missed  # (a slow window may also cost a one)
    assert missed["b"] and max(missed["b"]) < WINDOWS - 1, missed  # b trained again
    assert WINDOWS - 1 in missed["c"] and res["not_evaluated"] == ["c"], res
    assert "without b" in before and "windows missed" in out, before + out
    assert "(b answers again after missing window" in before, before  # said when back
    assert {e["site"] for e in res["evaluation"].values()} == {"a", "b"}
    rows = (dep.out / f"run-{run_id}" / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(WINDOWS))
    b = _site_state(dep, "b", first)  # the sites continued their state of the first run
    assert b["progress"]["window"] == WINDOWS - 1 and b["progress"]["phase"] == "evaluated"
    # b trained every window it answered, and perhaps the one it was killed in (whose
    # reply never arrived)
    assert WINDOWS - len(missed["b"]) <= b["windows_done"] <= WINDOWS
    a = _site_state(dep, "a", first)
    assert WINDOWS - len(missed.get("a", [])) <= a["windows_done"] <= WINDOWS
