"""Processes for the tests: start in a group, wait for a port or a log line, stop.

Each process runs in its own process group (``start_new_session``) with its output
in a log file; :func:`stop_process` terminates the whole group, SIGTERM then
SIGKILL, so children that outlive their leader go too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONWARNINGS": "ignore",
}


_HANDED_OUT: set[int] = set()


PORT_RANGE = "MMVM_TEST_PORTS"  # e.g. "19500-19599": the only ports tests may take


def _share(lo: int, hi: int) -> range:
    """This pytest-xdist worker's slice of ``lo..hi``: two workers scanning the same
    range would hand out one port twice before either bound it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker) if worker.isdigit() else 0
    size = (hi - lo + 1) // max(count, 1)
    if size < 1 or index >= count:
        return range(lo, hi + 1)
    start = lo + index * size
    return range(start, hi + 1 if index == count - 1 else start + size)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago and that this process has not handed out
    before (the kernel may give the same free port to two calls in a row, and Ray
    refuses two of its components on one port); still race-prone against other
    processes, fine for tests. With ``MMVM_TEST_PORTS=lo-hi`` in the environment
    only ports of that range (a shared machine, a firewall that opens a few)."""
    span = os.environ.get(PORT_RANGE)
    if span:
        try:
            lo, hi = (int(x) for x in span.split("-"))
        except ValueError:
            raise ValueError(f"{PORT_RANGE}={span!r}: expected lo-hi, e.g. 19500-19599") \
                from None
        for port in _share(lo, hi):
            if port not in _HANDED_OUT and _bindable(host, port):
                _HANDED_OUT.add(port)
                return port
        raise RuntimeError(f"{PORT_RANGE}={span}: no free port left in the range")
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float = 30.0,
                  proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections; raise on timeout/exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before port {port} opened"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{host}:{port} did not open within {timeout:.0f} s")


def wait_for_log(path: Path, needles: Sequence[str], timeout: float = 60.0,
                 proc: subprocess.Popen | None = None) -> str | None:
    """Wait until the log at ``path`` contains one of ``needles``; return it.

    Returns ``None`` if the process exits first or the time runs out.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        for needle in needles:
            if needle in text:
                return needle
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(0.25)
    return None


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc``'s whole process group: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:  # children may outlive the leader; the group id is the leader's pid
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout)


def pids_mentioning(text: str, flwr_home: str | None = None) -> list[int]:
    """PIDs of this user's processes whose command line contains ``text`` (and, given
    ``flwr_home``, whose environment has that FLWR_HOME: one fleet's, not another's)."""
    pids = []
    me = os.getpid()
    mark = f"FLWR_HOME={flwr_home}".encode() if flwr_home else None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            # zombies have an empty cmdline and are gone once reaped
            if text.encode() not in cmdline or mark is not None and \
                    mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        pids.append(int(entry.name))
    return pids


def kill_until_gone(find: Callable[[], list[int]], timeout: float) -> list[int]:
    """SIGKILL what ``find()`` lists until it lists nothing or ``timeout`` s passed;
    the survivors."""
    deadline = time.monotonic() + timeout
    while (pids := find()) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return find()


@dataclass
class Process:
    """A started process, its name and log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
