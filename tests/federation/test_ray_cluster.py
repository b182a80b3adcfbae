"""`flwr run` on an existing Ray cluster: head + worker node (`ray start`), SuperLink
started with RAY_ADDRESS, per-site resources from the federation config.

Both Ray nodes run on this machine, each with its own raylet and private temp dir
(deploy.local.Fleet.start_ray_head/start_ray_worker); the head offers 0 CPUs, so
every ClientApp actor must be scheduled on the worker node. That is what the test
checks, from the worker node's own Ray session logs, next to the run's status
(`flwr ls`, since `flwr run --stream` exits 0 on failure) and its results.
This is the single-machine rehearsal of deploy/README.md section 6.

The run is also the suite's proof that a plain `flwr run` simulation learns: 5 rats =
5 sites (one modality each), per-round exchange, float16 posteriors, on the dense (v1)
look-alike, whose strong odor code 12 epochs learn (probes > 0.4; the default one is
weak by design, docs/hippocampus-lookalike.md), with the cross-site evaluation at the
end. (A Ray that Flower starts itself runs `mmvm run`'s simulations:
tests/federation/test_run_command.py.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fleet import Fleet
from tests.support.processes import QUIET_ENV, pids_mentioning

ROOT = Path(__file__).resolve().parents[2]
SITES = 5
WIDTHS = ";".join(f"model.modalities.rat{i}.width=32" for i in range(1, SITES + 1))


def _actor_logs(node, actor: str = "ClientAppActor") -> list[Path]:
    """Ray worker-process logs of `node` that ran an ``actor``."""
    hits = []
    for logs in node.session_logs():
        for path in logs.glob("worker-*.out"):
            if actor in path.read_text(errors="replace"):
                hits.append(path)
    return hits


@pytest.mark.slow
def test_flwr_run_on_ray_cluster_head_and_worker(tmp_path):
    rc = (f"config='configs/hippocampus.toml' "
          f"set='train.epochs=12;train.lr=3e-3;train.device=cpu;{WIDTHS}' "
          f"num-sites={SITES} exchange='round' hippocampus='dense' "
          f"data-dir='{tmp_path}/data' out-dir='{tmp_path}/runs' state-dir='{tmp_path}/state'")
    fleet = Fleet(tmp_path / "fleet")
    ray_root = None
    try:
        head = fleet.start_ray_head(num_cpus=0)  # no actors on the head
        ray_root = fleet.ray_root
        worker = fleet.start_ray_worker(head, num_cpus=2)  # 2 actors of 1 CPU
        status = fleet.wait_for_ray_nodes(head, 2)
        assert "0.0/2.0 CPU" in status, status  # the cluster: 0 + 2 CPUs
        _site_resources_no_node_has_are_refused(head.address, tmp_path)

        link = fleet.start_superlink(simulation=True, ray_address=head)
        fleet.write_connection("sim", link)
        res = fleet.flwr(
            "run", str(ROOT), "sim", "--stream", "--run-config", rc,
            "--federation-config",
            f"num-supernodes={SITES} client-resources-num-cpus=1", timeout=900)
        out = res.stdout + res.stderr
        found = re.search(r"run (?:ID )?(\d{5,})", out, re.IGNORECASE)
        assert found, f"no run id in flwr run output:\n{out[-3000:]}"
        run_id = found.group(1)

        ls = fleet.flwr("ls", "sim", "--run-id", run_id, "--format", "json").stdout
        run = json.loads(ls[ls.index("{"):]).get("runs", [{}])[0]
        assert "completed" in str(run.get("status", run)), (
            f"run {run_id}: {run}\n{out[-3000:]}\n{link.process.log_text()[-3000:]}")

        _learned(json.loads((tmp_path / "runs" / f"run-{run_id}" / "results.json")
                            .read_text()), out)
        assert (tmp_path / "runs" / f"run-{run_id}" / "checkpoint.pt").exists()

        # The simulation used *this* cluster, and its actors ran on the worker:
        # one actor process per 1-CPU site slot of the worker's 2 CPUs.
        actors = _actor_logs(worker)
        assert len(actors) == 2, (
            f"ClientAppActor logs on the worker node: {[str(p) for p in actors]} "
            f"(session logs {[str(p) for p in worker.session_logs()]})")
        assert not _actor_logs(head)
        # the sites' hosts, which train, too: they ask Ray for no CPU, so without a
        # node affinity two of five landed on the 0-CPU head
        hosts = {n.name: len(_actor_logs(n, "SiteHost")) for n in (head, worker)}
        assert hosts == {"head": 0, "worker1": SITES}, hosts
        assert "RAY_ADDRESS" not in os.environ  # it was the SuperLink's alone
    finally:
        fleet.stop()
    # nothing of the cluster is left: no process names its temp dir, which is gone
    assert ray_root is not None
    assert not pids_mentioning(str(ray_root))
    assert not ray_root.exists()
    groups = {proc.popen.pid for proc in fleet.processes}
    for proc in fleet.processes:
        assert proc.popen.poll() is not None, proc.name
    assert not _pids_in_groups(groups), "processes left in the fleet's groups"


def _learned(results: dict, out: str) -> None:
    """12 windows of 5 sites that learned the odor, and each rat scored from the
    other four rats' test posteriors."""
    assert results["windows"] == 12
    assert results["settings"]["num_sites"] == SITES and "layout" in results["settings"]
    assert "deployment" not in results["settings"] and results["bytes_total"] > 0
    probes = [v for ev in results["evaluation"].values() for k, v in ev.items()
              if k.startswith("probe/")]
    assert len(probes) == SITES
    assert min(probes) > 0.4, f"odor probes {probes} (chance 0.25)"
    cross = results["cross_site"]
    assert len(cross["imputation"]["pairs"]) == 20 and results["cross_site_notes"] == {}
    assert set(cross["imputation"]["n"].values()) == {cross["imputation"]["samples"]}
    assert cross["coherence"]["mean"] > 0.4, cross["coherence"]  # odor: chance 0.25
    assert "cross-site evaluation" in out and "coherence" in out


def _site_resources_no_node_has_are_refused(address: str, tmp_path: Path) -> None:
    """Flower starts no site where no node of the cluster has a site's CPUs and GPU
    share (its run fails in the SuperLink: "ActorPool is empty"); mmvm run says so,
    with what the nodes have, before Flower starts."""
    env = {**os.environ, **QUIET_ENV, "RAY_ADDRESS": address,
           "FLWR_HOME": str(tmp_path / "flwr-home")}
    for flags in (["--gpus-per-site", "0.5"], ["--cpus-per-site", "3"]):
        res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", *flags], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        said = res.stderr
        assert f"RAY_ADDRESS={address}: no node of that Ray cluster offers" in said, said
        assert " ".join(flags) in said and "0 CPU + 0 GPU" in said and \
            "2 CPU + 0 GPU" in said, said  # what it asked, what the two nodes have
    assert not (tmp_path / "flwr-home" / "local-superlink").exists()  # no Flower started


def _pids_in_groups(groups: set[int]) -> list[int]:
    """Live (non-zombie) processes whose process group is one of `groups`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            pids.append(int(stat.parent.name))
    return pids
