"""A fork-server SuperExec for a site: no interpreter start or torch import per message.

Flower 1.41 runs every ClientApp message as a fresh ``flwr-clientapp`` process
(``flwr/supercore/superexec/executor/subprocess_executor.py``): a new interpreter
that imports flwr, torch and the app, answers one message and exits (2-3 s of CPU on
a small machine). This module is ``flower-superexec`` with one difference: its
executor hands each ClientApp task to a fork server (Python's ``multiprocessing``
``forkserver``) that imported flwr and the heavy libraries once, and whose forked
child runs Flower's own ``run_clientapp`` (what ``flwr-clientapp`` runs) with the
task's token. Everything else is Flower's SuperExec, unchanged: the command line
(``flower-superexec``'s arguments, all accepted), the task loop, the SuperExec
authentication, TLS, the health server. Other task types go to Flower's
subprocess executor. Start it next to ``flower-supernode --isolation process``::

    flower-supernode --isolation process --port 9094 --superlink ... &
    python -m deploy.superexec_fork --insecure --runtime-api-address 127.0.0.1:9094

What a forked ClientApp shares, and what it does not:

* The fork server is a fresh interpreter started by this process
  (``python -c 'from multiprocessing.forkserver import main; ...'``); it never holds
  the SuperExec's connection, its authentication secret or any task token. A child
  gets its own task's token (over the fork server's Unix socket, mode 0600: not on a
  command line, where ``ps`` shows it for ``flwr-clientapp --token``) and nothing of
  other tasks.
* A child is a copy of the fork server's memory: the preloaded modules (library
  code, no data), its environment (this process's: the same ``FLWR_*`` variables a
  ``flwr-clientapp`` would inherit), its working directory and its user. Module-level
  state a library creates at import is shared copy-on-write; nothing one child
  changes reaches another child or the fork server.
* The app itself (``client.app`` and ``mmvm``, about 0.1 s once torch is loaded) is
  imported by each child from the run's installed app bundle, as ``flwr-clientapp``
  does: preload only libraries the bundle does not ship, because Flower's loader
  reuses a module already in ``sys.modules`` and a preloaded copy of the app would
  run instead of the bundle's code (:func:`check_preload` refuses the app's own
  packages).
* Children run with the fork server's OpenMP/torch state from import only (no torch
  op ever runs in the fork server, so no thread pool exists at fork time). Each
  child's torch uses one thread per core unless ``--threads N`` says otherwise: with
  several sites on one host, give each ``cores // sites`` (OpenMP threads that
  outnumber the cores spin-wait for each other: three sites with two threads each on
  two cores train ~12x slower than with one each).
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import sys
from collections.abc import Sequence

from flwr.supercore.constant import ExecutorType, TaskType
from flwr.supercore.superexec.executor import (
    ExecutionSpec,
    LaunchResult,
    SubprocessExecutor,
)

from deploy.fab_pin import allowed_hashes, pin

POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
DEFAULT_POLL = 0.05  # seconds between AcquireTask calls (Flower's default: 1.0)
# what a ClientApp process spends its start-up on, besides the app (measured: torch
# 0.9 s, flwr's runtime 0.3 s, pyarrow/sklearn/scipy the rest); torch._dynamo (with
# sympy) is what torch.optim's first optimizer imports (torch/_compile.py, ~1 s of CPU
# on an idle core, 2.8 s with three sites on two cores): once here, not per message
DEFAULT_PRELOAD = (
    "torch", "torch._dynamo", "numpy", "pyarrow", "pyarrow.parquet", "pyarrow.compute",
    "sklearn.linear_model",
    "sklearn.metrics", "cryptography.hazmat.primitives.asymmetric.x25519",
    "flwr.supernode.runtime.run_clientapp", "flwr.clientapp", "flwr.cli.install",
)
# packages the mmvm app bundle ships: never preloaded (the bundle's code must run)
APP_PACKAGES = ("client", "server", "mmvm", "wire", "deploy")


def check_preload(modules: Sequence[str], app_packages: Sequence[str] = APP_PACKAGES
                  ) -> list[str]:
    """The modules to preload; refuses the app's own packages and unknown modules."""
    out = []
    for name in modules:
        if name.split(".")[0] in app_packages:
            raise SystemExit(f"superexec_fork: --preload {name}: part of the app bundle "
                             f"({', '.join(app_packages)}); each task imports the "
                             f"bundle's own copy")
        if importlib.util.find_spec(name.split(".")[0]) is None:
            raise SystemExit(f"superexec_fork: --preload {name}: no such module")
        out.append(name)
    return out


def run_task(runtime_api_address: str, token: str, insecure: bool,
             root_certificates_path: str | None, parent_pid: int | None,
             runtime_dependency_install: bool, threads: int | None = None,
             allowed: frozenset[str] = frozenset()) -> None:
    """In the forked child: what ``flwr-clientapp --token ...`` runs
    (``flwr.supernode.cli.flwr_clientapp``), with the token handed over in memory;
    ``threads``: torch's CPU threads for this task (None: torch's default);
    ``allowed``: the app bundles' hashes this site runs (empty: any,
    :mod:`deploy.fab_pin`)."""
    from logging import INFO

    if threads:
        import torch

        torch.set_num_threads(threads)

    from flwr.supercore import log
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime import run_clientapp as runner
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    remove = pin(runner, allowed) if allowed else None
    log(INFO, "Start `flwr-clientapp` process (forked by deploy.superexec_fork)")
    try:
        run_clientapp(
            runtime_api_address=runtime_api_address,
            token=token,
            insecure=insecure,
            certificates=validate_and_resolve_root_certificates(root_certificates_path,
                                                                insecure),
            parent_pid=parent_pid,
            runtime_dependency_install=runtime_dependency_install,
        )
    finally:  # it ends with sys.exit; the child then with os._exit (no atexit)
        if remove is not None:
            remove()  # the task's private copy of the app bundle


def _ready(preload: list[str]) -> list[str]:
    """In a warm-up child: the preloaded modules the fork server failed to import
    (``multiprocessing`` ignores such failures silently)."""
    return [m for m in preload if m not in sys.modules]


class ForkExecutor:
    """Flower's executor protocol (``flwr.supercore.superexec.executor.types``):
    ClientApp tasks run in children of a warm fork server, others as Flower's
    subprocess executor runs them."""

    def __init__(self, preload: Sequence[str], threads: int | None = None,
                 allowed: frozenset[str] = frozenset()) -> None:
        self.preload = [*preload, __name__]  # this module: run_task, once
        self.threads, self.allowed = threads, allowed
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(self.preload)
        self.fallback = SubprocessExecutor()
        self.children: list = []
        self._warm_up()

    def _warm_up(self) -> None:
        """Start the fork server now (it imports the preload list once) and wait until
        it answers, so the first task does not pay for the imports."""
        with self.ctx.Pool(1) as pool:
            missing = pool.apply(_ready, (self.preload,))
        if missing:
            raise SystemExit(f"superexec_fork: the fork server could not import "
                             f"{', '.join(missing)}")

    # -- the Executor protocol -------------------------------------------------
    def get_eligible_capacity(self, supported_task_types: set[TaskType], *,
                              insecure: bool = False,
                              root_certificates_path: str | None = None
                              ) -> tuple[set[TaskType], set[str]]:
        del insecure, root_certificates_path
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: TaskType | None = None, *,
                          fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            if self.allowed:  # a process this executor cannot check the bundle of
                return LaunchResult.failed(f"--allow-fab: this site runs ClientApp "
                                           f"tasks only, not {spec.task_type}")
            return self.fallback.launch(spec)
        if self.allowed and spec.runtime_dependency_install:  # uv sync of loose ranges:
            return LaunchResult.failed("--allow-fab: runtime dependency installation "
                                       "would install packages no one pinned; leave "
                                       "it off")
        try:
            child = self.ctx.Process(
                target=run_task, daemon=True, name=f"clientapp-task-{spec.task_id}",
                args=(spec.runtime_api_address, spec.token, spec.insecure,
                      spec.root_certificates_path, spec.parent_pid,
                      spec.runtime_dependency_install, self.threads, self.allowed))
            child.start()
        except OSError as err:  # the fork server is gone or out of resources
            return LaunchResult.failed(f"fork server: {err}")
        self.children.append(child)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Release finished children (the fork server reaps them)."""
        done = [c for c in self.children if c.exitcode is not None]
        for c in done:
            c.close()
        self.children = [c for c in self.children if c not in done]

    def close(self) -> None:
        for c in self.children:
            if c.exitcode is None:
                c.terminate()  # run_clientapp's SIGTERM handler reports the task
        self.children = []


def _own_args() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deploy.superexec_fork", add_help=False,
        description="flower-superexec for a site's SuperNode (--isolation process) "
                    "that forks each ClientApp task from a warm fork server. All "
                    "flower-superexec arguments are accepted (listed below).")
    p.add_argument("--preload", action="append", default=None, metavar="MODULE",
                   help="module the fork server imports once (repeatable; default: "
                        + ", ".join(DEFAULT_PRELOAD) + "); never the app's own")
    p.add_argument("--task-poll-interval", type=float, default=None, metavar="S",
                   help=f"seconds between task polls (sets {POLL_ENV}; without this "
                        f"flag: that variable if set, else {DEFAULT_POLL}; Flower's "
                        f"default is 1.0; 0.01-60)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads per ClientApp task (default: torch's, one "
                        "per core: right for one site per host; with several sites on "
                        "one host, cores // sites, see deploy/README.md section 8)")
    p.add_argument("--allow-fab", action="append", default=[], metavar="SHA256",
                   help="run only app bundles (FABs) of this SHA-256, the reviewed "
                        "release's (python -m deploy.fab_pin APP prints it; "
                        "repeatable). Without it any bundle a run brings runs, and "
                        "with it the code that reads the node config (deploy/README.md "
                        "section 3)")
    p.add_argument("-h", "--help", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Parse this module's own flags, then run Flower's ``flower-superexec`` with the
    fork-server executor in place of the subprocess executor."""
    import flwr.supercore.superexec.run_superexec as superexec
    from flwr.supercore.cli.flower_superexec import flower_superexec

    own, rest = _own_args().parse_known_args(argv)
    if own.help:
        _own_args().print_help()
        print("\nflower-superexec arguments:\n")
        sys.argv = ["flower-superexec", "--help"]
        flower_superexec()  # prints Flower's help and exits
    if own.task_poll_interval is not None:
        os.environ[POLL_ENV] = str(own.task_poll_interval)
    else:
        os.environ.setdefault(POLL_ENV, str(DEFAULT_POLL))
    preload = check_preload(own.preload or DEFAULT_PRELOAD)
    try:
        allowed = allowed_hashes(own.allow_fab)
    except ValueError as err:
        raise SystemExit(f"superexec_fork: {err}") from None
    if own.threads is not None and own.threads < 1:
        raise SystemExit("superexec_fork: --threads must be >= 1")
    if own.threads:  # OpenMP/MKL pools of the fork server's libraries: same size
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(own.threads)

    def get_executor(executor_type: ExecutorType, **_: object) -> ForkExecutor:
        if executor_type != ExecutorType.SUBPROCESS:
            raise ValueError("deploy.superexec_fork replaces the subprocess executor "
                             f"only (got --executor {executor_type})")
        return ForkExecutor(preload, own.threads, allowed)

    # the one seam: run_superexec builds its executor with this module-level name
    superexec.get_executor = get_executor
    sys.argv = ["flower-superexec", *rest]
    flower_superexec()
