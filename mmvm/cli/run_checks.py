"""What ``mmvm run`` checks before a local simulation starts: what Ray would
otherwise get stuck on, or start no site for, without a word."""

from __future__ import annotations

import argparse
import os
import socket
from urllib.parse import urlsplit

from mmvm.config import ConfigError


def cluster_address() -> str:
    """``RAY_ADDRESS`` where it names a running cluster's head ('' for none, ``auto``
    or ``local``: this machine's Ray)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return "" if address in ("auto", "local") else address


def check_resources(args: argparse.Namespace) -> None:
    """Site resources the simulation can give: Ray starts no site at all where each
    needs more than any node has (Flower's "ActorPool is empty", in the SuperLink's
    log, after the run was started)."""
    if args.cpus_per_site < 1 or not 0 <= args.gpus_per_site <= 1:
        raise ConfigError(f"--cpus-per-site {args.cpus_per_site} must be >= 1 and "
                          f"--gpus-per-site {args.gpus_per_site:g} in [0, 1]")
    address = cluster_address()
    if address:  # a cluster: its nodes must hold a site
        check_cluster_nodes(address, args.cpus_per_site, args.gpus_per_site)
    elif args.gpus_per_site:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--gpus-per-site {args.gpus_per_site:g}: torch sees no CUDA "
                              f"GPU on this machine, so Ray would start no site; leave "
                              f"it out to train on the CPU")


def check_ray_address(timeout: float = 5.0) -> None:
    """``RAY_ADDRESS`` (a cluster's head, ``host:port`` or ``ray://host:port``) must
    answer: Flower's ``ray.init`` waits on an address where nothing listens with no
    message at all, and the run sits before its first window until stopped."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ConfigError(f"RAY_ADDRESS={address!r} is not host:port (or ray://host:port) "
                          f"of a Ray cluster's head")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"RAY_ADDRESS={address}: nothing answers there ({err.strerror or err}); start "
            f"the cluster's head (ray start --head --port {port}) or fix the address, or "
            f"unset RAY_ADDRESS for a simulation on this machine's own Ray "
            f"(deploy/README.md section 6)") from None


def check_cluster_nodes(address: str, cpus: int, gpus: float,
                        timeout: float = 60.0) -> None:
    """Some node of the Ray cluster at ``address`` must offer a site's ``cpus`` and
    ``gpus`` at once, as Flower counts them (``pool_size_from_resources``, node by
    node): where none does, the run fails in the SuperLink with "ActorPool is empty".
    Asked from a child process: a Ray driver changes its process's environment
    (``PYTHONBREAKPOINT``), which ``flwr run`` and the SuperLink would inherit."""
    import json
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", NODES, address], capture_output=True,
                              text=True, timeout=timeout)
        nodes = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 \
            else None
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        nodes, done = None, None
    if nodes is None:
        why = (done.stderr.strip().splitlines() or ["no answer"])[-1][:200] if done \
            else f"no answer within {timeout:g} s"
        raise ConfigError(f"RAY_ADDRESS={address}: Ray could not connect to that "
                          f"cluster ({why})")
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return
    offered = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU"
                        for n in nodes) or "none alive"
    raise ConfigError(f"RAY_ADDRESS={address}: no node of that Ray cluster offers a "
                      f"site's --cpus-per-site {cpus} and --gpus-per-site {gpus:g} at "
                      f"once (its nodes: {offered}), so Ray would start no site: ask "
                      f"for less, or add a node that has it (ray start --address "
                      f"{address} --num-cpus N --num-gpus G)")


# the cluster's live nodes' resources, as JSON on the last line
NODES = """
import json, logging, sys
import ray
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False,
         configure_logging=False)
print(json.dumps([n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]))
ray.shutdown()
"""
