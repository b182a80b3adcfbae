"""Warnings of many runs, one line per kind: a comparison of 7 methods x 3 seeds
said the same few things 240 times before any result."""

from __future__ import annotations

import re
from collections.abc import Sequence

NUMBER = re.compile(r"\d+(?:\.\d+)?")


def warning_kinds(said: Sequence[tuple[str, str]]) -> list[str]:
    """``(run, warning)`` pairs as one line per kind of warning (its text with the
    numbers and modality indices left out), in order of first appearance: the first
    run's words, then how often and in which runs where more than once."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for name, w in said:
        kinds.setdefault(NUMBER.sub("#", w), []).append((name, w))
    lines = []
    for items in kinds.values():
        runs = list(dict.fromkeys(n for n, _ in items))
        first, text = items[0]
        more = (f" ({len(items)} times in {len(runs)} run{'s' * (len(runs) > 1)}: "
                f"{', '.join(runs)}; the numbers are {first}'s)" if len(items) > 1 else "")
        lines.append(f"{first}: {text}{more}")
    return lines
