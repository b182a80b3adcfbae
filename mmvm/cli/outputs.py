"""Output paths the commands check before any work, so that a bad ``--out`` costs
nothing and loses nothing.

A file output (``plot``, ``report``, ``encode``) must lie in a folder (not under a
file), must not be a folder, must carry the suffix of what the command writes (a PNG
named ``.pdf`` or ``.csv`` would be a lie, and writing over ``metrics.csv`` or
``checkpoint.pt`` would lose it) and must not be one of the command's own inputs. A
folder output (``data make``, ``data prepare``, ``data split``) must be a folder or
not exist yet, and not lie under a file. Every refusal is a ``ValueError`` whose
message names the option, the path and what to do instead (``mmvm`` prints it on one
line and exits with status 2).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mmvm.atomic import existing_part


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer of at least 1 (a count or a size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def check_location(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse ``path`` when the nearest of its folders that exists is a file."""
    parent = existing_part(Path(path).parent)
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: {parent} is not a folder (a file); give a path "
                         "inside a folder")


def check_file_out(out: str | os.PathLike, suffixes: Sequence[str], kind: str,
                   inputs: Iterable[str | os.PathLike] = (), flag: str = "--out",
                   writer: str = "the command", marks: Sequence[bytes] = ()) -> Path:
    """``out`` as a :class:`Path` if ``writer`` (e.g. "mmvm plot"), which writes
    ``kind`` (e.g. "PNG images") named with one of ``suffixes``, may write it;
    ``ValueError`` otherwise.

    An existing file of the right suffix that is not an input may be replaced when it
    is an earlier output (a command run again): with ``marks``, only a file whose
    first bytes hold one of them (what the writer puts in every file it writes), so
    that a user's own image or page of the same suffix is never written over."""
    path = Path(out)
    check_location(path, flag)
    if path.is_dir():
        raise ValueError(f"{flag} {out}: is a folder; give a file name inside it, e.g. "
                         f"{path / ('out' + suffixes[0])}")
    refuse_inputs(path, inputs, flag)
    if path.suffix.lower() not in suffixes:
        there = (f"exists and is no {' or '.join(suffixes)} file (left as it is); "
                 if path.exists() else "")
        raise ValueError(f"{flag} {out}: {there}{writer} writes {kind}; give a name "
                         f"ending in {' or '.join(suffixes)}")
    if marks and path.is_file() and not marked(path, marks):
        raise ValueError(f"{flag} {out}: exists and was not written by {writer} (left as "
                         "it is); give another name, or remove it first")
    return path


def marked(path: Path, marks: Sequence[bytes], head: int = 65536) -> bool:
    """Whether the first ``head`` bytes of ``path`` hold one of ``marks``."""
    with open(path, "rb") as fh:
        start = fh.read(head)
    return any(m in start for m in marks)


def refuse_inputs(out: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                  flag: str = "--out") -> None:
    """Refuse an ``out`` that is one of ``inputs`` (by file identity where both exist:
    a link or another spelling of the same path counts)."""
    for p in inputs:
        if same_file(out, p):
            raise ValueError(f"{flag} {out}: is one of the input files ({p}); write "
                             f"the output elsewhere")


RUN_INPUTS = ("eval.json", "results.json", "results.csv", "config.json", "metrics.csv",
              "checkpoint.pt")


def input_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """``inputs`` as files: a run folder stands for the files a command reads in it
    (:data:`RUN_INPUTS`)."""
    return [q for p in map(Path, inputs)
            for q in ([p / n for n in RUN_INPUTS] if p.is_dir() else [p])]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether paths ``a`` and ``b`` name the same file (existing or not)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_folder_out(out: str | os.PathLike, flag: str = "--out") -> Path:
    """``out`` as a :class:`Path` if it is a folder or does not exist yet, and does
    not lie under a file; ``ValueError`` otherwise."""
    path = Path(out)
    check_location(path, flag)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {out}: is a file, not a folder; give a folder (a new "
                         f"one, or one to write the files into)")
    return path
