"""CPU seconds per kind of process on this machine over an interval, from ``/proc``.

Start it next to a run to see where a set-up or a window's CPU goes, e.g. the first
50 s of an exact simulation::

    python benchmarks/federated_vs_centralized.py --flower --repeats 1 \
        --targets simulation --out /tmp/sim &
    python benchmarks/process_cpu.py --seconds 50 --out /tmp/setup_cpu.json

Processes are grouped by what they run: a Ray worker by its title (``ray::SiteHost``,
``ray::ClientAppActor``), any other by its program (``flwr``, ``flower-superlink``,
``raylet``). CPU is a process's own user + system time (not its reaped children's:
they were counted while they ran); a process that starts during the interval counts
from its start, and one that ends loses its last half second. Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from mmvm.help_format import DefaultsHelp
from mmvm.jsonfile import json_bytes
from mmvm.provenance import environment

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
INTERPRETERS = ("python", "python3", "-u", "-m")


def snapshot() -> dict[str, tuple[float, str]]:
    """pid -> (CPU seconds so far, command line) of every readable process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone, or not ours to read
        out[pid] = (sum(int(x) for x in fields[11:13]) / TICK, cmd.strip())
    return out


def group(cmd: str) -> str:
    """What a process runs: a Ray worker's title without ids, else its program."""
    words = cmd.split()
    if not words:
        return "(kernel)"
    if words[0].startswith("ray::"):
        return re.sub(r"mmvm-site-[\d-]+:", "", words[0])  # one row for all site hosts
    for word in words:
        name = os.path.basename(word)
        if name not in INTERPRETERS:
            return name[:40]
    return words[0][:40]


def measure(seconds: float, every: float = 0.5) -> dict[str, dict]:
    """CPU seconds and process count per group over ``seconds``."""
    start = last = snapshot()
    used: dict[str, float] = {}
    names: dict[str, str] = {pid: cmd for pid, (_, cmd) in start.items()}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(every)
        now = snapshot()
        for pid, (cpu, cmd) in now.items():
            used[pid] = used.get(pid, 0.0) + cpu - (last[pid][0] if pid in last else 0.0)
            names[pid] = cmd or names.get(pid, "")
        last = now
    groups: dict[str, dict] = {}
    for pid, cpu in used.items():
        g = groups.setdefault(group(names[pid]), {"cpu_s": 0.0, "processes": 0})
        g["cpu_s"] += cpu
        g["processes"] += cpu > 0
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["cpu_s"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=DefaultsHelp)
    p.add_argument("--seconds", type=float, default=50.0, help="how long to sample")
    p.add_argument("--top", type=int, default=15, help="rows to print")
    p.add_argument("--out", default="", help="write the groups as JSON here")
    args = p.parse_args(argv)
    groups = measure(args.seconds)
    total = sum(g["cpu_s"] for g in groups.values())
    print(f"{total:.1f} CPU seconds in {args.seconds:g} s on {os.cpu_count()} cores")
    print("| process | CPU s | processes |\n|---|---|---|")
    for name, g in list(groups.items())[:args.top]:
        print(f"| {name} | {g['cpu_s']:.1f} | {g['processes']} |")
    if args.out:
        Path(args.out).write_bytes(json_bytes({"seconds": args.seconds, "cores":
                                              os.cpu_count(), "groups": groups,
                                              "environment": environment()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
