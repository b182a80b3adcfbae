"""What the ``mmvm data`` actions share: their handler, ``--quiet``, the progress bar
and the list of files written."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mmvm.progress import progress_bar

Progress = Callable[[str, int, int], None]  # (description, step, total)


def handles(parser: argparse.ArgumentParser,
            func: Callable[[argparse.Namespace], int]) -> None:
    """``func`` runs the command; its errors name it whole (``mmvm data split:``)."""
    parser.set_defaults(func=func, command=parser.prog.removeprefix("mmvm "))


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@contextmanager
def data_progress(enabled: bool) -> Iterator[Progress]:
    with progress_bar(enabled) as bar:
        task = bar.add_task("starting", total=None)

        def update(desc: str, step: int, total: int) -> None:
            bar.update(task, description=desc, completed=step, total=total)

        yield update


def report_paths(paths: dict) -> int:
    from rich.console import Console

    for k, p in paths.items():
        Console().print(f"[green]wrote[/green] {k}: {p}")
    return 0


def printable(text: str, keep: int = 0) -> str:
    """``text`` with non-printable characters escaped (a hostile file's names must not
    drive the terminal), cut to ``keep`` characters when ``keep``."""
    out = "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)
    return out if not keep or len(out) <= keep else out[:keep] + "..."
