"""One self-contained HTML file: pictures inline as base64 PNG data URIs, no scripts.

Every string from the document goes through :func:`html.escape` (run folders and
results files may come from other sites); the page needs nothing but a browser, so
it can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import html

from mmvm.reporting.document import Document, Figure, Paragraph, Section, Table

# what `mmvm report` recognises as its own page when asked to write over one
GENERATOR = '<meta name="generator" content="mmvm report">'
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 0.9em;
          padding-top: 0.3em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
p.note { color: #8a5a00; background: #fff8e6; padding: 0.4em 0.6em; }
nav li { margin: 0.1em 0; }
.scroll { overflow-x: auto; }
"""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _numeric(text: str) -> bool:
    head = text.split(" ")[0].replace(".", "", 1).replace("-", "", 1).replace(",", "")
    return head.isdigit()


def table(t: Table) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in t.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(c)}</td>' if _numeric(c) else
                         f"<td>{_e(c)}</td>" for c in row) + "</tr>\n" for row in t.rows)
    caption = f"<caption>{_e(t.caption)}</caption>" if t.caption else ""
    return (f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}</tbody></table></div>\n")


def figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(f.caption or f.name)}">'
            f"<figcaption>{_e(f.caption)}</figcaption></figure>\n")


def block(b) -> str:
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Figure):
        return figure(b)
    if isinstance(b, Paragraph):
        start = '<p class="note">' if b.note else "<p>"
        return f"{start}{_e(b.text)}</p>\n"
    raise TypeError(f"unknown block {type(b).__name__}")


def section(s: Section, anchor: str) -> str:
    inner = "".join(block(b) for b in s.blocks)
    return f'<section id="{anchor}"><h2>{_e(s.title)}</h2>\n{inner}</section>\n'


def render(doc: Document) -> str:
    anchors = [f"s{i}" for i in range(len(doc.sections))]
    toc = "".join(f'<li><a href="#{a}">{_e(s.title)}</a></li>'
                  for a, s in zip(anchors, doc.sections, strict=True))
    intro = "".join(f"<p>{_e(line)}</p>\n" for line in doc.intro)
    body = "".join(section(s, a) for s, a in zip(doc.sections, anchors, strict=True))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"{GENERATOR}\n"
            f"<title>{_e(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{_e(doc.title)}</h1>\n{intro}<nav><ul>{toc}</ul></nav>\n{body}"
            "</body>\n</html>\n")
