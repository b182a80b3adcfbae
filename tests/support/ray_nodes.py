"""Ray head and worker nodes on this machine, for the Ray-cluster simulation test.

A simulation on a Ray cluster (head + worker nodes from ``ray start``; here both on
this machine, each with its own raylet and a short private ``--temp-dir``)::

    with Fleet(workdir) as fleet:
        head = fleet.start_ray_head(num_cpus=0)          # schedules no actors
        fleet.start_ray_worker(head, num_cpus=2)         # actors run here
        fleet.wait_for_ray_nodes(head, 2)
        link = fleet.start_superlink(simulation=True, ray_address=head.address)
        fleet.write_connection("sim", link)
        fleet.flwr("run", ".", "sim", "--stream", "--federation-config",
                   "num-supernodes=5 client-resources-num-cpus=1")

The Ray nodes are stopped with the fleet's other processes (SIGTERM to their process
groups, then any process still naming their temp dir is killed by pid) and their temp
dirs, which hold the ``ray_current_cluster`` address file, are removed. ``ray stop`` is
never used: it stops *every* Ray process of the user on the machine, including other
people's simulations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import (
    Process,
    free_port,
    kill_until_gone,
    pids_mentioning,
    wait_for_log,
)


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


class RayNodes:
    """The Ray part of :class:`tests.support.fleet.Fleet` (which mixes it in).

    Uses the fleet's ``start``, ``_exe``, ``env`` and ``workdir``; keeps the started
    nodes in ``ray_nodes`` and their temp dirs under ``ray_root``.
    """

    ray_nodes: list[RayNode]
    ray_root: Path | None

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
        if pids := kill_until_gone(self.stray_ray_pids, 15.0):
            errors.append(f"ray processes survived: {pids}")
        # the temp dirs hold ray_current_cluster (a stale one makes later
        # `ray.init()` calls hang trying to reach a dead head), sockets, logs
        shutil.rmtree(self.ray_root, ignore_errors=True)
        return errors
