"""Simulation: every site in a process of its own that keeps it in memory for the run.

Flower's Ray backend hands each message to whichever actor of its pool is free, so
without help a site's model, optimizer and place in the run would go to disk after
every message and be read back by the next actor (at ~40 MB per hippocampus site,
more time than the one step of an exact window). A **site host** is a Ray actor
named after the run and the node: the ClientApp, in whichever Flower actor it runs,
forwards the message to it and returns its reply. The host answers one message at a
time, keeps the site in memory and writes it only when the server checkpoints
(``client/site_node.py``); sites train concurrently, one host per site.

A host imports what the site's first step would otherwise import lazily
(``torch._dynamo``, which torch's optimizers load when built: seconds of CPU with
every site starting at once), so that cost falls in the run's set-up, where the host
starts (the first message), and not in its first training window.

Hosts ask Ray for no CPU of their own (the Flower actor that forwards a message
holds its CPUs while the host computes) and start on the node of the Flower actor
that makes them (on a cluster: a node that offers CPUs, never a 0-CPU head); each
uses ``cores // sites`` torch threads of its machine. ``mmvm run`` sizes Ray's CPU count so that every site's message is
in flight at once (a Flower actor per site).
A host belongs to the Flower actor that made it and ends with the simulation. If a
host dies (killed, out of memory), the message that finds it gone starts a new one
and asks it again: it restores the site from its last checkpoint, as a site whose
machine restarted does (:meth:`mmvm.federation.endpoint.Endpoint.window`), so the
run goes on with the site, which has lost its own training since that checkpoint.
"""

from __future__ import annotations

import os
import time

from flwr.app import Context, RecordDict

try:  # Ray is there whenever flwr[simulation] is; a deployment never uses hosts
    import ray
except ImportError:  # pragma: no cover
    ray = None


def hosted(context: Context, enabled: bool) -> bool:
    """Whether this message goes to a site host: a simulation (the node config has a
    partition id) running on Ray, with ``site-hosts`` on."""
    return bool(enabled and ray is not None and "partition-id" in context.node_config
                and ray.is_initialized())


def forward(kind: str, content: RecordDict, context: Context, sites: int
            ) -> RecordDict | str:
    """The site host's answer to this message (made on first use).

    A host that died (killed, out of memory) is started again from the site's last
    checkpoint and asked once more; another Flower actor's handle to the dead host
    finds the new one by its name. A new host that dies too answers, in one line,
    that it did: the window is the site's failure (``max-refused``), not a traceback."""
    name = f"mmvm-site-{context.run_id}-{context.node_id}"
    dead: set[str] = set()  # hosts that died answering this message
    deadline = 0.0
    while True:
        host = _HOSTS.get(name)
        if host is None:
            host = _HOSTS[name] = _host(name, sites)
        if _actor_id(host) in dead:  # Ray names the dead host a moment longer
            _HOSTS.pop(name, None)
            if time.monotonic() > deadline:
                return f"HostDied: the site's host process died answering its {kind} " \
                       f"message and no new one started within {RESTART_WAIT:g} s"
            time.sleep(0.2)
            continue
        try:
            return ray.get(host.answer.remote(kind, content, context))
        except ray.exceptions.ActorDiedError as err:  # not ActorUnavailableError: a
            _HOSTS.pop(name, None)  # host that may come back is not killed
            _release(host)
            dead.add(_actor_id(host))
            deadline = time.monotonic() + RESTART_WAIT
            if len(dead) > 1:
                return (f"HostDied: the site's host process died twice answering its "
                        f"{kind} message ({_first_line(err)}); out of memory? the "
                        f"Ray worker logs of the simulation say why")


RESTART_WAIT = 10.0  # s a message waits for Ray to let a dead host's name go


def _release(host) -> None:
    """Let a dead host's name go: Ray keeps handing the dead actor out under its name
    (``get_if_exists``) until it is killed by hand."""
    try:
        ray.kill(host, no_restart=True)
    except Exception:  # noqa: BLE001 (gone already: the name is free)
        pass


def _actor_id(handle) -> str:
    return str(getattr(handle, "_actor_id", id(handle)))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def warm_imports() -> None:
    """Import what a site's first training step would import lazily: torch's
    optimizers load ``torch._dynamo`` (with sympy) when the first one is built, and
    more at its first step. A throwaway step on one number does all of it."""
    import torch

    from mmvm import accel

    weight = torch.zeros(1, requires_grad=True)
    opt = accel.adam([weight], 1e-3)  # the sites' kernels (fused)
    weight.sum().backward()
    opt.step()


_HOSTS: dict = {}  # this Flower actor's handles to site hosts, by name


def _host(name: str, sites: int):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cores = os.cpu_count() or 1  # this machine's (Ray's count may be set higher)
    # the job's runtime env (Flower's, with the app on PYTHONPATH) is inherited; a
    # GPU the Flower actor was given is passed on
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    extra = {"runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": gpus}}} if gpus else {}
    # on this Flower actor's node, whose CPUs (and GPU) it holds for the host: a host
    # of no CPU could go to any node, a cluster's 0-CPU head included
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                          soft=False)
    return SiteHost.options(name=name, get_if_exists=True, num_cpus=0,
                            scheduling_strategy=here, **extra
                            ).remote(max(1, cores // max(1, sites)))


if ray is not None:
    @ray.remote
    class SiteHost:
        """One site, in memory for the run (see the module docstring)."""

        def __init__(self, threads: int) -> None:
            import torch  # here, not at import: the forwarding Flower actors need none

            warm_imports()
            torch.set_num_threads(threads)

        def answer(self, kind: str, content: RecordDict, context: Context
                   ) -> RecordDict | str:
            from client.site_node import answer

            return answer(kind, content, context, resident=True)
