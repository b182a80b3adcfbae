"""Progress bars for long work (rich), silenced when not wanted (tests, CI logs), and
the trainer's epoch in words."""

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


def draws_live(bar: Progress) -> bool:
    """Whether ``bar`` is redrawn as it goes: a terminal rich can redraw in, or a
    notebook; a log file, a pipe or a dumb terminal sees nothing until the end."""
    c = bar.console
    return c.is_jupyter or (c.is_terminal and not c.is_dumb_terminal)


def epoch_text(epoch: int, epochs: int, sums: dict[str, float], count: int) -> str:
    """The training bar's label: the epoch and its running mean loss (sample-weighted,
    as the epoch's row in metrics.csv), not the last batch's loss."""
    return f"epoch {epoch + 1}/{epochs} mean loss {sums['loss'] / count:.1f}"


def epoch_line(row: dict, epochs: int) -> str:
    """An epoch's row of metrics.csv as one line, where no progress bar can be drawn
    (a batch job's log showed nothing for 18 minutes but "resuming from epoch 1")."""
    return (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.1f}  "
            f"rec_nll {row['rec_nll']:.1f}  reg {row['reg']:.2f}  {row['seconds']:.1f} s")
