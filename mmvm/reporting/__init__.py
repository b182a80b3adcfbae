"""``mmvm report``: runs turned into one page of tables and the paper's figures.

:func:`write_report` collects runs (:mod:`~mmvm.reporting.collect`), groups them over
seeds (:mod:`~mmvm.reporting.stats`), builds the document
(:mod:`~mmvm.reporting.build`, with :mod:`~mmvm.reporting.figures`,
:mod:`~mmvm.reporting.pictures`, :mod:`~mmvm.reporting.federated`) and renders it as
one self-contained HTML file (:mod:`~mmvm.reporting.render_html`) or as Markdown with
its PNGs beside it (:mod:`~mmvm.reporting.render_markdown`). Nothing is written
until the whole report is built, and every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

FORMATS = ("html", "md")


def output_format(out: Path, fmt: str | None) -> str:
    """``fmt`` if given, else from the suffix (``.md``/``.markdown`` -> md, else html)."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    return "md" if out.suffix.lower() in (".md", ".markdown") else "html"


def write_report(inputs: Sequence[str | Path], out: str | Path, fmt: str | None = None,
                 title: str = "MMVM runs", generate: bool = False) -> list[Path]:
    """Write the report of ``inputs`` to ``out``; returns the files written."""
    from mmvm.atomic import atomic_write
    from mmvm.reporting.build import build
    from mmvm.reporting.collect import collect

    out = Path(out)
    fmt = output_format(out, fmt)
    collection = collect(inputs)
    doc = build(collection, title, [str(p) for p in inputs], generate=generate)
    if fmt == "md":
        from mmvm.reporting.render_markdown import write

        return write(doc, out)
    from mmvm.reporting.render_html import render

    atomic_write(out, render(doc).encode("utf-8"), mode=0o644)
    return [out]
