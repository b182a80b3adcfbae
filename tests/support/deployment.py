"""A secure deployment on 127.0.0.1 for tests: SuperLink + 3 SuperNodes, TLS, node auth.

Sites a, b, c hold one PolyMNIST modality each (data written here, keys by
``deploy.make_keys``); each SuperNode's node config pins its peers, keys and state
dir (the site's own policy). :meth:`Deployment.run` submits a run and waits for it;
:meth:`Deployment.submit` starts one in the background (fault tests kill and
restart SuperNodes meanwhile). ``fork=True``: each site runs its SuperNode with
``--isolation process`` and, next to it, the fork-server SuperExec
(``deploy.superexec_fork --threads 1``; deploy/README.md section 8) instead of a
``flwr-clientapp`` process per message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from deploy import make_keys
from mmvm.secure.keys import load_public_directory
from tests.support.audit_app import make_app
from tests.support.fleet import Fleet
from tests.support.processes import (
    Process,
    free_port,
    kill_until_gone,
    pids_mentioning,
    stop_process,
    wait_for_log,
)

BIN = Path(sys.executable).parent
SITES = ("a", "b", "c")
# Seconds between a SuperExec's task polls, both kinds. The guide's 0.05 s makes 20
# requests a second per site that its SuperNode serves, on cores the other pytest
# worker needs: test_deployment.py's SuperNodes used 79 s of CPU at 0.05 s, 33 s at
# 0.2 s (the fork SuperExecs 27 and 15 s). A task waits 0.075 s longer on average,
# beside the SuperNode's pulls every 3 s.
TASK_POLL = 0.2
# the ServerApp's reply polls (run config reply-poll): every poll is a SuperLink request
REPLY_POLL = 0.1
# a stock SuperNode's environment, which its SuperExec and flwr-clientapp processes
# inherit (deploy/README.md section 8): the poll above, not Flower's 1 s; one torch
# thread per site of the three on this machine's cores
STOCK_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(TASK_POLL), "OMP_NUM_THREADS": "1"}

TINY = """
[data]
root = "unused"
label = "label"
[model]
method = "mmvm"
latent_dim = 8
[model.modalities.m0]
kind = "image"
shape = [3, 28, 28]
width = 4
[model.modalities.m1]
kind = "image"
shape = [3, 28, 28]
width = 4
[model.modalities.m2]
kind = "image"
shape = [3, 28, 28]
width = 4
[train]
epochs = 2
batch_size = 32
lr = 1e-3
seed = 0
device = "cpu"
[eval]
classifier_min_image_steps = 0  # the sites' judges: 3 epochs, the plumbing not their skill
"""


def make_data(root: Path, n_train: int = 96, n_test: int = 48) -> dict[str, Path]:
    """Three sites a, b, c holding PolyMNIST modality m0, m1, m2 of the same samples."""
    from mmvm.data.polymnist import make_polymnist
    from mmvm.data.sites import SiteSpec, split_sites

    full = root / "full"
    make_polymnist(full, seed=0, n_train=n_train, n_test=n_test)
    specs = [SiteSpec(s, (f"m{i}",)) for i, s in enumerate(SITES)]
    split_sites([full / "train.parquet", full / "test.parquet"], root / "sites", specs)
    return {s: root / "sites" / s for s in SITES}


class Deployment:
    def __init__(self, root: Path, fork: bool = False, plaintext: str | None = None
                 ) -> None:
        """``plaintext``: the sites' node configs hold no keys (plaintext sites, TLS
        and node authentication all the same), and this text besides (their own
        policy keys, e.g. ``'allow-collect=false'``)."""
        self.root, self.fork, self.plaintext = root, fork, plaintext
        self.execs: dict[str, Process] = {}  # fork: each site's SuperExec
        self.allow_fab: dict[str, str] = {}  # fork: site -> the bundle hash it runs only
        self.stock: set[str] = set()  # fork: sites on Flower's stock SuperExec all the same
        self.ports: dict[str, int] = {}  # each SuperNode's Runtime API port
        self.keys = root / "keys"
        assert make_keys.main(["--out", str(self.keys), "--sites", ",".join(SITES)]) == 0
        self.data = make_data(root / "data")
        self.fleet = Fleet(root / "fleet", bin_dir=BIN)
        self.state = root / "state"
        self.out = root / "runs"
        self.app = make_app(root / "app")  # the product, with the audit ServerApp
        # a site reads only the app's own experiment configs: ship it in the FAB
        (self.app / "configs" / "tiny.toml").write_text(TINY)

    def start(self, database: bool = False) -> None:
        """SuperLink and SuperNodes; ``database``: the SuperLink keeps its state (node
        registrations, runs) in a file, so it can be killed and started again."""
        ca = self.keys / "ca.crt"
        self.db = str(self.root / "superlink.db") if database else None
        self.link = self.fleet.start_superlink(
            certs=self.keys, auth=True,
            extra_args=["--database", self.db] if self.db else ())
        self.fleet.write_connection("mmvm", self.link, root_certificates=ca)
        self.nodes: dict[str, Process] = {}
        for s in SITES:
            self.fleet.register(self.keys / "sites" / s / f"{s}.pub", "mmvm")
            self.nodes[s] = self.start_node(s)
        for proc in self.nodes.values():
            assert wait_for_log(proc.log, ["SuperNode ID:"], 90, proc.popen), \
                proc.log_text()

    def restart_superlink(self) -> None:
        """Kill the SuperLink (and the ServerApp it started) with SIGKILL and start it
        again on the same port and database; the SuperNodes reconnect on their own."""
        import os
        import signal

        os.killpg(self.link.process.popen.pid, signal.SIGKILL)
        self.link.process.popen.wait(10)
        self._kill_serverapps()  # in the SuperLink's SuperExec's process group, not its
        self.link = self.fleet.start_superlink(certs=self.keys, auth=True,
                                               port=self.link.port,
                                               extra_args=["--database", self.db])

    def _kill_serverapps(self) -> None:
        """SIGKILL this fleet's ``flwr-serverapp`` processes (its FLWR_HOME in their
        environment tells them from anyone else's): they outlived the SuperLink's
        process group by up to ~40 s (the deployment walkthrough)."""
        left = kill_until_gone(lambda: pids_mentioning(
            "flwr-serverapp", self.fleet.env["FLWR_HOME"]), 5.0)
        if left:
            raise AssertionError(f"the ServerApp processes {left} survived SIGKILL")

    def start_node(self, s: str, log_name: str | None = None,
                   superexec: bool = True) -> Process:
        """SuperNode ``s`` with its node key, keys, pinned peers and state dir (and,
        with ``fork`` and ``superexec``, the site's SuperExec next to it)."""
        site_dir = self.keys / "sites" / s
        directory = load_public_directory(self.keys / "public_keys.json")
        pins = ";".join(f"{p}={directory[p].fingerprint.replace(' ', '')}"
                        for p in SITES if p != s)  # the site's own policy
        self.ports[s] = free_port()
        policy = (f'keys="{site_dir / "site_keys.json"}" '
                  f'directory="{site_dir / "public_keys.json"}" peers="{pins}"'
                  if self.plaintext is None else self.plaintext)
        node = self.fleet.start_supernode(
            log_name or s, self.link, auth_key=site_dir / s, root_certificates=self.keys / "ca.crt",
            port=self.ports[s], extra_args=["--isolation", "process"] if self.forks(s) else (),
            node_config=f'site="{s}" data="{self.data[s]}" {policy} '
                        f'state="{self.state / s}"',
            env=None if self.forks(s) else STOCK_ENV)
        if self.forks(s) and superexec:
            self.start_superexec(s, log_name)
        return node

    def start_superexec(self, s: str, log_name: str | None = None,
                        extra: tuple[str, ...] | None = None) -> None:
        """The fork-server SuperExec of site ``s``, on its SuperNode's Runtime API;
        ``extra``: more of its arguments (``--allow-fab ...``; default: the pin of
        ``allow_fab``, if any)."""
        if extra is None:
            extra = ("--allow-fab", self.allow_fab[s]) if s in self.allow_fab else ()
        self.execs[s] = self.fleet.start(f"superexec-{log_name or s}", [
            sys.executable, "-m", "deploy.superexec_fork", "--insecure", "--threads", "1",
            "--task-poll-interval", str(TASK_POLL),
            "--runtime-api-address", f"127.0.0.1:{self.ports[s]}", *extra],
            env={"TMPDIR": str(self.fab_tmp)})

    @property
    def fab_tmp(self) -> Path:
        """The SuperExecs' temporary folder (their private bundle copies), this
        deployment's own: another test's processes leave theirs in the system's. In
        the system's temporary folder, not under pytest's: its fork server's socket
        goes there, and a Unix socket's path may not pass 107 bytes."""
        if getattr(self, "_fab_tmp", None) is None:
            self._fab_tmp = Path(tempfile.mkdtemp(prefix="mmvm-dep-"))
            weakref.finalize(self, shutil.rmtree, self._fab_tmp, True)
        return self._fab_tmp

    def restart_superexec(self, s: str, log_name: str, *extra: str) -> Process:
        """Site ``s``'s SuperExec killed (its process group, its fork server too) and
        started again with ``extra`` arguments; the SuperNode stays up. (``extra`` is
        for this start only: a later :meth:`restart_node` starts it with
        ``allow_fab``'s pin again.)"""
        old = self.execs.pop(s)
        os.killpg(old.popen.pid, signal.SIGKILL)
        old.popen.wait(10)
        self.start_superexec(s, log_name, extra)
        return self.execs[s]

    def kill_node(self, s: str) -> None:
        """SIGKILL site ``s``: its SuperNode and whatever runs its ClientApps (the
        stock SuperExec and its ``flwr-clientapp`` share the SuperNode's process
        group; the fork-server SuperExec has its own), as if its host went down.
        Each whole group, even where its leader has exited already."""
        for proc in [self.nodes[s]] + ([self.execs.pop(s)] if s in self.execs else []):
            try:
                os.killpg(proc.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group is gone
            proc.popen.wait(10)

    def restart_node(self, s: str, timeout: float = 180.0) -> Process:
        """Start site ``s`` again, as a service manager would (systemd
        ``Restart=always``): the SuperLink refuses the node key until it has marked
        the old connection offline (up to 2 heartbeats, 60 s), so retry until active.
        With ``fork``, the SuperExec (torch and all, imported at its start) follows
        once the SuperNode is in, not at every attempt."""
        deadline, attempt = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            attempt += 1
            name = f"{s}-restart{attempt}"
            proc = self.nodes[s] = self.start_node(s, name, superexec=False)
            if wait_for_log(proc.log, ["SuperNode ID:"], 20, proc.popen):
                if self.forks(s):
                    self.start_superexec(s, name)
                return proc
            self.kill_node(s)
            time.sleep(3)
        raise AssertionError(f"SuperNode {s} did not come back:\n{proc.log_text()}")

    def forks(self, s: str) -> bool:
        """Site ``s`` runs the fork-server SuperExec (else Flower's stock one)."""
        return self.fork and s not in self.stock

    def restart_nodes(self, plaintext: str | None, stock: tuple[str, ...] = ()) -> None:
        """Every site stopped as its operator would (SIGTERM: the SuperNode
        deactivates its node key at the SuperLink) and started again with node
        configs of ``plaintext`` (see ``__init__``), same keys, data and state;
        the ``stock`` sites with Flower's stock SuperExec (a ``flwr-clientapp``
        process per message), the others as before."""
        for s in SITES:
            stop_process(self.nodes[s].popen)
            if s in self.execs:
                stop_process(self.execs.pop(s).popen)
        self.plaintext, self.stock = plaintext, set(stock)
        for s in SITES:
            self.restart_node(s)

    def _run_args(self, extra: dict) -> list[str]:
        cfg = {"config": "configs/tiny.toml", "set": "", "num-sites": 3,
               "exchange": "round", "local-epochs": 1, "float16": False,
               "out-dir": str(self.out), "state-dir": str(self.state),
               "collect-model": False, "reply-timeout": 120.0, "secure": True,
               "reply-poll": REPLY_POLL, **extra}
        text = " ".join(f"{k}={json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                        for k, v in cfg.items())
        return ["run", str(self.app), "mmvm", "--stream", "--run-config", text]

    def run(self, **extra: object) -> tuple[int, str]:
        res = self.fleet.flwr(*self._run_args(extra), timeout=600, check=False)
        out = res.stdout + res.stderr
        m = re.search(r"Successfully started run (\d+)", out)
        assert m, out
        return int(m.group(1)), out

    def submit(self, log: Path, **extra: object) -> subprocess.Popen:
        """``flwr run --stream`` in the background, its output in ``log``."""
        with open(log, "wb") as fh:
            return subprocess.Popen([str(BIN / "flwr"), *self._run_args(extra)],
                                    stdout=fh, stderr=subprocess.STDOUT,
                                    env=self.fleet.env, cwd=self.fleet.workdir)

    def status(self, run_id: int) -> str:
        res = self.fleet.flwr("ls", "--run-id", str(run_id), "--format", "json")
        doc = json.loads(res.stdout)
        return doc["runs"][0]["status"]


