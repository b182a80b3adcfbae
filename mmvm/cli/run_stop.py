"""How ``mmvm run`` stops a run it was asked to stop (Ctrl-C, SIGTERM): after the
current window, which everyone checkpoints, so that ``resume=`` continues it.

The first signal writes the request at once (``stop.request`` in the run's folder,
which the ServerApp reads when a window begins) while ``flwr run`` goes on streaming
the run's last window; a second signal stops it in Flower now. Where the request
cannot be written (no run id yet, a remote SuperLink's folder, no checkpoint yet),
the signal ends ``flwr run`` and the run is stopped in Flower."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path


def first_run(overrides: dict, run_id: str) -> str:
    """The id a run's state is kept under: the run it resumes, or its own."""
    return str(overrides.get("resume") or run_id)


def run_folder(overrides: dict, run_id: str) -> Path:
    """Where the run's ServerApp keeps its state and results (``out-dir``, under the
    id of the run it continues, if a resume)."""
    return Path(str(overrides.get("out-dir") or "~/.mmvm/runs")).expanduser() \
        / f"run-{first_run(overrides, run_id)}"


STOP_WAIT = 300  # seconds a stop waits for the current window to end and be written


def request_stop(folder: Path, run_id: str) -> bool:
    """Ask the ServerApp to stop after its current window (it checkpoints it); False
    where that cannot be asked here: its folder is not on this machine (a remote
    SuperLink), or holds no checkpoint yet (its sites never attached: a Ray that
    hangs, a site that does not answer; nothing to wait for, nothing to keep), or its
    results (it is evaluating: nothing to stop after)."""
    from mmvm.federation.server_state import STATE_FILE, STOP_REQUEST

    if not (folder / STATE_FILE).is_file() or (folder / "results.json").is_file():
        return False
    (folder / STOP_REQUEST).write_text(f"run {run_id}\n")
    print(f"\nmmvm run: stopping run {run_id} after its current window, or the next if "
          f"the current one is not a checkpoint (its state is written then; up to "
          f"{STOP_WAIT} s, Ctrl-C again to stop it now)", file=sys.stderr, flush=True)
    return True


def wait_for_stop(folder: Path, run_id: str, now: bool = False) -> None:
    """Wait up to :data:`STOP_WAIT` s for the ServerApp to answer the request (it
    removes it), unless ``now`` or another Ctrl-C; a request still there is taken
    back (a later resume must not stop at once)."""
    from mmvm.federation.server_state import STOP_REQUEST

    request = folder / STOP_REQUEST
    deadline, again = time.monotonic() + STOP_WAIT, [1] if now else []
    before = signal.signal(signal.SIGINT, lambda *_: again.append(1))
    try:
        while request.exists() and not again and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, before)
    if request.exists():
        request.unlink(missing_ok=True)
        print(f"mmvm run: run {run_id} did not end its window "
              f"{'yet' if again else f'within {STOP_WAIT} s'}; stopping it in Flower (a "
              f"resume continues from its last checkpoint)", file=sys.stderr)
