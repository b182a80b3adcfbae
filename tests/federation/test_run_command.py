"""`mmvm run`: the first-hour console. A run that works prints progress and a summary
with nothing alarming; a run that cannot work exits 1 with one line that says why.

Real processes: a simulation SuperLink this test starts, `mmvm run` as a user types
it, Ray under it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.fleet import Fleet
from tests.support.processes import pids_mentioning

ROOT = Path(__file__).resolve().parents[2]
ALARMING = ("Traceback", "Warning", "warnings.warn", "ERROR")


def _quick(run_config: str) -> str:
    """The cross-site evaluation off unless a test asks for it: its judges train at
    every site (tests/federation/test_cross_eval.py and the hippocampus simulation
    test it)."""
    return run_config if "cross-eval" in run_config else f"{run_config} cross-eval='off'"


def _mmvm_run(fleet: Fleet, run_config: str) -> tuple[int, str]:
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--connection", "sim",
                          "--run-config", _quick(run_config)],
                         env=fleet.env, cwd=fleet.workdir, capture_output=True, text=True,
                         timeout=900)
    return res.returncode, res.stdout + res.stderr


def _acting(fleet: Fleet, run_config: str, until: str,
            act: Callable[[subprocess.Popen], object]) -> tuple[subprocess.Popen, str]:
    """`mmvm run` of ``run_config``, ``act(proc)`` done at its first output line that
    contains ``until``; the process and its whole output."""
    proc = subprocess.Popen([sys.executable, "-m", "mmvm.cli", "run", "--connection",
                             "sim", "--run-config", _quick(run_config)], env=fleet.env,
                            cwd=fleet.workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if until in line:
            break
    assert seen and until in seen[-1], "".join(seen[-40:])
    act(proc)
    # the rest from the same reader: it has read ahead, and communicate(timeout=...)
    # reads the pipe underneath it, so the lines it held were lost (CI lost windows
    # 6 and 7 so, which made a console that had shown them look as if it had not)
    hung = threading.Timer(600, proc.kill)
    hung.start()
    try:
        seen.append(proc.stdout.read())
    finally:
        hung.cancel()
    proc.wait()
    if hung.finished.is_set():
        seen.append("\n[test: mmvm run was killed after 600 s without ending]\n")
    return proc, "".join(seen)


def _interrupted(fleet: Fleet, run_config: str, until: str, signum: int
                 ) -> tuple[subprocess.Popen, str]:
    """`mmvm run` of ``run_config``, sent ``signum`` at its first line with ``until``."""
    return _acting(fleet, run_config, until, lambda proc: proc.send_signal(signum))


def _simulate(tmp: Path, run_config: str) -> tuple[int, str]:
    """`mmvm run` of ``run_config`` on a simulation SuperLink started for it."""
    with Fleet(tmp / "fleet") as fleet:
        fleet.write_connection("sim", fleet.start_superlink(simulation=True))
        return _mmvm_run(fleet, run_config)


def _dirs(tmp: Path) -> str:
    return f"data-dir='{tmp}/data' out-dir='{tmp}/runs' state-dir='{tmp}/state'"


@pytest.mark.slow
def test_a_short_run_prints_progress_and_a_summary_and_exits_0(tmp_path):
    # judges of 2 epochs: this test is about the console, not the judges' accuracy;
    # exact windows of one step: the site hosts run each step's decoder half ahead;
    # float32 posteriors: the run is then centralized training bit for bit (below)
    rc = (f"set='train.epochs=1;train.batch_size=100;eval.classifier_epochs=2;"
          f"eval.classifier_min_image_steps=0' "
          f"exchange='step' float16=false n-train=300 n-test=100 {_dirs(tmp_path)}")
    code, out = _simulate(tmp_path, rc)
    assert code == 0, out[-4000:]
    lines = out.splitlines()
    alarming = [ln for ln in lines if any(word in ln for word in ALARMING)]
    assert not alarming, "\n".join(alarming)
    assert "\x1b[" not in out  # a pipe gets no colour codes
    assert any("window 3/3" in ln for ln in lines), out[-3000:]
    assert any(ln.startswith("mmvm: aligned 300 samples across 3 sites") for ln in lines)
    assert any("completed" in ln for ln in lines)
    run_dir = next((tmp_path / "runs").glob("run-*"))
    assert str(run_dir) in out  # the summary says where the results are
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "curves.png").exists()
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    ahead = [float(r["ahead_s"]) for r in rows]
    assert len(ahead) == 3 and min(ahead) > 0, ahead  # the decoder half ran every window
    # the hosts write their state at attach and at the last window's checkpoint only:
    # no disk time in the windows between (attach's writes are not window 1's)
    assert [float(r["disk_s"]) for r in rows][:2] == [0.0, 0.0], rows
    used = json.loads((run_dir / "results.json").read_text())["config"]
    assert used["train"]["out_dir"] == str(run_dir)  # what the run used, not the file's
    assert used["data"]["root"].startswith(str(tmp_path / "data"))
    # the server's evaluation says what it read, as mmvm evaluate does
    settings = json.loads((run_dir / "eval.json").read_text())["settings"]
    assert settings["data"]["root"].startswith(str(tmp_path / "data"))
    assert settings["dataset"]["test_samples"] == 100 and settings["data"]["max_test"] == 0
    assert settings["eval"]["classifier_epochs"] == 2
    _equals_centralized(run_dir, used, tmp_path)


def _equals_centralized(run_dir: Path, used: dict, tmp_path: Path) -> None:
    """The README's claim for ``exchange='step'`` with float32 posteriors, under
    Flower and Ray: the assembled model is ``mmvm train``'s on the same rows, every
    weight bit for bit (tests/federation/test_exactness.py shows it in one process,
    with missing modalities, BatchNorm, AMP and clipping too)."""
    import torch

    from mmvm.checkpoint import load_checkpoint
    from mmvm.config import config_from_dict
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.training import train

    # the sites' files, which the run aligned; the sites' threads (client/hosts.py)
    files = sorted((tmp_path / "data").glob("polymnist-*/sites-vertical-*/site-m*/"
                                            "train.parquet"))
    assert len(files) == 3, files
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 3))
    data = MultimodalDataset.from_parquet(files, ["m0", "m1", "m2"])
    raw = {k: v for k, v in used.items() if k != "source"}  # (where it was read)
    cfg = config_from_dict({**raw, "train": {**raw["train"],
                                             "out_dir": str(tmp_path / "central")}})
    central = train(cfg, data, resume=False, show_progress=False).model.state_dict()
    fed = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert set(fed) == set(central)
    differ = [k for k in central if not torch.equal(fed[k], central[k])]
    assert not differ, f"{len(differ)} of {len(central)} tensors differ, e.g. {differ[:3]}"


VECTOR_M0 = ("set='model.modalities.m0.kind=\"vector\";model.modalities.m0.network=\"mlp\";"
             "model.modalities.m0.shape=[2352]'")


@pytest.mark.slow
@pytest.mark.parametrize("bad, reason", [
    # a site fails at describe, when the server knows its node id only: the line says
    # which site it is and names the app's config, not the staged copy Flower runs
    # (every error the ServerApp reports in one line ends the run the same way: a
    # config typo, refused in-process by tests/federation/test_settings.py, and a
    # missing eval-data folder, by tests/server/test_app.py, too)
    (f"{VECTOR_M0} eval-data=''",
     r"run failed: describe: site node \d+ \(says it is site-m0\) failed: DataError: "
     r".*configs/polymnist_cpu\.toml"),
], ids=["a-site-fails-at-describe"])
def test_a_run_that_cannot_start_exits_1_with_one_reason(tmp_path, bad, reason):
    """The console shows the reason, not a traceback, and no window was trained; the
    run's status in the SuperLink says it failed (``flwr run`` itself exits 0)."""
    rc = f"{bad} n-train=100 n-test=50 {_dirs(tmp_path)}"
    code, out = _simulate(tmp_path, rc)
    assert code == 1, out[-4000:]
    assert "Traceback" not in out and "window 1/" not in out
    failed = [ln for ln in out.splitlines() if "run failed:" in ln]
    assert len(failed) == 1, out[-3000:]
    assert re.search(reason, failed[0]), failed[0]
    assert ".flwr" not in failed[0] and "[site " not in failed[0], failed[0]
    assert re.search(r"mmvm run: run \d+ finished:failed", out), out[-3000:]
    assert "Exit Code: 700" not in out  # Flower's "unhandled exception" note: mmvm said why
    assert len(out.splitlines()) < 40, out


@pytest.mark.slow
def test_sigterm_stops_the_run_as_ctrl_c_does(tmp_path):
    """``timeout``, a CI cancel or a batch scheduler sends SIGTERM: the run in the
    SuperLink is stopped, not left training after the command is gone (sent once the
    SuperLink has the run: what happens after, Ray's start and the training, would
    go on in the SuperLink all the same)."""
    rc = f"set='train.epochs=200;train.batch_size=50' n-train=300 n-test=100 {_dirs(tmp_path)}"
    with Fleet(tmp_path / "fleet") as fleet:
        fleet.write_connection("sim", fleet.start_superlink(simulation=True))
        # once the SuperLink has the run
        proc, out = _interrupted(fleet, rc, "Successfully started run", signal.SIGTERM)
        assert proc.returncode == 143, out[-3000:]  # 128 + SIGTERM, as a shell reports it
        run_id = re.search(r"mmvm run: stopped run (\d+)", out).group(1)
        text = fleet.flwr("ls", "--run-id", run_id, "--format", "json", "sim").stdout
        listed = json.loads(text[text.index("{"):])
        # ended: stopped by Flower, or its ServerApp read the request and returned
        # ("completed" in flwr's words) before training to the end: no results
        assert listed["runs"][0]["status"].startswith("finished:"), listed
        assert not (tmp_path / "runs" / f"run-{run_id}" / "results.json").exists()


@pytest.mark.slow
def test_ctrl_c_ends_the_training_after_its_window_and_leaves_it_resumable(tmp_path):
    """Ctrl-C printed "stopped run X; continue it with resume=X" while the
    simulation's ServerApp trained on to the end (Flower's stop did not reach it), so
    the resume was then refused as complete. Now the ServerApp checkpoints its
    current window and ends; the state is there to resume."""
    rc = (f"set='train.epochs=30;train.batch_size=100' exchange='step' n-train=300 "
          f"n-test=100 {_dirs(tmp_path)}")
    with Fleet(tmp_path / "fleet") as fleet:
        fleet.write_connection("sim", fleet.start_superlink(simulation=True))
        proc, out = _interrupted(fleet, rc, "window 2/", signal.SIGINT)  # once it trains
    assert proc.returncode == 130, out[-3000:]
    run_id = re.search(r"stopping run (\d+) after its current window", out).group(1)
    assert f"stopped run {run_id}; continue it with the same --run-config and " \
           f"resume='{run_id}'" in out
    assert "did not end its window" not in out
    # asked at once, and the run's own last lines streamed (flwr run was interrupted
    # first, 15 s of silence before the request was written)
    assert out.index("stopping run") < out.index("stopped on request after window")
    folder = tmp_path / "runs" / f"run-{run_id}"
    from mmvm.federation.stop_request import STOP_REQUEST

    assert (folder / "server_state.pt").is_file() and not (folder / STOP_REQUEST).exists()
    assert not (folder / "results.json").exists()  # stopped, not trained to the end


def _kill_a_site_host(fleet: Fleet) -> int:
    """SIGKILL one of this fleet's site hosts (a Ray actor process; the fleet's
    FLWR_HOME in its environment tells it from anyone else's); its pid."""
    for pid in pids_mentioning("ray::SiteHost", fleet.env["FLWR_HOME"]):
        try:
            os.kill(pid, signal.SIGKILL)
            return pid
        except OSError:
            continue
    raise AssertionError("no site host of this fleet is running")


def _cut_the_log_stream(fleet: Fleet) -> None:
    """SIGKILL the ``flwr run`` that streams this fleet's run to ``mmvm run``, as a
    dropped connection ends it; the run goes on in the SuperLink."""
    pids = pids_mentioning("flwr run ", fleet.env["FLWR_HOME"])
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)


@pytest.mark.slow
def test_a_site_host_that_is_killed_comes_back_and_the_run_completes(tmp_path):
    """A simulated site's host process killed mid-run (out of memory, say) is started
    again from the site's last checkpoint within the window: the run completes with
    the site, says which windows it trained from an older state, and shows no Ray
    traceback (it failed after max-refused windows, each line a traceback). At the
    same moment the console's log stream is cut: ``mmvm run`` follows the run again
    and shows each of its lines once (it said the run outlived flwr run, which it
    had not)."""
    # the sites' state is written after attach and the last window only: whenever the
    # host dies, its successor has lost every window since attach (a checkpoint just
    # before the kill would leave nothing lost: the test would race the saves)
    rc = (f"set='train.epochs=3;train.batch_size=100' exchange='step' n-train=300 "
          f"n-test=100 eval-data='' checkpoint-every=100 {_dirs(tmp_path)}")

    def faults(_):
        _kill_a_site_host(fleet)
        _cut_the_log_stream(fleet)

    with Fleet(tmp_path / "fleet") as fleet:
        fleet.write_connection("sim", fleet.start_superlink(simulation=True))
        proc, out = _acting(fleet, rc, "window 3/", faults)
    assert proc.returncode == 0, out[-4000:]
    # Ray says a worker died ("(raylet) ... SYSTEM_ERROR"); Flower logs no exception
    assert "Traceback" not in out and "ERROR :" not in out, out[-4000:]
    summary = json.loads(next((tmp_path / "runs").glob("run-*/results.json")).read_text())
    assert summary["missed_windows"] == {} and summary["windows"] == 9
    (site, restarts), = summary["restarted_sites"].items()
    assert restarts == [{"window": restarts[0]["window"], "after": -1}], restarts
    # the window it died in or a later one: which depends on when the console line
    # that triggers the kill is read: Flower delivers the log in batches (0.2 s
    # uploads, 0.5 s polls), windows take 0.2-0.5 s, so the line of window 5 was read
    # at window 9 here once, and on a loaded CI machine too
    assert 3 <= restarts[0]["window"] <= 9
    assert f"{site} restarted from its state after attach" in out
    run_id = re.search(r"Successfully started run (\d+)", out).group(1)
    assert f"the log stream of run {run_id} ended while the run goes on" in out, out
    windows = [ln for ln in out.splitlines() if re.search(r"\bwindow \d/9 ", ln)]
    assert [re.search(r"window (\d)/9", ln).group(1) for ln in windows] == \
        [str(k) for k in range(1, 10)], "\n".join(windows)
    assert f"mmvm run: run {run_id} finished:completed" in out


@pytest.mark.slow
def test_a_simulation_on_the_users_own_site_folders(tmp_path):
    """site-dirs: two labs' folders of `mmvm data prepare arrays` (modalities the
    embedded simulations do not know) are the simulated sites, named after their
    folders; the server evaluates the assembled model on the same folders joined by
    sample id, and results.json records them for `mmvm evaluate --run`."""
    import numpy as np

    from mmvm.cli import main
    from mmvm.data.prepare.arrays import prepare_arrays

    rng = np.random.default_rng(0)
    n, labs = 160, tmp_path / "labs"
    label = rng.integers(0, 2, n)
    (tmp_path / "ids.txt").write_text("\n".join(f"trial-{i}" for i in range(n)))
    np.save(tmp_path / "label.npy", label)
    for lab, dim in (("lab-eeg", 6), ("lab-mri", 4)):
        np.save(tmp_path / f"{lab}.npy", rng.normal(size=(n, dim)) + label[:, None])
        prepare_arrays(labs / lab, {lab.split("-")[1]: tmp_path / f"{lab}.npy"},
                       ids=tmp_path / "ids.txt", labels={"label": tmp_path / "label.npy"})
    # the config as a user makes it: drafted from the folders (mmvm data config)
    config = tmp_path / "labs.toml"
    assert main(["data", "config", str(labs / "lab-eeg"), str(labs / "lab-mri"),
                 "--out", str(config)]) == 0
    # num-sites left out: mmvm run counts the site-dirs
    rc = (f"config='{config}' site-dirs='{labs / 'lab-eeg'},{labs / 'lab-mri'}' "
          f"set='train.epochs=2;train.device=\"cpu\";eval.classifier_epochs=2' "
          f"{_dirs(tmp_path)}")
    code, out = _simulate(tmp_path, rc)
    assert code == 0, out[-4000:]
    run_dir = next((tmp_path / "runs").glob("run-*"))
    res = json.loads((run_dir / "results.json").read_text())
    assert sorted(v["site"] for v in res["sites"].values()) == ["lab-eeg", "lab-mri"]
    assert {e["site"]: e["modalities"] for e in res["evaluation"].values()} == \
        {"lab-eeg": ["eeg"], "lab-mri": ["mri"]}
    data = res["config"]["data"]
    assert data["root"] == str(labs) and data["folders"] == ["lab-eeg", "lab-mri"]
    from mmvm.data.store import read_site_meta

    ev = json.loads((run_dir / "eval.json").read_text())  # the server's, on both folders
    tested = read_site_meta(labs / "lab-eeg" / "test.parquet")["num_rows"]
    assert ev["settings"]["dataset"]["test_samples"] == tested > 0
    assert set(ev["settings"]["data"]["folders"]) == {"lab-eeg", "lab-mri"}
