"""The fork-server SuperExec (``deploy.superexec_fork``) with real processes.

A SuperLink and three SuperNodes with ``--isolation process`` on 127.0.0.1, each with
its own ``python -m deploy.superexec_fork`` (the site starts it; the SuperNode starts
no SuperExec of its own), run a 2-window plaintext federation of three PolyMNIST
sites. The run must complete (``flwr ls``), every site must have trained (finite
metrics in every window, each site's sample count in ``results.json``) and every
ClientApp message must have run in a forked child (the fork servers' logs; with
``--isolation process`` the SuperNodes start no SuperExec of their own). No assertion on wall time. About 40-60 s.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.superexec_fork import APP_PACKAGES, check_preload
from tests.support.audit_app import make_app
from tests.support.deployment import SITES, TINY, make_data
from tests.support.fleet import Fleet
from tests.support.processes import free_port, wait_for_log

BIN = Path(sys.executable).parent


def test_preload_refuses_the_apps_own_packages():
    assert check_preload(["numpy", "torch.nn"]) == ["numpy", "torch.nn"]
    for name in APP_PACKAGES:
        with pytest.raises(SystemExit, match="part of the app bundle"):
            check_preload([f"{name}.x"])
    with pytest.raises(SystemExit, match="no such module"):
        check_preload(["no_such_module_here"])


def test_help_lists_flower_superexec_arguments():
    res = subprocess.run([sys.executable, "-m", "deploy.superexec_fork", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--preload" in res.stdout and "--runtime-api-address" in res.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flower-supernode", path=str(BIN)) is None,
                    reason="flower-supernode not installed next to this Python")
def test_sites_train_in_forked_clientapps(tmp_path):
    data = make_data(tmp_path / "data", n_train=48, n_test=16)
    app = make_app(tmp_path / "app")
    (app / "configs" / "tiny.toml").write_text(TINY)  # sites read the app's configs only
    fleet = Fleet(tmp_path / "fleet", bin_dir=BIN)
    try:
        link = fleet.start_superlink()
        fleet.write_connection("local", link)
        nodes, execs = [], []
        for s in SITES:
            port = free_port()
            nodes.append(fleet.start_supernode(
                s, link, port=port, extra_args=["--isolation", "process"],
                node_config=f'site="{s}" data="{data[s]}" state="{tmp_path / "state" / s}"'))
            execs.append(fleet.start(f"superexec-{s}", [
                sys.executable, "-m", "deploy.superexec_fork", "--insecure",
                "--runtime-api-address", f"127.0.0.1:{port}"]))
        for proc in nodes:
            assert wait_for_log(proc.log, ["SuperNode ID:"], 90, proc.popen), \
                proc.log_text()
        cfg = ("config='configs/tiny.toml' num-sites=3 exchange='round' "
               f"local-epochs=1 eval-data='' collect-model=false "
               f"out-dir='{tmp_path / 'runs'}' reply-timeout=120.0")
        res = fleet.flwr("run", str(app), "local", "--stream", "--run-config", cfg,
                         timeout=600, check=False)
        out = res.stdout + res.stderr
        assert "Successfully started run" in out, out
        run_id = out.split("Successfully started run ")[1].split()[0]
        status = json.loads(fleet.flwr("ls", "--run-id", run_id, "--format", "json")
                            .stdout)["runs"][0]["status"]
        assert status == "finished:completed", out

        run = tmp_path / "runs" / f"run-{run_id}"
        results = json.loads((run / "results.json").read_text())
        assert results["windows"] == 2
        assert sorted(v["site"] for v in results["sites"].values()) == list(SITES)
        assert all(v["n"] == 48 for v in results["sites"].values())
        with open(run / "metrics.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 2
        assert all(math.isfinite(float(r["rec_nll"])) and float(r["rec_nll"]) > 0
                   for r in rows)
        forked = sum(p.log_text().count("forked by deploy.superexec_fork") for p in execs)
        assert forked >= 3 * 4, [p.log_text()[-2000:] for p in execs]  # describe,
        # attach, 2 windows per site at least
        for p in execs:
            assert p.popen.poll() is None, p.log_text()  # the fork servers stay up
    finally:
        fleet.stop()
    assert all(p.popen.poll() is not None for p in fleet.processes)
