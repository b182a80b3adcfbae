"""Start a SuperLink and SuperNodes on one machine: the tests' single-host harness.

Not part of the product (operators start ``flower-superlink`` and
``flower-supernode`` themselves, see deploy/README.md). Each process runs in its own
process group with its output in ``workdir/logs/<name>.log``; :meth:`Fleet.stop` (or
leaving ``with Fleet(...)``) terminates every group it started, SIGTERM then SIGKILL.
The venv's ``bin/`` is put first on ``PATH`` because the SuperLink and SuperNodes
spawn ``flower-superexec`` from ``PATH``.

Example::

    with Fleet(workdir, bin_dir=Path(sys.executable).parent) as fleet:
        link = fleet.start_superlink(certs="keys", auth=True)
        fleet.write_connection("mmvm", link, root_certificates="keys/ca.crt")
        fleet.register("keys/sites/a/a.pub", "mmvm")
        fleet.start_supernode("a", link, auth_key="keys/sites/a/a",
                              root_certificates="keys/ca.crt",
                              node_config='site="a" data="/data/a"')
        fleet.flwr("run", ".", "mmvm", "--stream")

Ray head and worker nodes (``start_ray_head``, ``start_ray_worker``) come from
:mod:`tests.support.ray_nodes`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tests.support.processes import (
    QUIET_ENV,
    Process,
    free_port,
    stop_process,
    wait_for_port,
)
from tests.support.ray_nodes import RayNode, RayNodes


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
class Fleet(RayNodes):
    """A set of Flower (and Ray) processes sharing a work dir, ``FLWR_HOME`` and env.

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
        env: dict[str, str] | None = None,
    ) -> Process:
        """Start ``flower-supernode`` (its ClientAppIo port must differ per node);
        ``env`` adds to its environment (its SuperExec and ClientApps inherit it)."""
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
        return self.start(f"supernode-{name}", argv, env=env)

    # -- teardown ----------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this fleet started (latest first), then clean up
        what remains of its Ray nodes (see :meth:`RayNodes._stop_ray`)."""
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
