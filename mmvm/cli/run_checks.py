"""What ``mmvm run`` checks before a local simulation starts: what Ray would
otherwise get stuck on, or start no site for, without a word."""

from __future__ import annotations

import argparse
import os
import socket
from urllib.parse import urlsplit

from mmvm.config import ConfigError


def check_resources(args: argparse.Namespace) -> None:
    """Site resources a local simulation can give: Ray starts no site at all where
    each needs a GPU share the machine does not have ("ActorPool is empty")."""
    if args.cpus_per_site < 1 or not 0 <= args.gpus_per_site <= 1:
        raise ConfigError(f"--cpus-per-site {args.cpus_per_site} must be >= 1 and "
                          f"--gpus-per-site {args.gpus_per_site:g} in [0, 1]")
    if args.gpus_per_site and "RAY_ADDRESS" not in os.environ:  # a cluster has its own
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
