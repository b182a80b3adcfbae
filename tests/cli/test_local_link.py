"""The local SuperLink keeps the environment it was started with: a run handed to it
trained on the Ray its start had (a RAY_ADDRESS set or unset since was ignored)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mmvm.cli.local_link import check_local_superlink, local_superlinks
from mmvm.config import ConfigError
from tests.support.processes import (
    QUIET_ENV,
    free_port,
    kill_until_gone,
    pids_mentioning,
)

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def _env(home: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES", "MMVM_CACHE", "PYTHONPATH")}
    return {**env, **QUIET_ENV, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port), **extra}


def _flower_superlink(home: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """The command flwr 1.41 starts (``flwr/cli/local_superlink.py``), as it does."""
    log = home / "local-superlink" / "superlink.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation",
         "subprocess", "--control-api-address", f"127.0.0.1:{free_port()}", "--host",
         "127.0.0.1", "--port", str(port), "--log-file", str(log), "--database",
         str(home / "local-superlink" / "state.db")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"flower-superlink did not answer on {port}: {log.read_text()[-2000:]}")


def _look_alike(tmp_path: Path, home: Path, port: int, busy: bool) -> subprocess.Popen:
    """A process tree named as the local SuperLink's, with a simulation under it when
    ``busy``: a run in progress, without training one."""
    log = home / "local-superlink" / "superlink.log"
    sim = tmp_path / "flwr-simulation"
    sim.write_text("import time\ntime.sleep(120)\n")
    link = tmp_path / "flower-superlink"
    link.write_text("import subprocess, sys, time\n"
                    f"if {busy}: subprocess.Popen([sys.executable, {str(sim)!r}])\n"
                    "time.sleep(120)\n")
    return subprocess.Popen([sys.executable, str(link), "--simulation", "--port", str(port),
                             "--log-file", str(log)], env=_env(home, port),
                            start_new_session=True)


def _until(started, tries: int = 100) -> None:
    """Wait for a look-alike process to be there to be read."""
    for _ in range(tries):
        if started():
            return
        time.sleep(0.05)


def _gone(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def test_one_started_with_another_ray_address_is_restarted_and_one_that_matches_is_kept(
        tmp_path):
    home, port = tmp_path / "flwr", free_port()
    link = _flower_superlink(home, port, _env(home, port, RAY_ADDRESS="10.9.9.9:6379"))
    try:
        [found] = [s for s in local_superlinks() if s.pid == link.pid]
        assert found.home == home and found.port == str(port) and found.bin_dir == BIN
        said = check_local_superlink(_env(home, port))
        assert said and f"was pid {link.pid}" in said
        assert "it has RAY_ADDRESS=10.9.9.9:6379, this run RAY_ADDRESS unset" in said
        assert link.wait(timeout=20) is not None  # stopped, its SuperExec with it
        assert not kill_until_gone(lambda: pids_mentioning(str(home)), timeout=20)
        again = _flower_superlink(home, port, _env(home, port))
        try:
            assert check_local_superlink(_env(home, port)) is None
            assert again.poll() is None  # the same environment: it is used as it is
            said = check_local_superlink(_env(home, port), bin_dir=tmp_path)
            assert f"it runs the Flower of {BIN}, this run that of {tmp_path}" in said
        finally:
            _gone(again)
    finally:
        _gone(link)


@pytest.mark.parametrize("busy", [True, False])
def test_a_superlink_it_must_not_stop_is_named_and_left_running(tmp_path, busy):
    """One running a simulation (stopping it ends that run), or another FLWR_HOME's
    on the same port (someone else's): refused with what to do, left as it is."""
    port = free_port()
    home = tmp_path / ("flwr" if busy else "theirs")
    link = _look_alike(tmp_path, home, port, busy=busy)
    try:
        if busy:
            _until(lambda: pids_mentioning(str(tmp_path / "flwr-simulation")))  # its child
            env, says = _env(home, port, MMVM_CACHE="/elsewhere"), (
                r"it has MMVM_CACHE unset, this run MMVM_CACHE=/elsewhere.*running 1 "
                r"simulation\(s\) now")
        else:
            _until(lambda: any(s.pid == link.pid for s in local_superlinks()))
            env, says = _env(tmp_path / "mine", port), (
                rf"127.0.0.1:{port} is the local SuperLink of FLWR_HOME={home} \(pid "
                rf"{link.pid}\), not of this")
        with pytest.raises(ConfigError, match=says):
            check_local_superlink(env, bin_dir=tmp_path)
        assert link.poll() is None
    finally:
        _gone(link)


def test_a_deployments_superlink_on_the_local_port_is_refused(tmp_path):
    """Walkthrough: FLWR_LOCAL_SUPERLINK_HTTP_API_PORT was a deployment SuperLink's
    port; a plain `mmvm run` (a simulation) was handed to it, and its real SuperNodes
    aligned the run's samples. A look-alike process started without --simulation."""
    port = free_port()
    link = tmp_path / "flower-superlink"
    link.write_text("import time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(link), "--insecure",
                             "--serverappio-api-address", f"127.0.0.1:{port}"],
                            start_new_session=True)
    try:
        from mmvm.cli.local_link import deployment_on

        _until(lambda: deployment_on(str(port)) is not None)
        with pytest.raises(ConfigError, match=rf"127.0.0.1:{port}, where flwr run hands a "
                                              rf"local simulation, is served by a "
                                              rf"deployment's SuperLink \(pid {proc.pid}"):
            check_local_superlink(_env(tmp_path / "home", port))
        assert deployment_on(str(free_port())) is None
    finally:
        _gone(proc)


def test_mmvm_run_stop_superlink_stops_an_idle_one_and_leaves_a_busy_one(tmp_path):
    """``mmvm run --stop-superlink``: the background SuperLink of this FLWR_HOME goes
    (its SuperExec with it) while it runs nothing; running a simulation, it stays and
    the command says which simulation and how to end it (exit 2)."""
    home, port = tmp_path / "flwr", free_port()

    def stop(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "mmvm"), "run", "--stop-superlink"], env=env,
                              capture_output=True, text=True, timeout=120)

    link = _flower_superlink(home, port, _env(home, port))
    try:
        done = stop(_env(home, port))
        assert done.returncode == 0, done.stderr
        assert f"stopped the local SuperLink of FLWR_HOME={home} (pid {link.pid})" \
            in done.stderr
        assert link.wait(timeout=20) is not None
        assert not kill_until_gone(lambda: pids_mentioning(str(home)), timeout=20)
        again = stop(_env(home, port))
        assert again.returncode == 0 and "nothing to stop" in again.stderr, again.stderr
    finally:
        _gone(link)
    busy = _look_alike(tmp_path, home, port, busy=True)
    try:
        _until(lambda: pids_mentioning(str(tmp_path / "flwr-simulation")))
        refused = stop(_env(home, port))
        assert refused.returncode == 2, refused.stderr
        assert f"(pid {busy.pid}) is running 1 simulation(s)" in refused.stderr
        assert busy.poll() is None
    finally:
        _gone(busy)
