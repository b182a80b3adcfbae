"""The real thing: `flwr run` against a SuperLink this test starts, simulation on Ray.

The run's exit code is 0 even when the ServerApp fails, so the test reads the run's
final status with `flwr ls --run-id ID --format json` and the results the server wrote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.fleet import Fleet

ROOT = Path(__file__).resolve().parents[2]
WIDTHS = ";".join(f"model.modalities.rat{i}.width=32" for i in range(1, 6))


def _run(fleet: Fleet, connection: str, run_config: str, nodes: int) -> tuple[str, str]:
    res = fleet.flwr("run", str(ROOT), connection, "--stream", "--run-config", run_config,
                     "--federation-config",
                     f"num-supernodes={nodes} client-resources-num-cpus=1", timeout=900)
    out = res.stdout + res.stderr
    found = re.search(r"run (?:ID )?(\d{5,})", out, re.IGNORECASE)
    assert found, f"no run id in flwr run output:\n{out[-3000:]}"
    return found.group(1), out


def _status(fleet: Fleet, connection: str, run_id: str) -> str:
    res = fleet.flwr("ls", connection, "--run-id", run_id, "--format", "json")
    data = json.loads(res.stdout[res.stdout.index("{"):])
    runs = data.get("runs", [data])
    return str(runs[0].get("status", runs[0]))


def _dirs(tmp_path: Path) -> str:
    return (f"data-dir='{tmp_path}/data' out-dir='{tmp_path}/runs' "
            f"state-dir='{tmp_path}/state'")


def _simulate(tmp_path: Path, run_config: str, nodes: int) -> tuple[str, str, str]:
    """``flwr run`` on a simulation SuperLink started for it: run id, output, status."""
    with Fleet(tmp_path / "fleet") as fleet:
        link = fleet.start_superlink(simulation=True)
        fleet.write_connection("sim", link)
        run_id, out = _run(fleet, "sim", run_config, nodes=nodes)
        return run_id, out, _status(fleet, "sim", run_id)


@pytest.mark.slow
def test_flwr_run_on_ray_trains_hippocampus_sites(tmp_path):
    """5 rats = 5 sites (one modality each), per-round exchange, float16 posteriors.
    The dense (v1) look-alike: 12 epochs learn its strong odor code (probes > 0.4); the
    default one is weak by design (docs/hippocampus-lookalike.md)."""
    rc = (f"config='configs/hippocampus.toml' "
          f"set='train.epochs=12;train.lr=3e-3;train.device=cpu;{WIDTHS}' "
          f"num-sites=5 exchange='round' hippocampus='dense' {_dirs(tmp_path)}")
    run_id, out, status = _simulate(tmp_path, rc, nodes=5)
    assert "completed" in status, f"run {run_id} ended {status}:\n{out[-3000:]}"
    results = json.loads((tmp_path / "runs" / f"run-{run_id}" / "results.json").read_text())
    assert results["windows"] == 12
    assert results["settings"]["num_sites"] == 5 and "layout" in results["settings"]
    assert "deployment" not in results["settings"]
    probes = [v for ev in results["evaluation"].values() for k, v in ev.items()
              if k.startswith("probe/")]
    assert len(probes) == 5
    assert min(probes) > 0.4, f"odor probes {probes} (chance 0.25)"
    assert results["bytes_total"] > 0
    assert (tmp_path / "runs" / f"run-{run_id}" / "checkpoint.pt").exists()
    # each rat's site scored its own spikes from the other four rats' test posteriors
    cross = results["cross_site"]
    assert len(cross["imputation"]["pairs"]) == 20 and results["cross_site_notes"] == {}
    assert set(cross["imputation"]["n"].values()) == {cross["imputation"]["samples"]}
    assert cross["coherence"]["mean"] > 0.4, cross["coherence"]  # odor: chance 0.25
    assert "cross-site evaluation" in out and "coherence" in out
