"""What the ``mmvm data`` actions share: their handler, ``--quiet``, ``--force``, the
progress bar, the list of files written, and the checks of an --out folder that
already holds data (refused unless --force; the library functions themselves write
where they are told, as the federated simulation's first-use data needs)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mmvm.cli.outputs import check_folder_out, same_file
from mmvm.data.site_names import SITES_JSON
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
    """The bar starts at the first step: a file refused before any work (a gap, a
    typo) prints its error alone, not under an empty bar."""
    with ExitStack() as stack:
        tasks: list = []

        def update(desc: str, step: int, total: int) -> None:
            if not tasks:
                bar = stack.enter_context(progress_bar(enabled))
                tasks.append((bar, bar.add_task(desc, total=total)))
            bar, task = tasks[0]
            bar.update(task, description=desc, completed=step, total=total)

        yield update


def report_paths(paths: dict) -> int:
    from rich.console import Console
    from rich.markup import escape

    from mmvm.data.store import read_site_meta

    for k, p in paths.items():
        rows = read_site_meta(p)["num_rows"] if str(p).endswith(".parquet") else None
        Console().print(f"[green]wrote[/green] {escape(k)}: {escape(str(p))}"
                        + (f" ({rows:,} rows)" if rows is not None else ""),
                        highlight=False, soft_wrap=True)  # a path whole in a log
    return 0


def printable(text: str, keep: int = 0) -> str:
    """``text`` with non-printable characters escaped (a hostile file's names must not
    drive the terminal), cut to ``keep`` characters when ``keep``."""
    out = "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)
    return out if not keep or len(out) <= keep else out[:keep] + "..."


def add_force(p: argparse.ArgumentParser, replaces: str) -> None:
    """``--force``: write into an --out that holds ``replaces`` (refused without)."""
    p.add_argument("--force", action="store_true",
                   help=f"write into an --out that already holds {replaces}")


def refuse_held(out: Path, held: Sequence[str], what: str, instead: str) -> None:
    """Refuse ``out`` when it holds ``held`` (``what``, e.g. "site files"): nothing
    is written over without ``--force`` (which would ``instead``)."""
    if held:
        shown = ", ".join(held[:6]) + (f", ... ({len(held)} in all)" if len(held) > 6
                                       else "")
        raise ValueError(f"--out {out}: already holds {what} ({shown}); give another "
                         f"output folder, or --force to {instead}")


def site_files(out: Path) -> list[str]:
    """The site files (``*.parquet``) directly in ``out``, as ``data prepare arrays``
    counts them."""
    return sorted(p.name for p in out.glob("*.parquet")) if out.is_dir() else []


def check_make_out(args: argparse.Namespace, raw: bool = False) -> None:
    """``data make``'s --out: a folder, holding no data unless --force."""
    out = check_folder_out(args.out)
    if not args.force:
        held = site_files(out) + (sorted(str(p.relative_to(out)) for p in out.glob(
            "*/*.npy")) if raw and out.is_dir() else [])
        refuse_held(out, held, "data files", "write over them")


def prepared_files(out: Path, dataset: str, view: str | None) -> list[str]:
    """The site files in ``out`` that ``data prepare <dataset>`` would write over: its
    train and test files, or for mimic_cxr those of each view folder it writes."""
    folders = ([view] if view else ["frontal", "lateral"]) if dataset == "mimic_cxr" else [""]
    return [f"{d}/{f}" if d else f for d in folders for f in site_files(out / d)]


# ------------------------------------------------------------------ data split's --out
def check_split_out(out: Path, sites: Sequence[str], files: Sequence[str],
                    force: bool) -> None:
    """Refuse what ``data split`` would write wrongly into ``out``: under a file, over
    an input (even with ``force``), or over an earlier layout (sites.json, site
    folders of the new one) without ``force``."""
    check_folder_out(out)
    for site in sites:
        folder = out / site
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out {out}: {folder} is a file, where the split writes "
                             f"site {site}'s folder; move it or give another --out")
        for f in files:
            target = folder / Path(f).name
            if target.is_dir() or any(same_file(target, g) for g in files):
                why = "a folder" if target.is_dir() else "one of the input files"
                raise ValueError(f"--out {out}: the split writes {target}, which is "
                                 f"{why}; give another --out")
    if not force:
        held = [n for n in (SITES_JSON, *sites) if (out / n).exists()]
        refuse_held(out, [n if n == SITES_JSON else f"{n}/" for n in held],
                    "a site layout", "replace it (the files of the old sites.json's "
                    "sites that the new layout does not write are removed)")


def old_layout(out: Path) -> dict[str, list[str]]:
    """Site -> file names of ``out``'s sites.json; empty when there is none or it is
    unreadable (only plain names: a hostile sites.json cannot point elsewhere)."""
    try:
        index = json.loads((out / SITES_JSON).read_text())
        listed = index["files"].items()
        return {site: [Path(p).name for p in split.values()] for site, split in listed
                if plain_name(site) and isinstance(split, dict)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def remove_stale(out: Path, old: dict[str, list[str]], written: dict[str, dict],
                 inputs: Sequence[str]) -> list[str]:
    """Remove the files of the old layout ``old`` that the new split (``written``)
    did not replace, and the old site folders left empty; the notes to print, one
    for every file removed. A site folder that is a link, or leads out of ``out``, is
    left as it is (its files may be a site's data elsewhere)."""
    notes = []
    for site, names in old.items():
        folder = out / site
        if not folder.is_dir():
            continue
        if folder.is_symlink() or folder.resolve().parent != out.resolve():
            notes.append(f"left {folder}/, a site of the replaced layout: it is a link or "
                         "leads out of the output folder")
            continue
        new = {Path(p).name for p in written.get(site, {}).values()}
        gone = [n for n in names if n not in new and n.endswith(".parquet")
                and (folder / n).is_file() and not (folder / n).is_symlink()
                and not any(same_file(folder / n, f) for f in inputs)]
        for name in gone:
            (folder / name).unlink()
        if gone:
            notes.append(f"removed {', '.join(gone)} from {folder}/ (the replaced "
                         "layout's, which the new one does not write)")
        if site in written:
            continue
        if any(folder.iterdir()):
            notes.append(f"left {folder}/, a site of the replaced layout: it holds "
                         "files that layout did not write")
        else:
            folder.rmdir()
            notes.append(f"removed {folder}/, a site of the replaced layout")
    return notes


def plain_name(name: object) -> bool:
    """A folder name that stays in its parent (no separator, not . or ..)."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and "/" not in name and "\\" not in name)
