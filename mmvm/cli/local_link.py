"""The local SuperLink ``flwr run`` starts for a simulation, and what it keeps.

Flower starts it once, detached, and every later local ``flwr run`` hands its run to
it. It keeps the environment it was started with, and every run's ServerApp and
sites inherit that environment: a ``RAY_ADDRESS`` set since (a run meant for a
cluster) is ignored and the run trains on this machine's Ray; one unset since keeps
sending runs to a cluster; another virtualenv's ``mmvm run`` trains with the first
one's packages. ``flwr run`` says nothing of it. :func:`check_local_superlink`
finds the SuperLink this run would be handed to and, where what the run needs
differs from what it kept, stops it while it runs nothing (``flwr run`` then starts
a fresh one) and refuses while it does (a run submitted a moment before, not yet
started, is not seen: it ends with that SuperLink).

Linux only (``/proc``); elsewhere nothing is checked.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mmvm.config import ConfigError

# what a run's ServerApp and sites read from their environment
KEPT = ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES", "MMVM_CACHE", "PYTHONPATH")
PROC = Path("/proc")


@dataclass(frozen=True)
class LocalSuperLink:
    pid: int
    home: Path | None  # its FLWR_HOME (from its --log-file)
    port: str | None
    bin_dir: Path  # where its flower-superlink (and the tools it starts) live
    env: dict[str, str] | None  # None: not ours to read


def _cmdline(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace") \
            .split("\0")[:-1]
    except OSError:
        return []


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0"))
    return {k: v for k, _, v in pairs if k}


def local_superlinks() -> list[LocalSuperLink]:
    """Every local simulation SuperLink flwr started on this machine (any user's)."""
    found = []
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        script = next((a for a in args[:2] if Path(a).name == "flower-superlink"), None)
        log = _flag(args, "--log-file")
        if not script or "--simulation" not in args or not log or \
                Path(log).parent.name != "local-superlink":
            continue
        found.append(LocalSuperLink(int(entry.name), Path(log).parent.parent,
                                    _flag(args, "--port"), Path(script).parent,
                                    _environ(int(entry.name))))
    return found


def deployment_on(port: str) -> int | None:
    """The pid of a SuperLink started without ``--simulation`` (a deployment's) that
    serves ``port`` (its ``--port``, or an address ``...:port``), or None: flwr run
    hands a local simulation to whatever answers there, and that one's SuperNodes
    would answer it (a walkthrough's FLWR_LOCAL_SUPERLINK_HTTP_API_PORT was its
    deployment's port: its real sites aligned the run's samples)."""
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        if not any(Path(a).name == "flower-superlink" for a in args[:2]) \
                or "--simulation" in args:
            continue
        if _flag(args, "--port") == port or any(a.endswith(f":{port}") for a in args):
            return int(entry.name)
    return None


def differences(link: LocalSuperLink, env: dict[str, str], bin_dir: Path) -> list[str]:
    """What this run needs that ``link`` was not started with, one phrase each."""
    said = []
    if os.path.realpath(link.bin_dir) != os.path.realpath(bin_dir):
        said.append(f"it runs the Flower of {link.bin_dir}, this run that of {bin_dir}")
    for key in KEPT:
        theirs, ours = (link.env or {}).get(key), env.get(key)
        if theirs != ours:
            said.append(f"it has {_shown(key, theirs)}, this run {_shown(key, ours)}")
    return said


def _shown(key: str, value: str | None) -> str:
    return f"{key} unset" if value is None else f"{key}={value}"


def running_simulations(pid: int) -> list[int]:
    """Simulation processes (``flwr-simulation``: one per run in progress) started
    under ``pid``."""
    parents: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out = []
    for child in parents:
        up, seen = parents.get(child), 0
        while up not in (None, 0, 1) and up != pid and seen < 64:
            up, seen = parents.get(up), seen + 1
        if up == pid and any(Path(a).name == "flwr-simulation" for a in _cmdline(child)[:2]):
            out.append(child)
    return sorted(out)


def _home_and_port(env: dict[str, str]) -> tuple[Path, str]:
    """The FLWR_HOME and port of the local SuperLink ``flwr run`` hands a simulation
    to, under ``env``."""
    from flwr.cli.constant import LOCAL_SUPERLINK_HTTP_API_PORT

    home = Path(env.get("FLWR_HOME") or Path.home() / ".flwr")
    return home, env.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT",
                         LOCAL_SUPERLINK_HTTP_API_PORT)


def check_local_superlink(env: dict[str, str], bin_dir: Path | None = None,
                          wait: float = 15.0) -> str | None:
    """Make sure the local SuperLink ``flwr run`` would hand this run to (the one
    on ``127.0.0.1:$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``) runs it as ``env`` and
    ``bin_dir`` (default: where the run's PATH finds ``flower-superlink``, as flwr
    run starts it) ask. Returns a line saying what was
    done (it was stopped, for ``flwr run`` to start a fresh one), or None; raises
    ConfigError where it must not be stopped."""
    if not PROC.is_dir():
        return None
    home, port = _home_and_port(env)
    # the flower-superlink flwr run would start: the first on the run's PATH
    found = shutil.which("flower-superlink", path=env.get("PATH"))
    bin_dir = bin_dir or (Path(found).parent if found else Path(sys.executable).parent)
    if (pid := deployment_on(port)) is not None:
        raise ConfigError(
            f"127.0.0.1:{port}, where flwr run hands a local simulation, is served by a "
            f"deployment's SuperLink (pid {pid}, started without --simulation): its "
            f"SuperNodes would answer this run. Give this FLWR_HOME other ports "
            f"(FLWR_LOCAL_SUPERLINK_HTTP_API_PORT and FLWR_LOCAL_CONTROL_API_PORT), or "
            f"run on that deployment with --connection")
    for link in (s for s in local_superlinks() if s.port == port):
        if link.home is None or os.path.realpath(link.home) != os.path.realpath(home):
            raise ConfigError(
                f"127.0.0.1:{port} is the local SuperLink of FLWR_HOME={link.home} (pid "
                f"{link.pid}), not of this FLWR_HOME={home}: flwr run would hand it this "
                f"run, to train with that SuperLink's environment. Give this FLWR_HOME "
                f"its own ports (FLWR_LOCAL_SUPERLINK_HTTP_API_PORT and "
                f"FLWR_LOCAL_CONTROL_API_PORT), or use that FLWR_HOME")
        if link.env is None:  # gone since the scan, or not this user's: not ours
            continue
        said = differences(link, env, bin_dir)
        if not said:
            continue
        busy = running_simulations(link.pid)
        if busy:
            raise ConfigError(
                f"the local SuperLink (pid {link.pid}) keeps the environment it was "
                f"started with, and every run it is handed trains in it: "
                f"{'; '.join(said)}. It is running {len(busy)} simulation(s) now "
                f"(pids {', '.join(map(str, busy))}): start this run when they end "
                f"(mmvm run then restarts it), or stop it (kill {link.pid}) to end them")
        _stop(link.pid, wait)
        return (f"mmvm run: restarted the local SuperLink (was pid {link.pid}): "
                f"{'; '.join(said)}")
    return None


def stop_local_superlink(env: dict[str, str], wait: float = 15.0) -> str:
    """Stop the local SuperLink of ``env``'s FLWR_HOME and port (the one ``flwr run``
    keeps for the next simulation), while it runs no simulation; returns what was
    done. Refused (ConfigError) while it runs one, naming them: stopping it ends them."""
    if not PROC.is_dir():
        raise ConfigError("this system has no /proc, where mmvm finds the local "
                          "SuperLink: stop the flower-superlink process started with "
                          "--simulation yourself")
    home, port = _home_and_port(env)
    mine = [s for s in local_superlinks() if s.port == port and s.home is not None
            and os.path.realpath(s.home) == os.path.realpath(home)]
    if not mine:
        return (f"mmvm run: no local SuperLink of FLWR_HOME={home} runs on "
                f"127.0.0.1:{port}: nothing to stop")
    for link in mine:
        busy = running_simulations(link.pid)
        if busy:
            raise ConfigError(
                f"the local SuperLink of FLWR_HOME={home} (pid {link.pid}) is running "
                f"{len(busy)} simulation(s) (pids {', '.join(map(str, busy))}): stop "
                f"them first (Ctrl-C in their mmvm run, or flwr stop), or kill "
                f"{link.pid} to end them with it")
    for link in mine:
        _stop(link.pid, wait)
    return (f"mmvm run: stopped the local SuperLink of FLWR_HOME={home} (pid "
            f"{', '.join(str(s.pid) for s in mine)}); the next simulation starts a "
            f"fresh one")


def _stop(pid: int, wait: float) -> None:
    """SIGTERM (its SuperExec follows its parent), SIGKILL if it outlives ``wait``."""
    for sig, limit in ((signal.SIGTERM, wait), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not (PROC / str(pid)).exists() or _zombie(pid):
                return
            time.sleep(0.1)
    raise ConfigError(f"the local SuperLink (pid {pid}) did not stop; stop it and start "
                      f"this run again")


def _zombie(pid: int) -> bool:
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
