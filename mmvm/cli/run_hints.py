"""What ``mmvm run`` says once ``flwr run`` has ended and the run did not complete:
how to continue it, or what to change (Flower's own lines say neither)."""

from __future__ import annotations

# Ray's words when a simulation on an existing cluster was given init-args-num-cpus
RAY_CLUSTER = "When connecting to an existing cluster, num_cpus and num_gpus must not"
CLUSTER_HINT = ("mmvm run: the SuperLink's Ray is an existing cluster (its RAY_ADDRESS), "
                "which takes no CPU count from the run: give mmvm run the same "
                "RAY_ADDRESS (it then leaves Ray's CPUs to the cluster), or use flwr run "
                "as deploy/README.md section 6 shows")


def after_run(final: str, code: int, said: bool, run_id: str, first: str,
              connection: str | None = None) -> str | None:
    """The hint for a run whose status is ``final`` once ``flwr run`` exited with
    ``code``; ``said``: its ServerApp printed why it failed (and its own hint);
    ``first``: the id its state is kept under (the run it resumes, or its own);
    ``connection``: the flwr connection it ran on (None: flwr's default)."""
    if not final.startswith(("finished", "unknown")):  # followed again and again
        on = f" {connection}" if connection else ""
        return (f"mmvm run: the log stream of run {run_id} kept ending while the run "
                f"goes on in the SuperLink; follow it with flwr log {run_id}{on} "
                f"--stream and see its status with flwr ls{on} --run-id {run_id}")
    if not final.startswith("finished"):  # flwr run ended, the run did not
        return (f"mmvm run: flwr run lost the SuperLink while run {run_id} ran (exit "
                f"code {code}); its ServerApp may still be training without it (a "
                f"simulation's goes on; `flwr ls` shows no such run on a new "
                f"SuperLink). Once no process of it is left, continue it with the same "
                f"--run-config and resume='{first}'")
    if final == "finished:failed" and not said:  # its ServerApp died (killed, OOM)
        return (f"mmvm run: the run's ServerApp ended without a reason of its own "
                f"(killed, out of memory, or an error Flower's lines above show); if its "
                f"sites had attached and the cause is gone, continue it with the same "
                f"--run-config and resume='{first}'")
    return None
