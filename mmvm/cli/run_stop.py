"""How ``mmvm run`` stops a run it was asked to stop (Ctrl-C, SIGTERM): after the
current window, which everyone checkpoints, so that ``resume=`` continues it.

The first signal writes the request at once (:mod:`mmvm.federation.stop_request`,
which the ServerApp reads before its sites attach, after they did, and when a window
begins) while ``flwr run`` goes on streaming the run's last window; a second signal
stops it in Flower now. Before the sites attached there is no window to wait for: the
request is left for the ServerApp and ``flwr run`` ends at once (a Ray that hangs
would never read it). Where the request cannot be written (no run id yet, a remote
SuperLink's folder), the signal ends ``flwr run`` and the run is stopped in Flower."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Ctrl-C, and SIGTERM / SIGHUP (``timeout``, a CI cancel, a batch scheduler, a closed
# terminal): each stops the run in the SuperLink, not only this command
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM] + [signal.SIGHUP] * hasattr(signal, "SIGHUP")
ASKED, EARLY = "asked", "early"  # what request_stop did: wait for a window, or not


def first_run(overrides: dict, run_id: str) -> str:
    """The id a run's state is kept under: the run it resumes, or its own (read as
    the server reads it: resume='042' is run 42's folder)."""
    from mmvm.federation.settings import run_id_text

    return run_id_text(str(overrides.get("resume") or run_id))


def run_folders(overrides: dict, run_id: str) -> tuple[Path, Path]:
    """``(state, results)``: where the run's ServerApp keeps its state (under the id
    of the run it continues, if a resume) and writes its results (its own id)."""
    out = Path(str(overrides.get("out-dir") or "~/.mmvm/runs")).expanduser()
    return out / f"run-{first_run(overrides, run_id)}", out / f"run-{run_id}"


STOP_WAIT = 300  # seconds a stop waits for the current window to end and be written
EARLY_WAIT = 60  # ... for a ServerApp asked before attach to answer (it may be attaching)


def kept_state(state: Path) -> str:
    """What a stopped run continues from: its server's state file where this machine
    holds it, else only where the sites had attached."""
    from mmvm.federation.server_state import STATE_FILE

    saved = state / STATE_FILE
    return f"from {saved}" if saved.is_file() else "if its sites had attached"


def nowhere(out, err) -> None:
    """Send ``out`` (a closed pipe's writer) to /dev/null, and ``err`` too where it is
    the same pipe (``mmvm run 2>&1 | head``): what is said after, the stop's lines
    included, goes nowhere instead of failing the stop."""
    import os

    null = os.open(os.devnull, os.O_WRONLY)
    same = os.path.samestat(os.fstat(out.fileno()), os.fstat(err.fileno()))
    os.dup2(null, out.fileno())
    if same:
        os.dup2(null, err.fileno())
    os.close(null)


def request_stop(state: Path, results: Path, run_id: str) -> str:
    """Ask the ServerApp to stop: :data:`ASKED` (it has a checkpoint: it stops after
    its current window, which everyone checkpoints), :data:`EARLY` (its sites have not
    attached: it stops before they do, nothing to resume) or ``""``: not asked, where
    its folder is not on this machine (a remote SuperLink) or it has its results
    (only the evaluation is left)."""
    from mmvm.federation.server_state import STATE_FILE
    from mmvm.federation.stop_request import StopRequest

    if not state.is_dir() or (results / "results.json").is_file():
        return ""
    StopRequest(state, run_id).write()
    if not (state / STATE_FILE).is_file():  # it may be attaching them: it then writes
        print(f"\nmmvm run: stopping run {run_id} before its sites attach, or just after "
              f"if they are attaching (then resumable)", file=sys.stderr, flush=True)
        return EARLY
    print(f"\nmmvm run: stopping run {run_id} after its current window, or the next if "
          f"the current one is not a checkpoint (its state is written then; Ctrl-C "
          f"again to stop it now)", file=sys.stderr, flush=True)
    return ASKED


def stopping_now(run_id: str) -> None:
    """What a second Ctrl-C says at once (stopping in Flower may take seconds)."""
    print(f"\nmmvm run: stopping run {run_id} now, in Flower", file=sys.stderr, flush=True)


def wait_for_stop(state: Path, run_id: str, now: bool = False,
                  running: Callable[[], bool] | None = None, early: bool = False) -> None:
    """Wait up to :data:`STOP_WAIT` s for the ServerApp to answer the request (it
    removes it when it ends, whichever way), unless ``now``, another Ctrl-C, or the
    run is no longer ``running()`` (asked every 5 s: a ServerApp that was killed
    answers nothing); a request still there is taken back (a later resume must not
    stop at once). ``early``: asked before the sites attached, :data:`EARLY_WAIT` s
    (it answers before attach or just after, unless Ray or its sites hang), and a
    request still there is left for the ServerApp."""
    from mmvm.federation.stop_request import StopRequest

    request = StopRequest(state, run_id)
    deadline = time.monotonic() + (EARLY_WAIT if early else STOP_WAIT)
    again = [1] if now else []
    def second(*_):
        again.append(1)
        stopping_now(run_id)

    before = signal.signal(signal.SIGINT, second)
    asked_status = time.monotonic()
    try:
        while request.pending() and not again and time.monotonic() < deadline:
            time.sleep(0.5)
            if running is not None and time.monotonic() - asked_status > 5:
                asked_status = time.monotonic()
                if not running():
                    break
    finally:
        signal.signal(signal.SIGINT, before)
    if request.asked() and not early:
        request.answer()
        print(f"mmvm run: run {run_id} did not end its window "
              f"{'yet' if again else f'within {STOP_WAIT} s'}; stopping it in Flower (a "
              f"resume continues from its last checkpoint)", file=sys.stderr)
