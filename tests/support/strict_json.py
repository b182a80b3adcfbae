"""Parse a file's bytes as RFC 8259 JSON does: NaN, Infinity and -Infinity refused."""

from __future__ import annotations

import json
from typing import Any


def strict(raw: bytes | str) -> Any:
    def refuse(word: str):
        raise ValueError(f"not JSON: {word}")
    return json.loads(raw, parse_constant=refuse)
