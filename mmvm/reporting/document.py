"""The report as plain data: sections of paragraphs, tables and figures.

The builder (:mod:`mmvm.reporting.build`) fills a :class:`Document`; the renderers
(:mod:`mmvm.reporting.render_html`, :mod:`mmvm.reporting.render_markdown`) turn it into
a file. Every string here is raw text, possibly from another site's files: escaping is
the renderers' job, so the builder never has to think about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Paragraph:
    text: str
    note: bool = False  # an aside (something omitted, a caveat)


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    name: str  # a file-name stem (Markdown writes <name>.png)
    png: bytes
    caption: str = ""


Block = Paragraph | Table | Figure


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Document:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
