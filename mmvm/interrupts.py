"""Ctrl-C and SIGTERM around what must be written together.

:func:`deferred_signals` holds SIGINT and SIGTERM while a checkpoint and the files
that describe it are written, then delivers the first that came as it would have
been (Ctrl-C: ``KeyboardInterrupt`` right after the block): a stop never falls between
the checkpoint and its ``metrics.csv``, nor before the caller has recorded it. A
second signal of the same kind is delivered at once (a write that hangs, on a lost
network mount, can still be stopped). :func:`sigterm_as_interrupt` makes SIGTERM (a
scheduler's or ``kill``'s stop) raise :class:`Terminated`, a ``KeyboardInterrupt``:
the same cleanup (no temp file left) and the same message as Ctrl-C.

Signals reach only the main thread: elsewhere both are no-ops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises ``KeyboardInterrupt``."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while the block runs."""
    if not _main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block has run; then the first that came is
    delivered to the handler it had before (an error in the block wins)."""
    if not _main_thread():
        yield
        return
    # None: a handler not set from Python, which cannot be put back: left alone
    old = {s: h for s in HELD if (h := signal.getsignal(s)) is not None}
    pending: list[int] = []

    def hold(signum, frame) -> None:
        if signum in pending:  # asked again: now
            signal.signal(signum, old[signum])
            _deliver(signum, old[signum], frame)
        pending.append(signum)

    for s in old:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s in old:
            signal.signal(s, old[s])
    if pending:
        _deliver(pending[0], old[pending[0]], None)


def _deliver(signum: int, handler, frame) -> None:
    """What ``signum`` would have done under ``handler``."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action: the process ends
