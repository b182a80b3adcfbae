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

A simulation on a Ray cluster (head + worker nodes from ``ray start``; here both
on this machine, each with its own raylet and a short private ``--temp-dir``)::

    with Fleet(workdir) as fleet:
        head = fleet.start_ray_head(num_cpus=0)          # schedules no actors
        fleet.start_ray_worker(head, num_cpus=2)         # actors run here
        fleet.wait_for_ray_nodes(head, 2)
        link = fleet.start_superlink(simulation=True, ray_address=head.address)
        fleet.write_connection("sim", link)
        fleet.flwr("run", ".", "sim", "--stream", "--federation-config",
                   "num-supernodes=5 client-resources-num-cpus=1")

The Ray nodes are stopped with the rest (SIGTERM to their process groups, then
any process still naming their temp dir is killed by pid) and their temp dirs,
which hold the ``ray_current_cluster`` address file, are removed. ``ray stop`` is
never used: it stops *every* Ray process of the user on the machine, including
other people's simulations.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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
class RayNode:
    """A Ray node started by ``ray start --block`` (head or worker).

    ``address`` is the cluster's GCS address (``host:port`` of the head), the
    value for ``RAY_ADDRESS`` and ``ray start --address``.
    """

    name: str
    address: str
    temp_dir: Path
    process: Process
    head: bool = False

    def session_logs(self) -> list[Path]:
        """This node's Ray log dirs (``<temp_dir>/session_*/logs``; the
        ``session_latest`` link is left out)."""
        return sorted(d / "logs" for d in self.temp_dir.glob("session_*")
                      if not d.is_symlink() and (d / "logs").is_dir())


def pids_mentioning(text: str) -> list[int]:
    """PIDs of this user's processes whose command line contains ``text``."""
    pids = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            # zombies have an empty cmdline and are gone once reaped
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


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
    ray_nodes: list[RayNode] = field(default_factory=list)
    ray_root: Path | None = None

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

    def start(self, name: str, argv: Sequence[str],
              env: dict[str, str] | None = None) -> Process:
        """Start ``argv`` in a new process group, output to ``logs/<name>.log``.

        ``env`` adds to (or overrides) this fleet's environment for this process.
        """
        log = self.workdir / "logs" / f"{name}.log"
        fh = open(log, "ab")
        try:
            popen = subprocess.Popen(
                list(argv), stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})}, cwd=self.workdir,
                start_new_session=True,
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
        ray_address: RayNode | str | None = None,
        env: dict[str, str] | None = None,
    ) -> SuperLinkInfo:
        """Start ``flower-superlink``: TLS from ``certs`` (ca.crt, server.pem,
        server.key) or ``--insecure``; ``auth`` enables SuperNode authentication.

        ``ray_address`` (a :class:`RayNode` or ``host:port``) puts ``RAY_ADDRESS``
        in the SuperLink's environment, so a ``simulation`` runs its ClientApp
        actors on that existing Ray cluster instead of starting a local Ray.
        """
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
        env = dict(env or {})
        if ray_address is not None:
            env["RAY_ADDRESS"] = (ray_address.address
                                  if isinstance(ray_address, RayNode) else ray_address)
        proc = self.start("superlink", argv, env=env)
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

    # -- Ray cluster -------------------------------------------------------
    def _ray_temp_dir(self, name: str) -> Path:
        # Ray's unix sockets live under <temp-dir>/session_<date>_<pid>/sockets/
        # and a socket path may not exceed ~107 bytes: keep the root short
        # (/tmp/rayXXXXXXXX) rather than under a deep pytest tmp_path.
        if self.ray_root is None:
            self.ray_root = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        path = self.ray_root / name
        path.mkdir(parents=True, exist_ok=False)
        return path

    def _ray_node_args(self, num_cpus: int | None, num_gpus: int | None,
                       resources: dict[str, float] | None,
                       object_store_memory: int) -> list[str]:
        argv = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                "--object-store-memory", str(object_store_memory),
                # every node's own ports are picked free, so nodes (and other
                # people's Ray instances on this machine) do not collide on
                # Ray's fixed defaults (52365, 8265, 10001, ...)
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--block"]
        if num_cpus is not None:
            argv += ["--num-cpus", str(num_cpus)]
        if num_gpus is not None:
            argv += ["--num-gpus", str(num_gpus)]
        if resources:
            argv += ["--resources", json.dumps(resources)]
        return argv

    def start_ray_head(
        self,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        resources: dict[str, float] | None = None,
        port: int | None = None,
        object_store_memory: int = 100 * 1024 * 1024,
        timeout: float = 90.0,
    ) -> RayNode:
        """``ray start --head --block`` on 127.0.0.1 with a private ``--temp-dir``.

        ``num_cpus=0`` makes a head that runs no actors (all go to workers).
        """
        port = port or free_port()
        temp_dir = self._ray_temp_dir("head")
        argv = [self._exe("ray"), "start", "--head", "--port", str(port),
                "--temp-dir", str(temp_dir), "--include-dashboard", "false",
                "--dashboard-port", str(free_port()),
                "--ray-client-server-port", str(free_port()),
                *self._ray_node_args(num_cpus, num_gpus, resources,
                                     object_store_memory)]
        proc = self.start("ray-head", argv)
        node = RayNode("head", f"127.0.0.1:{port}", temp_dir, proc, head=True)
        self.ray_nodes.append(node)
        if wait_for_log(proc.log, ["Ray runtime started"], timeout, proc.popen) is None:
            raise RuntimeError(f"Ray head did not start:\n{proc.log_text()[-3000:]}")
        return node

    def start_ray_worker(
        self,
        head: RayNode | str,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        resources: dict[str, float] | None = None,
        name: str | None = None,
        object_store_memory: int = 100 * 1024 * 1024,
        timeout: float = 90.0,
    ) -> RayNode:
        """``ray start --address HEAD --block``: one more node (its own raylet)."""
        address = head.address if isinstance(head, RayNode) else head
        name = name or f"worker{sum(not n.head for n in self.ray_nodes) + 1}"
        temp_dir = self._ray_temp_dir(name)
        argv = [self._exe("ray"), "start", "--address", address,
                "--temp-dir", str(temp_dir),
                *self._ray_node_args(num_cpus, num_gpus, resources,
                                     object_store_memory)]
        proc = self.start(f"ray-{name}", argv)
        node = RayNode(name, address, temp_dir, proc)
        self.ray_nodes.append(node)
        if wait_for_log(proc.log, ["Ray runtime started"], timeout, proc.popen) is None:
            raise RuntimeError(f"Ray {name} did not start:\n{proc.log_text()[-3000:]}")
        return node

    def ray_status(self, head: RayNode | str, timeout: float = 60.0) -> str:
        """``ray status --address HEAD`` (nodes and resources, from the GCS)."""
        address = head.address if isinstance(head, RayNode) else head
        res = subprocess.run([self._exe("ray"), "status", "--address", address],
                             env=self.env, cwd=self.workdir, capture_output=True,
                             text=True, timeout=timeout)
        return res.stdout + res.stderr

    def wait_for_ray_nodes(self, head: RayNode | str, count: int,
                           timeout: float = 60.0) -> str:
        """Wait until ``ray status`` lists ``count`` active nodes; return it."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.ray_status(head)
            active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if "Active:" in status and active.count("node_") >= count:
                return status
            time.sleep(1.0)
        raise TimeoutError(f"Ray cluster has not {count} nodes:\n{status}")

    def stray_ray_pids(self) -> list[int]:
        """Processes still running from this fleet's Ray nodes (by temp dir)."""
        return pids_mentioning(str(self.ray_root)) if self.ray_root else []

    def _stop_ray(self) -> list[str]:
        """Kill what is left of the Ray nodes by pid; remove their temp dirs.

        Their process groups were already SIGTERMed/SIGKILLed with the other
        processes; a Ray process that left the group is found by its command
        line, which names this fleet's private temp dir.
        """
        errors: list[str] = []
        if self.ray_root is None:
            return errors
        deadline = time.monotonic() + 15.0
        while (pids := self.stray_ray_pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        if pids := self.stray_ray_pids():
            errors.append(f"ray processes survived: {pids}")
        # the temp dirs hold ray_current_cluster (a stale one makes later
        # `ray.init()` calls hang trying to reach a dead head), sockets, logs
        shutil.rmtree(self.ray_root, ignore_errors=True)
        return errors

    # -- teardown ----------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this fleet started (latest first), then clean up
        what remains of its Ray nodes (see :meth:`_stop_ray`)."""
        errors = []
        for proc in reversed(self.processes):
            try:
                stop_process(proc.popen)
            except Exception as err:  # keep stopping the others
                errors.append(f"{proc.name}: {err}")
        try:
            errors += self._stop_ray()
        except Exception as err:
            errors.append(f"ray: {err}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
