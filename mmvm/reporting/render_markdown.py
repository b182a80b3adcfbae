"""Markdown: the report as text, its figures as PNG files in ``<stem>_files/`` beside it.

Strings from the document are escaped for Markdown (table pipes, emphasis and link
characters) and for the HTML a Markdown viewer passes through (``<``, ``>``, ``&``).
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from mmvm.atomic import atomic_write
from mmvm.reporting.document import Document, Figure, Paragraph, Table

# the first line, which `mmvm report` recognises as its own page when asked to write
# over one (a comment: Markdown viewers do not show it)
GENERATOR = "<!-- generator: mmvm report -->"

SPECIAL = "\\`*_[]|#"


def _e(text: str) -> str:
    out = html.escape(str(text), quote=False)
    out = "".join("\\" + c if c in SPECIAL else c for c in out)
    return " ".join(out.splitlines())


def table(t: Table) -> str:
    lines = ["| " + " | ".join(_e(h) for h in t.header) + " |",
             "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(_e(c) for c in row) + " |" for row in t.rows]
    caption = f"\n*{_e(t.caption)}*\n" if t.caption else ""
    return "\n".join(lines) + "\n" + caption


def render(doc: Document, folder_name: str, names: dict[int, str]) -> str:
    """The Markdown text; ``names``: id(figure) -> its file name in ``folder_name``."""
    parts = [GENERATOR, f"# {_e(doc.title)}\n"] + [_e(line) + "\n" for line in doc.intro]
    for s in doc.sections:
        parts.append(f"## {_e(s.title)}\n")
        for b in s.blocks:
            if isinstance(b, Table):
                parts.append(table(b))
            elif isinstance(b, Figure):
                link = f"{quote(folder_name)}/{quote(names[id(b)])}"
                parts.append(f"![{_e(b.caption or b.name)}]({link})\n\n*{_e(b.caption)}*\n")
            elif isinstance(b, Paragraph):
                parts.append(("> " if b.note else "") + _e(b.text) + "\n")
    return "\n".join(parts)


def write(doc: Document, out: Path) -> list[Path]:
    """``out`` and its figures; the figures first, so the text never points at a
    picture that is not there. Returns every file written."""
    folder = out.with_name(out.stem + "_files")
    names: dict[int, str] = {}
    written = []
    for i, fig in enumerate(doc.figures()):
        names[id(fig)] = f"{i + 1:02d}-{fig.name}.png"
        atomic_write(folder / names[id(fig)], fig.png, mode=0o644)
        written.append(folder / names[id(fig)])
    atomic_write(out, render(doc, folder.name, names).encode("utf-8"), mode=0o644)
    return [out, *written]
