"""What Flower adds to each exchange window in a deployment (SuperLink + 3 SuperNodes).

Three sites (one PolyMNIST modality each, a few dozen samples, a tiny network: the
sites' compute is a small part of a window) on 127.0.0.1, exchange once per epoch,
in four configurations that add one change each:

    stock     flower-supernode (subprocess isolation): a fresh flwr-clientapp process
              per message (interpreter + torch + app import), SuperExec polls every 1 s
    poll      + FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.05 in the SuperNodes' environment
    fork      + --isolation process and deploy.superexec_fork next to each SuperNode
              (flwr and torch imported once; each task forked, Flower's run_clientapp)
    patched   + a patched copy of Flower's waits, in this benchmark's processes only
              (a sitecustomize.py on their PYTHONPATH): the SuperLink holds a
              SuperNode's empty PullMessages until a message is stored (up to 1 s)
              instead of the SuperNode sleeping 3 s, the SuperNode holds SuperExec's
              empty AcquireTask until a task is created, 0.5 s reply checks -> 0.02 s,
              object-pull retries 1 s (doubling to 10 s) -> 0.02 s (to 0.1 s), no FAB
              unzip per task once installed (and the simulation engine's dispatch
              woken when a message is stored instead of looking every 0.1 s). What
              Flower itself would have to change; never in the product.

Every site's ClientApps get cores // sites torch threads (OMP_NUM_THREADS, or
deploy.superexec_fork --threads): the sites share this host's cores.

Per window: wall time at the server (``seconds`` of metrics.csv) and the overhead =
wall - site compute, where site compute is the slowest site's own seconds in that
window (``site_s``, reported by the sites) or, for an app whose window replies carry
no timing, the per-window seconds of the same run in one process (no Flower).
Each configuration runs ``--repeats`` times on a fresh set of processes; the table
gives mean ± standard error over repeats of each run's mean over its windows.

    python benchmarks/deployment_overhead.py              # 4 configs x 3 runs; ~15 min
                                                          # on 2 idle cores (estimate)
    python benchmarks/deployment_overhead.py --quick      # 1 repeat, 2 windows
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402
from tests.support.deployment import SITES, TINY, make_data  # noqa: E402
from tests.support.fleet import Fleet  # noqa: E402
from tests.support.processes import free_port, wait_for_log  # noqa: E402

CONFIGS = ("stock", "poll", "fork", "patched")
POLL = "0.05"
# benchmark-only: Flower 1.41's fixed waits, shortened in the processes that import
# this file (PYTHONPATH); the constants stay in Flower's source
PATCH = '''"""Benchmark-only patch of Flower 1.41's waits (benchmarks/ only)."""
import hashlib, importlib.abc, importlib.machinery, sys, threading, time as _time

# SuperNode: sleep after an empty pull (the pull itself is held at the SuperLink, HOLD)
# and between checks for the ClientApp's reply; object pulls: first retry and cap;
# the simulation engine's longest wait for a stored message (it is woken by the
# store); how long an empty pull / task poll is held
IDLE, REPLY, BACKOFF, BACKOFF_CAP, DISPATCH, HOLD = 0.01, 0.02, 0.02, 0.1, 0.1, 1.0
_ready = threading.Condition()  # notified when a message or a task is stored
_count = [0]


class _Time:  # start_client_internal's `time`: sleep(3) and sleep(0.5) shortened
    def __getattr__(self, name):
        return getattr(_time, name)

    @staticmethod
    def sleep(s):
        _time.sleep(IDLE if s == 3 else REPLY if s == 0.5 else s)


def _dispatch(state, queue, nodes_mapping, f_stop):
    # the simulation engine's vce_api.add_messages_to_queue, woken when a message is
    # stored (_notifying) instead of looking every 0.1 s (a message waited for the next
    # look before a ClientApp ran it); DISPATCH s at most between looks, as a fallback
    while not f_stop.is_set():
        with _ready:
            seen = _count[0]
        found = False
        for node_id in nodes_mapping.keys():
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
                found = True
        if not found:  # a node with more messages is looked at again at once
            with _ready:
                _ready.wait_for(lambda: _count[0] != seen, timeout=DISPATCH)


def _notifying(method):
    # LinkState.store_message_ins, CoreState.create_task: wake the held polls (_held)
    def stored(self, *args, **kwargs):
        out = method(self, *args, **kwargs)
        with _ready:
            _count[0] += 1
            _ready.notify_all()
        return out
    return stored


def _held(handler, found):
    # a poll answered when there is something, or after HOLD s: the SuperLink's Fleet
    # PullMessages (instead of a SuperNode polling every 3 s, or every IDLE s at ~15% of
    # a core per SuperNode and as much again in the SuperLink) and the SuperNode's
    # AcquireTask (instead of a SuperExec polling every 0.05-1 s)
    def held(*args, **kwargs):
        end = _time.monotonic() + HOLD
        while True:
            with _ready:
                seen = _count[0]
            res = handler(*args, **kwargs)
            left = end - _time.monotonic()
            if found(res) or left <= 0:
                return res
            with _ready:
                _ready.wait_for(lambda: _count[0] != seen, timeout=left)
    return held


def _install_once(install_from_fab):
    # run_clientapp: every task unzips and hash-checks the whole FAB before finding it
    # installed; skip that when the FAB's folder is there already
    def install(fab_file, install_dir=None, skip_prompt=False):
        from flwr.supercore.utils import get_flwr_home
        if isinstance(fab_file, bytes):
            short = hashlib.sha256(fab_file).hexdigest()[:8]
            apps = (install_dir or get_flwr_home()) / "apps"
            found = sorted(apps.glob(f"*.{short}")) if apps.is_dir() else []
            if found and skip_prompt:
                return found[0]
        return install_from_fab(fab_file, install_dir, skip_prompt)
    return install


def _patch(name, module):
    if name == "flwr.supernode.start_client_internal":
        module.time = _Time()
    elif name.endswith("vce_api"):
        module.add_messages_to_queue = _dispatch
    elif name.endswith("fleet_handlers"):
        module.pull_messages = _held(module.pull_messages,
                                     lambda res: len(res.messages_list))
    elif name.endswith("runtime.runtime_handlers"):
        module.acquire_task = _held(module.acquire_task, lambda res: res.HasField("task"))
    elif name.endswith(("linkstate", "corestate")):
        for cls in vars(module).values():
            for method in ("store_message_ins", "create_task"):
                if isinstance(cls, type) and method in vars(cls):
                    setattr(cls, method, _notifying(vars(cls)[method]))
    elif name.endswith("run_clientapp"):
        module.install_from_fab = _install_once(module.install_from_fab)
    else:  # object pulls: retry after BACKOFF s (doubling up to BACKOFF_CAP), not 1 s
        for fn in (module.pull_objects, module.pull_and_inflate_object_from_tree):
            fn.__kwdefaults__["initial_backoff"] = BACKOFF
            fn.__kwdefaults__["backoff_cap"] = BACKOFF_CAP


class _Finder(importlib.abc.MetaPathFinder):
    names = ("flwr.supernode.start_client_internal",
             "flwr.supercore.inflatable.inflatable_utils",
             "flwr.server.superlink.fleet.vce.vce_api",
             "flwr.superlink.servicer.fleet.fleet_handlers",
             "flwr.server.superlink.linkstate.in_memory_linkstate",
             "flwr.server.superlink.linkstate.sql_linkstate",
             "flwr.supercore.servicer.runtime.runtime_handlers",
             "flwr.supercore.corestate.in_memory_corestate",
             "flwr.supercore.corestate.sql_corestate",
             "flwr.supernode.runtime.run_clientapp")

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(name, module)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
'''


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS,
                   help="SuperExec setups to time (see the table above)")
    p.add_argument("--repeats", type=int, default=3, help="runs per config")
    p.add_argument("--windows", type=int, default=3, help="windows (= epochs) per run")
    p.add_argument("--n-train", type=int, default=64, help="samples per site")
    p.add_argument("--tls", action="store_true", help="TLS + SuperNode authentication")
    p.add_argument("--out", default=None,
                   help="results folder (default: benchmarks/results/deployment_overhead; with --quick, deployment_overhead-quick)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    p.add_argument("--debug-logs", action="store_true",
                   help="FLWR_LOG_LEVEL=DEBUG in every process (timestamped logs)")
    p.add_argument("--quick", action="store_true", help="1 repeat, 2 windows")
    args = p.parse_args(argv)
    quick = "-quick" * args.quick  # a smoke run leaves the published results alone
    args.out = args.out or str(ROOT / "benchmarks/results" / f"deployment_overhead{quick}")
    return args


def make_workdir(work: Path, n_train: int, windows: int) -> dict:
    """Site data, the experiment config and a snapshot of the app (what flwr run ships):
    the deployment tests' three tiny PolyMNIST sites (tests/support/deployment.py)."""
    data = make_data(work / "data", n_train=n_train, n_test=32)
    (work / "tiny.toml").write_text(TINY)
    write_patch(work)
    return {"app": copy_app(work), "config": work / "tiny.toml", "data": data,
            "windows": windows}


def copy_app(work: Path) -> Path:
    """A snapshot of the app (what ``flwr run`` ships) at ``work/app``."""
    app = work / "app"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("mmvm", "server", "client", "wire", "configs"):
        shutil.copytree(ROOT / d, app / d, ignore=skip)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, app / f)
    return app


def write_patch(work: Path) -> Path:
    """``work/patch/sitecustomize.py``: put the folder on PYTHONPATH to apply PATCH."""
    (work / "patch").mkdir(exist_ok=True)
    (work / "patch" / "sitecustomize.py").write_text(PATCH)
    return work / "patch"


def run_config(s: dict) -> dict:
    return {"config": str(s["config"]), "num-sites": len(SITES), "exchange": "round",
            "set": f"train.epochs={s['windows']}", "local-epochs": 1, "eval-data": "",
            "collect-model": False,
            "out-dir": str(s["out"]), "reply-timeout": 300.0}


def start_fleet(work: Path, name: str, s: dict, tls: bool, debug: bool = False
                ) -> Fleet:
    """SuperLink and one SuperNode per site (plus its fork server) for ``name``."""
    extra = {"PYTHONPATH": str(work / "patch")} if name == "patched" else {}
    if debug:
        extra["FLWR_LOG_LEVEL"] = "DEBUG"
    fleet = Fleet(work / name, extra_env=extra)
    # torch threads per site: the sites share this host's cores (OpenMP threads that
    # outnumber the cores spin-wait: ~12x slower steps with 3 sites x 2 threads on 2)
    threads = str(site_threads(len(s["data"])))
    keys = None
    if tls:
        from deploy import make_keys

        keys = work / name / "keys"
        make_keys.main(["--out", str(keys), "--sites", ",".join(s["data"])])
    link = fleet.start_superlink(certs=keys, auth=tls)
    fleet.write_connection("bench", link,
                           root_certificates=keys / "ca.crt" if keys else None)
    for site in s["data"]:
        port = free_port()
        args, env = [], {"OMP_NUM_THREADS": threads}  # inherited by its flwr-clientapps
        if name == "poll":
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = POLL
        if name in ("fork", "patched"):
            args = ["--isolation", "process"]
        if tls:
            fleet.register(keys / "sites" / site / f"{site}.pub", "bench")
        node_config = (f'site="{site}" data="{s["data"][site]}" '
                       f'state="{work / name / "state" / site}"')
        fleet.extra_env = {**extra, **env}  # this SuperNode's environment
        node = fleet.start_supernode(
            site, link, node_config=node_config, port=port, extra_args=args,
            auth_key=keys / "sites" / site / site if tls else None,
            root_certificates=keys / "ca.crt" if tls else None)
        fleet.extra_env = extra
        if name in ("fork", "patched"):
            fleet.start(f"superexec-{site}", [
                sys.executable, "-m", "deploy.superexec_fork", "--insecure",
                "--runtime-api-address", f"127.0.0.1:{port}",
                "--task-poll-interval", POLL, "--threads", threads])
        assert wait_for_log(node.log, ["SuperNode ID:"], 90, node.popen), node.log_text()
    return fleet


def site_threads(sites: int) -> int:
    """Torch CPU threads per site when ``sites`` sites share this host's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, sites))


def run_config_text(cfg: dict) -> str:
    """``cfg`` as ``flwr run --run-config`` takes it (TOML values)."""
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else json.dumps(v)}"
                    for k, v in cfg.items())


def flwr_run(fleet: Fleet, s: dict) -> tuple[int, Path]:
    cfg = run_config_text(run_config(s))
    res = fleet.flwr("run", str(s["app"]), "bench", "--stream", "--run-config", cfg,
                     timeout=900, check=False)
    out = res.stdout + res.stderr
    m = re.search(r"Successfully started run (\d+)", out)
    assert m, out
    run_id = int(m.group(1))
    status = json.loads(fleet.flwr("ls", "--run-id", str(run_id), "--format", "json")
                        .stdout)["runs"][0]["status"]
    assert status == "finished:completed", f"run {run_id}: {status}\n{out[-3000:]}"
    return run_id, Path(s["out"]) / f"run-{run_id}" / "metrics.csv"


def read_windows(path: Path) -> list[dict]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)]


def in_process_seconds(s: dict, windows: int) -> float:
    """Mean per-window seconds of the same federation in one process (no Flower)."""
    import tomllib

    from mmvm.federation.local import run_local
    from mmvm.federation.settings import load_settings

    defaults = tomllib.loads((s["app"] / "pyproject.toml").read_text())
    settings = load_settings({**defaults["tool"]["flwr"]["app"]["config"],
                              **run_config(s)})
    files = {site: (str(d / "train.parquet"), str(d / "test.parquet"))
             for site, d in s["data"].items()}
    result, _ = run_local(settings, files)
    return sum(r["seconds"] for r in result.history) / max(1, len(result.history))


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the fleet on kill
    if args.quick:
        args.repeats, args.windows = 1, 2
    work = Path(tempfile.mkdtemp(prefix="mmvm-deploy-bench-"))
    s = make_workdir(work, args.n_train, args.windows)
    local = None  # in-process per-window seconds, if the replies carry no timing
    runs: list[dict] = []
    try:
        for name in args.configs:
            t0 = time.perf_counter()
            fleet = start_fleet(work, name, s, args.tls, args.debug_logs)
            try:
                for rep in range(args.repeats):
                    s["out"] = work / name / "runs"
                    run_id, metrics = flwr_run(fleet, s)
                    rows = read_windows(metrics)
                    if not all("site_s" in r for r in rows) and local is None:
                        local = in_process_seconds(s, args.windows)
                    compute = [r.get("site_s", local) for r in rows]
                    wall = [r["seconds"] for r in rows]
                    runs.append({"config": name, "repeat": rep, "run_id": run_id,
                                 "windows": len(rows), "window_s": wall,
                                 "compute_s": compute,
                                 "compute_from": "site_s" if "site_s" in rows[0]
                                 else "in-process"})
                    write_tables(runs, Path(args.out), args, quiet=True)  # so far
                    print(f"{name} #{rep + 1}: {sum(wall) / len(wall):.2f} s/window "
                          f"({len(wall)} windows, compute {sum(compute) / len(wall):.3f} "
                          f"s/window)", flush=True)
            finally:
                fleet.stop()
            print(f"{name}: {time.perf_counter() - t0:.0f} s in all", flush=True)
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if runs:
        write_tables(runs, Path(args.out), args)
    return 0


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for name in CONFIGS:
        mine = [r for r in runs if r["config"] == name]
        if not mine:
            continue
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        wall = estimate(mean(r["window_s"]) for r in mine)
        over = estimate(mean([w - c for w, c in zip(r["window_s"], r["compute_s"],
                                                    strict=True)]) for r in mine)
        show = lambda e: f"{e.mean:.2f}" + (f" ± {e.se:.2f}" if e.se else "")  # noqa: E731
        rows.append({"config": name, "window_s": show(wall), "overhead_s": show(over),
                     "overhead_mean": over.mean, "compute_s": round(
                         mean([mean(r["compute_s"]) for r in mine]), 3),
                     "windows": sum(r["windows"] for r in mine), "repeats": len(mine)})
    return rows


def write_tables(runs: list[dict], out: Path, args: argparse.Namespace,
                 quiet: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    lines = ["| config | s/window | overhead s/window (wall − site compute) | site compute "
             "s/window | windows (repeats) |", "|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['window_s']} | {r['overhead_s']} | {r['compute_s']} "
              f"| {r['windows']} ({r['repeats']}) |" for r in rows]
    table = "\n".join(lines)
    if not quiet:
        print(table)
    (out / "table.md").write_text(table + "\n")
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "runs.json").write_bytes(json_bytes(
        {"args": vars(args), "environment": environment(), "summary": rows,
         "runs": runs}, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
