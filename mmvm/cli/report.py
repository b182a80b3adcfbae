"""``mmvm report RUN... --out report.html``: runs as one page to open in a browser.

Each RUN is a run folder (centralized: checkpoint.pt, config.json, metrics.csv and,
after ``mmvm evaluate``, eval.json and generations.png; federated: results.json,
metrics.csv, curves.png and the assembled model's eval.json) or a benchmark's results
file (results.json: a list of eval.json dicts or {"rows": [...]}; results.csv), or a
folder holding one. Runs that differ only in their seed are grouped: the tables show
mean ± standard error over seeds ("1 seed" when there is one, with no error bar).

The page: a summary table per method and beta; reconstruction vs latent probe and vs
coherence (one point per method and beta, error bars); coherence bars and matrices;
a per-modality table; generation grids and latent plots (the run folders' own PNGs;
--generate draws missing ones from checkpoints when the data is reachable); training
curves; each federated run's sites; every run; each benchmark's own table.

HTML (default) is one self-contained file, pictures inline, no scripts; Markdown
(--format md, or an --out ending in .md) puts the PNGs in <stem>_files/ beside it.
Exit status 2 with a message on a bad input (not a run folder, corrupt JSON) or a bad
--out (a folder, not .html/.htm for HTML nor .md/.markdown for Markdown, one of the
inputs), checked before any work; an earlier report of the same name is replaced.

examples:
  mmvm report runs/mmvm-seed* runs/poe-seed* --out report.html
  mmvm report benchmarks/results/compare_methods --out methods.md
  mmvm report ~/.mmvm/runs/run-123 --generate --title "hospital federation"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmvm.cli.outputs import check_file_out, input_files

SUFFIXES = {"html": (".html", ".htm"), "md": (".md", ".markdown")}


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="turn runs into one HTML or Markdown page",
                              description=__doc__.replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders, results.json / results.csv files, or folders "
                   "holding one")
    p.add_argument("--out", default="report.html", metavar="PATH",
                   help="the report to write, .html/.htm or .md/.markdown (default: "
                   "report.html)")
    p.add_argument("--format", choices=("html", "md"), default=None,
                   help="html or md (default: from --out's suffix; html otherwise)")
    p.add_argument("--title", default="MMVM runs", help="the page title")
    p.add_argument("--generate", action="store_true",
                   help="draw generation grids and latent plots that the run folders "
                   "lack from their checkpoints (needs the run's data on this machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmvm.reporting import write_report

    _check_out(args.out, args.format, args.runs)
    written = write_report(args.runs, args.out, args.format, args.title, args.generate)
    extra = f" (+{len(written) - 1} figures)" if len(written) > 1 else ""
    print(f"wrote {written[0]}{extra}")
    return 0


def _check_out(out: str, fmt: str | None, runs: list[str]) -> None:
    """``out`` names the format written (``--format``, else its suffix's) and none of
    the inputs; Markdown's ``<stem>_files/`` must be a folder or not exist."""
    path = Path(out)
    known = [x for xs in SUFFIXES.values() for x in xs]
    if fmt is None and path.suffix.lower() not in known and not path.exists():
        raise ValueError(f"--out {out}: mmvm report writes an HTML page (.html, .htm) or "
                         f"Markdown (.md, .markdown); give a name ending in one of them")
    if fmt is None:
        fmt = "md" if path.suffix.lower() in SUFFIXES["md"] else "html"
    kind = {"html": "an HTML page", "md": "a Markdown page"}[fmt]
    check_file_out(path, SUFFIXES[fmt], kind, input_files(runs), writer="mmvm report",
                   marks=_marks(fmt))
    folder = path.with_name(path.stem + "_files")
    if fmt == "md" and (folder.exists() or folder.is_symlink()) and not folder.is_dir():
        raise ValueError(f"--out {out}: its figures go to {folder}/, which is a file; "
                         f"move that file or give another --out")


def _marks(fmt: str) -> tuple[bytes, ...]:
    """What every page of ``fmt`` that mmvm report wrote holds near its top (an HTML
    page from before the generator tag: the start of its style sheet)."""
    if fmt == "md":
        from mmvm.reporting.render_markdown import GENERATOR
        return (GENERATOR.encode(),)
    from mmvm.reporting.render_html import GENERATOR, STYLE
    return GENERATOR.encode(), f"<style>{STYLE}"[:200].encode()
