"""One process at a time answers for a site from its state folder.

The protocol's guarantees at a site (each window trained and masked once, each
unmask step answered once, envelopes opened once) are checks of its state on disk
followed by writes of it. They hold while one process at a time reads and writes
that state, which Flower's SuperNode happens to do (one message at a time). Two
SuperNodes given the same ``state`` folder, or a wedged ClientApp process still
running while the next message arrives, would both pass the checks; a server could
then, for example, get two unmask answers from different survivor views. So the
state is locked for the whole answer (``flock``, released when the process exits,
however it exits).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmvm.federation.coordinator import FederationError

try:
    import fcntl
except ImportError:  # Windows: no flock; Flower's one-message-at-a-time only
    fcntl = None


class StateBusyError(FederationError):
    """Another process holds the site's state."""


@contextmanager
def state_lock(path: str | Path, wait: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made 0600 if absent) for the block;
    :class:`StateBusyError` if another process holds it for ``wait`` seconds."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:  # the name only: the text may travel
                    raise StateBusyError(
                        f"{Path(path).parent.name}/{Path(path).name}: another process "
                        f"has been answering for this site from the same state folder "
                        f"for {wait:g} s (two SuperNodes with one state=?); "
                        f"refused") from None
                time.sleep(0.01)
            except OSError as err:
                raise FederationError(
                    f"{Path(path).name}: the site's state folder cannot be locked "
                    f"({err.strerror}; a file system without flock?): give the node "
                    f"config a state= folder on a local disk") from None
        yield
    finally:
        os.close(fd)  # releases the lock
