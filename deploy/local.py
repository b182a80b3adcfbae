"""Start a SuperLink and SuperNodes on one machine (tests, demos, a single host).

Each process runs in its own process group (``start_new_session``) with its
output in a log file; :meth:`Fleet.stop` (or leaving ``with Fleet(...)``)
terminates every group it started, SIGTERM then SIGKILL. The venv's ``bin/`` is
put first on ``PATH`` because the SuperLink and SuperNodes spawn
``flower-superexec`` from ``PATH``.

Example::

    with Fleet(workdir, bin_dir=Path(sys.executable).parent) as fleet:
        link = fleet.start_superlink(certs="keys", auth=True)
        fleet.write_connection("mmvm", link, root_certificates="keys/ca.crt")
        fleet.register("keys/sites/a/a.pub", "mmvm")
        fleet.start_supernode("a", link, auth_key="keys/sites/a/a",
                              root_certificates="keys/ca.crt",
                              node_config='site="a" data="/data/a"')
        fleet.run_app(".", "mmvm")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONWARNINGS": "ignore",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (race-prone, fine for tests)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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


@dataclass
class Process:
    """A started process, its name and log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class SuperLinkInfo:
    """Where a started SuperLink listens."""

    host: str
    port: int
    process: Process

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Fleet:
    """A set of Flower processes sharing a work dir, ``FLWR_HOME`` and env.

    Parameters
    ----------
    workdir
        Logs go to ``workdir/logs``; ``FLWR_HOME`` defaults to ``workdir/flwr``.
    bin_dir
        The venv's ``bin`` with ``flower-superlink``, ``flower-supernode``, ``flwr``.
    """

    workdir: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    flwr_home: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.flwr_home = Path(self.flwr_home or self.workdir / "flwr")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)

    # -- environment -------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(QUIET_ENV)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.flwr_home)
        env.update(self.extra_env)
        return env

    def _exe(self, name: str) -> str:
        return str(self.bin_dir / name)

    def start(self, name: str, argv: Sequence[str]) -> Process:
        """Start ``argv`` in a new process group, output to ``logs/<name>.log``."""
        log = self.workdir / "logs" / f"{name}.log"
        fh = open(log, "ab")
        try:
            popen = subprocess.Popen(
                list(argv), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.workdir, start_new_session=True,
            )
        finally:
            fh.close()
        proc = Process(name, popen, log)
        self.processes.append(proc)
        return proc

    # -- SuperLink ---------------------------------------------------------
    def start_superlink(
        self,
        *,
        certs: str | Path | None = None,
        auth: bool = False,
        host: str = "127.0.0.1",
        port: int | None = None,
        simulation: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> SuperLinkInfo:
        """Start ``flower-superlink``: TLS from ``certs`` (ca.crt, server.pem,
        server.key) or ``--insecure``; ``auth`` enables SuperNode authentication."""
        port = port or free_port(host)
        argv = [self._exe("flower-superlink"), "--host", host, "--port", str(port),
                "--disable-runtime-dependency-installation"]
        if certs is None:
            argv.append("--insecure")
        else:
            certs = Path(certs).resolve()
            argv += ["--ssl-ca-certfile", str(certs / "ca.crt"),
                     "--ssl-certfile", str(certs / "server.pem"),
                     "--ssl-keyfile", str(certs / "server.key")]
        if auth:
            argv.append("--enable-supernode-auth")
        if simulation:
            argv.append("--simulation")
        argv += list(extra_args)
        proc = self.start("superlink", argv)
        wait_for_port(host, port, timeout, proc.popen)
        return SuperLinkInfo(host, port, proc)

    def write_connection(
        self,
        name: str,
        link: SuperLinkInfo | str,
        *,
        root_certificates: str | Path | None = None,
        default: bool = True,
    ) -> Path:
        """Write ``$FLWR_HOME/config.toml`` with one connection ``name``."""
        address = link.address if isinstance(link, SuperLinkInfo) else link
        lines = ["[superlink]"]
        if default:
            lines.append(f'default = "{name}"')
        lines += ["", f"[superlink.{name}]", f'address = "{address}"']
        if root_certificates is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{Path(root_certificates).resolve()}"')
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def flwr(self, *args: str, timeout: float = 120.0,
             check: bool = True) -> subprocess.CompletedProcess:
        """Run the ``flwr`` CLI with this fleet's env; output captured."""
        res = subprocess.run(
            [self._exe("flwr"), *args], env=self.env, cwd=self.workdir,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"flwr {' '.join(args)} failed ({res.returncode}):\n"
                f"{res.stdout}\n{res.stderr}"
            )
        return res

    def register(self, public_key: str | Path, connection: str) -> str:
        """``flwr supernode register PUB CONNECTION``; returns its output."""
        res = self.flwr("supernode", "register", str(Path(public_key).resolve()),
                        connection)
        return res.stdout + res.stderr

    # -- SuperNodes --------------------------------------------------------
    def start_supernode(
        self,
        name: str,
        link: SuperLinkInfo | str,
        *,
        auth_key: str | Path | None = None,
        root_certificates: str | Path | None = None,
        node_config: str | None = None,
        port: int | None = None,
        max_retries: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> Process:
        """Start ``flower-supernode`` (its ClientAppIo port must differ per node)."""
        address = link.address if isinstance(link, SuperLinkInfo) else link
        argv = [self._exe("flower-supernode"), "--superlink", address,
                "--port", str(port or free_port())]
        if root_certificates is None:
            argv.append("--insecure")
        else:
            argv += ["--root-certificates", str(Path(root_certificates).resolve())]
        if auth_key is not None:
            argv += ["--auth-supernode-private-key", str(Path(auth_key).resolve())]
        if node_config:
            argv += ["--node-config", node_config]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        argv += list(extra_args)
        return self.start(f"supernode-{name}", argv)

    # -- teardown ----------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this fleet started (latest first)."""
        errors = []
        for proc in reversed(self.processes):
            try:
                stop_process(proc.popen)
            except Exception as err:  # keep stopping the others
                errors.append(f"{proc.name}: {err}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
