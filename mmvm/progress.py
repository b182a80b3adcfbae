"""Progress bars for long work (rich), silenced when not wanted (tests, CI logs)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress]:
    """A rich Progress with bar, count and times; ``enabled=False`` draws nothing."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        yield bar


@contextmanager
def counting_bar(total: int, describe: Callable[[int], str],
                 enabled: bool = True) -> Iterator[Callable[[], None]]:
    """A :func:`progress_bar` over ``total`` steps; yields the callback that advances
    it by one step and labels it ``describe(steps done so far)``."""
    done = 0
    with progress_bar(enabled) as bar:
        task = bar.add_task(describe(0), total=total)

        def step() -> None:
            nonlocal done
            done += 1
            bar.update(task, advance=1, description=describe(done))

        yield step
