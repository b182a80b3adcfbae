"""Exact federated MMVM under Flower against ``mmvm train``: wall time, window by window.

``python benchmarks/federated_vs_centralized.py --flower ...`` runs this. The rows,
each ``--repeats`` times, interleaved (repeat 1 of every row, then repeat 2, ...; use
an otherwise idle machine):

    central              mmvm train: seconds per optimiser step (its metrics.csv)
    simulation           mmvm run = flwr run on Ray, sites kept in site hosts, exchange
                         'step' (exact: one window per step, the centralized result)
    simulation-no-ahead  the same with decode-ahead = false: each site runs its whole
                         step when the others' posteriors arrive (A/B of the decoder
                         half run while the server routes, mmvm/federation/lookahead.py)
    simulation, patched  the same with Flower's simulation engine woken when a
                         message is stored instead of looking every 0.1 s (until
                         8c07937: looking every 5 ms; benchmark-only patch,
                         ``deployment_overhead.PATCH``; never in the product)
    deployment           SuperLink + one SuperNode per site on 127.0.0.1 (--isolation
                         process, deploy.superexec_fork, task poll 0.05 s)
    deployment, patched  + the patch (the SuperNode's 3 s idle sleep and 0.5 s reply
                         checks, object-pull back-off)

A federated window is split with what the sites and the server report (metrics.csv):
compute (``train_s``: the slowest site's step, with the encoder pass for the next
batch's posteriors), serialization (``codec_s``: reading and writing posteriors),
disk (``disk_s``: state written at checkpoint windows), server (``server_s``:
routing, aggregation) and messaging, the rest of the wall time (Flower: dispatch,
Ray or gRPC, polls). "ahead" (``ahead_s``) is not a part of the window: it is how long
the sites' decoder half of the next step ran after their reply, overlapped with
messaging and routing (the longest site's; ``mmvm/federation/lookahead.py``).
"x central, no checkpoint writes" divides the window less its disk time: ``mmvm
train``'s per-step time leaves out its own checkpoint writes, and a 1-epoch run
checkpoints after its last window (the configs' runs: every 10 epochs, 210
hippocampus windows). "to trained" is the wall time from the command's start to the
line saying the last window finished (the final evaluation, which ``mmvm train``
does not run, is left out); for central, the whole ``mmvm train`` process.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import deployment_overhead as deploy  # noqa: E402
from window_plot import window_histogram  # noqa: E402

from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402
from tests.support.processes import QUIET_ENV, pids_mentioning  # noqa: E402

TARGETS = ("central", "simulation", "simulation-no-ahead", "simulation-patched",
           "deployment", "deployment-patched")
SPLIT = ("train_s", "codec_s", "disk_s", "server_s")  # + messaging = the rest


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="federated_vs_centralized.py --flower",
                                description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--config", default="configs/hippocampus.toml",
                   help="experiment config, relative to the app (default: %(default)s)")
    p.add_argument("--set", default="", help="';'-separated config overrides (run "
                   "config 'set')")
    p.add_argument("--epochs", type=int, default=1, help="training epochs per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per target")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS,
                   help="rows to time")
    p.add_argument("--deploy-steps", type=int, default=1,
                   help="steps per window in the deployment rows (1 = exact, as the "
                        "simulation; more: fewer windows, the same overhead per window)")
    p.add_argument("--run-config", default="",
                   help="extra run-config keys for every federated row, flwr's syntax")
    p.add_argument("--work", default="", help="work dir (default: a new temp dir)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/flower_timing"),
                   help="results folder")
    return p.parse_args(argv)


def app_config(args: argparse.Namespace) -> tuple[dict, dict[str, Path]]:
    """The run config every federated row uses (the app's defaults + these keys) and
    the simulation's site folders, site -> folder (made if missing)."""
    from mmvm.federation.settings import app_run_config, load_settings

    extra = {k: _value(v) for k, _, v in
             (t.partition("=") for t in shlex.split(args.run_config))}
    rc = app_run_config(**{"config": args.config, "exchange": "step", "float16": False,
                           "set": ";".join(x for x in (f"train.epochs={args.epochs}",
                                                       args.set) if x),
                           "eval-data": "", **extra})
    rc["data-dir"] = str(Path(rc["data-dir"]).expanduser())
    sites = site_files(load_settings({**rc, "config": str(ROOT / args.config)}))
    rc["num-sites"] = len(sites)
    return rc, sites


def _value(text: str):
    """A run-config value as flwr reads it: TOML if it parses, else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def site_files(s) -> dict[str, Path]:
    """The simulation's own site folders (made if missing), site -> folder."""
    from mmvm.data.default import ensure_default_sites

    sites, files = ensure_default_sites(s.data_dir, s.layout, s.shards, s.missing,
                                        s.n_train, s.n_test, seed=s.experiment.train.seed,
                                        modalities=tuple(s.modalities),
                                        variant=s.data_variant, hippocampus=s.hippocampus)
    return {x.name: Path(files[x.name]["train"]).parent for x in sites}


def _env(patch: Path | None, home: Path) -> dict:
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if patch:
        env["PYTHONPATH"] = f"{patch}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def stop_local_superlink(home: Path) -> None:
    """Stop the local SuperLink flwr manages under ``home`` (this benchmark's
    FLWR_HOME; its log file is there, on its command line), not anyone else's: the
    next ``flwr run`` starts one with this row's environment (the patched rows need
    the patch in the SuperLink's children)."""
    mine = str(home / "local-superlink")
    for pid in pids_mentioning(mine):
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
    for _ in range(50):
        if not pids_mentioning(mine):
            return
        time.sleep(0.1)


def timed_lines(cmd: list[str], env: dict, log: Path) -> tuple[int, dict]:
    """Run ``cmd``; the time (s from start) of each line that marks a phase."""
    marks, t0 = {}, time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            t = time.perf_counter() - t0
            fh.write(f"{t:8.2f} {line}")
            for key, pat in (("run_id", r"Successfully started run (\d+)"),
                             ("aligned", r"mmvm: aligned"),
                             ("trained", r"mmvm: trained \d+ window")):
                m = re.search(pat, line)
                if m and key not in marks:
                    marks[key] = int(m.group(1)) if key == "run_id" else t
        rc = proc.wait()
    marks["end"] = time.perf_counter() - t0
    return rc, marks


def central(args, rc: dict, sites: dict[str, Path], work: Path, rep: int) -> dict:
    full = next(iter(sites.values())).parents[1]  # <look-alike>/sites-.../<site>
    out = work / f"central-{rep}"
    sets = [f"data.root={full}", f"train.out_dir={out}", "train.device=cpu",
            *[x for x in rc["set"].split(";") if x]]
    cmd = [sys.executable, "-m", "mmvm.cli", "train", "--config", str(ROOT / args.config),
           "--fresh", "--no-progress", *[a for x in sets for a in ("--set", x)]]
    code, marks = timed_lines(cmd, _env(None, work / "flwr-home"), work / f"central-{rep}.log")
    if code:
        raise RuntimeError(f"central run failed: see {work / f'central-{rep}.log'}")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    steps = int(rows[-1]["step"])
    return {"to_trained": marks["end"], "per_step": sum(float(r["seconds"]) for r in rows)
            / steps, "steps": steps, "rec_nll": float(rows[-1]["rec_nll"])}


def simulation(args, rc: dict, work: Path, rep: int, patched: bool) -> dict:
    name = (f"simulation{'-patched' if patched else ''}"
            f"{'' if rc.get('decode-ahead', True) else '-no-ahead'}-{rep}")
    cfg = {**rc, "out-dir": str(work / "runs"), "state-dir": str(work / "state")}
    cmd = [sys.executable, "-m", "mmvm.cli", "run", "--run-config",
           deploy.run_config_text(cfg)]
    patch = deploy.write_patch(work) if patched else None
    code, marks = timed_lines(cmd, _env(patch, work / "flwr-home"), work / f"{name}.log")
    if code or "run_id" not in marks:
        raise RuntimeError(f"{name} failed: see {work / f'{name}.log'}")
    metrics = work / "runs" / f"run-{marks['run_id']}" / "metrics.csv"
    return {**_windows(metrics), "to_trained": marks["trained"],
            "set_up": marks["aligned"], "steps_per_window": 1}


def deployment(args, rc: dict, sites: dict[str, Path], work: Path, rep: int,
               patched: bool) -> dict:
    name = "patched" if patched else "fork"
    s = {"app": work / "app", "data": sites, "out": work / name / "runs"}
    if not s["app"].exists():
        deploy.copy_app(work)
        deploy.write_patch(work)
    fleet = deploy.start_fleet(work, name, s, tls=False)
    try:
        cfg = {**rc, "out-dir": str(s["out"]), "exchange": "step" if args.deploy_steps
               == 1 else "steps", "exchange-steps": args.deploy_steps}
        for k in ("data-dir", "state-dir"):
            cfg.pop(k, None)
        t0 = time.perf_counter()
        res = fleet.flwr("run", str(s["app"]), "bench", "--stream", "--run-config",
                         deploy.run_config_text(cfg),
                         timeout=3600, check=False)
        wall = time.perf_counter() - t0
        out = res.stdout + res.stderr
        (work / f"deployment-{name}-{rep}.log").write_text(out)
        m = re.search(r"Successfully started run (\d+)", out)
        if not m or not re.search(r"mmvm: trained \d+ window", out):
            raise RuntimeError(f"deployment {name} failed:\n{out[-3000:]}")
    finally:
        fleet.stop()
    return {**_windows(s["out"] / f"run-{m.group(1)}" / "metrics.csv"), "to_trained": wall,
            "steps_per_window": args.deploy_steps}


def _windows(path: Path) -> dict:
    rows = [{k: float(v) for k, v in r.items() if v not in ("", None)}
            for r in csv.DictReader(open(path))]
    mean = lambda k: sum(r.get(k, 0.0) for r in rows) / len(rows)  # noqa: E731
    split = {k: mean(k) for k in SPLIT}
    wall = mean("seconds")
    return {"windows": len(rows), "per_window": wall, **split,
            "per_window_no_ckpt": wall - split["disk_s"],
            "messaging_s": wall - sum(split.values()), "ahead_s": mean("ahead_s"),
            "rec_nll": rows[-1]["rec_nll"],
            "window_seconds": [round(r["seconds"], 4) for r in rows]}


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="mmvm-flower-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rc, sites = app_config(args)
    print(f"{args.config}: {rc['num-sites']} sites, {args.epochs} epoch(s), exact "
          f"windows; work dir {work}", flush=True)
    runs: list[dict] = []
    env = None  # the environment flwr's local SuperLink was started with
    try:
        # repeats outermost: a drift in the machine's speed (a noisy neighbour) then
        # touches every row alike, and "x central" pairs runs of the same repeat
        for rep in range(args.repeats):
            for target in args.targets:
                patched = target.endswith("patched")
                if target != "central" and env != (patched, target):
                    stop_local_superlink(work / "flwr-home")  # the next flwr run starts
                    # one with this env
                    env = (patched, target)
                if target == "central":
                    r = central(args, rc, sites, work, rep)
                elif target.startswith("simulation"):
                    ahead = {"decode-ahead": not target.endswith("no-ahead")}
                    r = simulation(args, {**rc, **ahead}, work, rep, patched)
                else:
                    r = deployment(args, rc, sites, work, rep, patched)
                runs.append({"target": target, "repeat": rep, **r})
                print(f"{target} #{rep + 1}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)),
                    flush=True)
    finally:
        stop_local_superlink(work / "flwr-home")
    write(runs, Path(args.out), args)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def summarize(runs: list[dict]) -> list[dict]:
    """Mean ± standard error over repeats, per target; "x central" is the mean of the
    per-repeat ratios to the central run of the same repeat."""
    central = {r["repeat"]: r["per_step"] for r in runs if r["target"] == "central"}
    rows = []
    for target in dict.fromkeys(r["target"] for r in runs):
        mine = [r for r in runs if r["target"] == target]
        row = {"target": target, "repeats": len(mine)}
        for k in ("per_step", "per_window", "per_window_no_ckpt", *SPLIT, "messaging_s",
                  "ahead_s", "to_trained", "set_up", "rec_nll"):
            est = estimate(r[k] for r in mine if k in r)
            if est:
                row[k], row[k + "_se"] = est.mean, est.se or 0.0
        k = mine[0].get("steps_per_window", 1)  # x central: per step of the window
        for name, key in (("x_central", "per_window"),
                          ("x_central_no_ckpt", "per_window_no_ckpt")):
            x = estimate(r.get(key, r.get("per_step")) / (k * central[r["repeat"]])
                         for r in mine if r["repeat"] in central)
            row[name], row[name + "_se"] = (x.mean, x.se or 0.0) if x else (None, None)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    def pm(r, k, d=3):
        return f"{r[k]:.{d}f} ± {r[k + '_se']:.{d}f}" if k in r else "—"

    lines = ["| row | s / step or window | x central per step | x central, no checkpoint "
             "writes | compute | serialization | disk | server | messaging | ahead "
             "(overlapped) | set-up s | to trained s | repeats |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = "per_window" if "per_window" in r else "per_step"
        x, x_no = (pm(r, k, 2) if r.get(k) else "—"
                   for k in ("x_central", "x_central_no_ckpt"))
        lines.append(
            f"| {r['target']} | {pm(r, per)} | {x} | {x_no} | {pm(r, 'train_s')} | "
            f"{pm(r, 'codec_s')} | {pm(r, 'disk_s')} | {pm(r, 'server_s')} | "
            f"{pm(r, 'messaging_s')} | {pm(r, 'ahead_s')} | {pm(r, 'set_up', 1)} | "
            f"{pm(r, 'to_trained', 1)} "
            f"| {r['repeats']} |")
    return "\n".join(lines)


def write(runs: list[dict], out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    text = table(rows)
    print(text)
    (out / "table.md").write_text(text + "\n")
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    (out / "runs.json").write_bytes(json_bytes(
        {"args": vars(args), "environment": environment(), "summary": rows,
         "runs": runs}, indent=1))
    print(f"written: {out / 'table.md'}, {out / 'summary.csv'}, {out / 'runs.json'}")
    if window_histogram(runs, out / "windows.png"):
        print(f"written: {out / 'windows.png'} (seconds per window, per row)")


if __name__ == "__main__":
    raise SystemExit(main())
