"""A disk that fills up under :func:`mmvm.atomic.atomic_write`, for the tests of what
a full disk leaves (the previous file, no temp file) and says."""

from __future__ import annotations

import errno
import io
import os

import mmvm.atomic


class FillsUp(io.RawIOBase):
    """The temp file's descriptor on a disk with ``room`` bytes left: what fits is
    written for real, then ENOSPC, as the kernel says it."""

    def __init__(self, fd: int, room: int):
        self.fd, self.room = fd, room

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, b) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(self.fd, bytes(b)[: self.room])
        self.room -= n
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def disk_with_room(monkeypatch, room: int) -> None:
    """Every file atomic_write opens from now on fills up after ``room`` bytes."""
    monkeypatch.setattr(mmvm.atomic.os, "fdopen",
                        lambda fd, mode: io.BufferedWriter(FillsUp(fd, room), 16))
