"""Outputs of a run that a later command replaces are kept, under their time:
``eval.json`` -> ``eval.2026-12-05T20-31-07.json``, the newest under the plain name
(an evaluation of a federated run keeps the server's, a retrained run its pictures)."""

from __future__ import annotations

from pathlib import Path


def keep_earlier(path: Path) -> Path:
    """Move ``path`` aside as ``<stem>.<its time>[.k]<suffix>`` (every earlier
    evaluation kept, the newest under the plain name) and return where it went."""
    target = earlier_name(path)
    path.replace(target)
    return target


def earlier_name(path: Path, like: Path | None = None) -> Path:
    """``<stem>.<path's time>[.k]<suffix>``, a name not taken yet beside ``path``;
    ``like``: a file kept of the same earlier command, whose time names it instead
    (an evaluation's eval.json and picture, written seconds apart, kept as a pair)."""
    import time

    when = (like or path).stat().st_mtime
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.localtime(when))
    target, k = path.with_name(f"{path.stem}.{stamp}{path.suffix}"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.stem}.{stamp}.{k}{path.suffix}")
    return target


def write_keeping_earlier(path: Path, data: bytes) -> Path | None:
    """Write ``data`` to ``path`` atomically, an earlier ``path`` kept as
    :func:`earlier_name` (returned; None when there was none). The earlier file is
    linked (or copied) there first and left under its own name until the new one
    replaces it: a write that fails (a full disk) leaves it as it was."""
    from mmvm.atomic import atomic_write

    return replacing(path, lambda: atomic_write(path, data))


def replacing(path: Path, write, like: Path | None = None) -> Path | None:
    """Run ``write()``, which replaces ``path``, with an earlier ``path`` kept as
    :func:`earlier_name` (returned; None when there was none): linked (or copied)
    there first, so that a write that fails leaves it as it was, under its name."""
    import os

    from mmvm.atomic import atomic_write

    kept = earlier_name(path, like) if path.is_file() else None
    if kept is not None:
        try:
            os.link(path, kept)  # refuses an existing name: nothing overwritten
        except OSError:  # a file system without hard links: a copy, its time kept
            st = path.stat()
            # (overwrite=False would link again; the name is a fresh time stamp)
            atomic_write(kept, path.read_bytes(), mode=st.st_mode & 0o777)
            os.utime(kept, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        write()
    except BaseException:
        if kept is not None:  # the earlier one is still under its own name
            kept.unlink(missing_ok=True)
        raise
    return kept
