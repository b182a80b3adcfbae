"""How ``mmvm run`` stops a run it was asked to stop (Ctrl-C, SIGTERM): after the
current window, which everyone checkpoints, so that ``resume=`` continues it."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def first_run(overrides: dict, run_id: str) -> str:
    """The id a run's state is kept under: the run it resumes, or its own."""
    return str(overrides.get("resume") or run_id)


STOP_WAIT = 300  # seconds a stop waits for the current window to end and be written


def ask_to_stop(folder: Path, run_id: str) -> bool:
    """Ask the ServerApp to stop after its current window, which everyone then
    checkpoints (``stop.request`` in the run's folder), and wait for it, up to
    :data:`STOP_WAIT` s. Where the run's folder is not on this machine (a remote
    SuperLink), flwr stop alone stops it; where the run has no checkpoint yet (its
    sites never attached: a Ray that hangs, a site that does not answer), there is no
    window to wait for and nothing to keep (returns False)."""
    from mmvm.federation.server_state import STATE_FILE, STOP_REQUEST

    if not folder.is_dir() or (folder / "results.json").is_file():
        return True
    if not (folder / STATE_FILE).is_file():
        return False
    request = folder / STOP_REQUEST
    request.write_text(f"run {run_id}\n")
    print(f"\nmmvm run: stopping run {run_id} after its current window, or the next if "
          f"the current one is not a checkpoint (its state is written then; up to "
          f"{STOP_WAIT} s, Ctrl-C again to stop it now)",
          file=sys.stderr, flush=True)
    deadline, now = time.monotonic() + STOP_WAIT, []
    before = signal.signal(signal.SIGINT, lambda *_: now.append(1))
    try:
        while request.exists() and not now and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, before)
    if request.exists():
        request.unlink(missing_ok=True)  # a later resume must not stop at once
        print(f"mmvm run: run {run_id} did not end its window "
              f"{'yet' if now else f'within {STOP_WAIT} s'}; stopping it in Flower (a "
              f"resume continues from its last checkpoint)", file=sys.stderr)
    return True
