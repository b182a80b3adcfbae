"""One colour per method in every figure, so that MMVM is the same blue in the
report's trade-off plots, ``mmvm plot`` and the benchmarks' figures whatever order
the runs come in (by series position, as before, a method changed colour between
figures).

A series is named by its method first (``"mmvm"``, ``"mmvm (settings B)"``,
``"mmvm federated (5 sites)"``): series of one method share its colour and differ
by line style and marker. Names of no known method take the colours no method
has, in order. Dashed lines stay free for references (chance, raw decoders).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

METHOD_COLOURS = {
    "mmvm": "tab:blue", "independent": "tab:brown", "avg": "tab:orange",
    "poe": "tab:green", "moe": "tab:red", "mopoe": "tab:purple",
    "mmvaeplus": "tab:pink",
}
OTHER_COLOURS = ("tab:olive", "tab:cyan", "tab:gray")
LINE_STYLES = ("-", "-.", ":", (0, (5, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P")


class Style(NamedTuple):
    colour: str
    line: str | tuple
    marker: str


def method_of(series: str) -> str:
    """The method a series is named for: its first word, lower case."""
    first = re.split(r"[\s(,/]+", series.strip(), maxsplit=1)[0]
    return first.lower()


def series_styles(names: Sequence[str]) -> dict[str, Style]:
    """A :class:`Style` per series name: the method's colour; the k-th series of a
    method its k-th line style and marker."""
    seen: dict[str, int] = {}
    others: dict[str, str] = {}
    out = {}
    for name in names:
        method = method_of(name)
        colour = METHOD_COLOURS.get(method)
        if colour is None:
            colour = others.setdefault(method, OTHER_COLOURS[len(others) % len(OTHER_COLOURS)])
        k = seen.get(method, 0)
        seen[method] = k + 1
        out[name] = Style(colour, LINE_STYLES[k % len(LINE_STYLES)], MARKERS[k % len(MARKERS)])
    return out
