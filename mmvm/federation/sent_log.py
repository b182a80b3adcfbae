"""A site's own record of what it sent: one JSON line per reply, beside its state.

The server's files say what it received; a hospital's security officer asks what
left the site, and the SuperNode's log shows only Flower's "Sending: ... message".
``<state>/run-<id>/<site>.sent.jsonl`` (mode 0600, appended) holds one line per
reply the site's ClientApp returned: the time, the message kind, every value and
metric as sent, and for arrays and sealed blobs their names, shapes, dtypes and
byte counts, not their contents (the journal copies nothing of the site's data:
the fields that carry it, ids, tags, seed shares, are shown by their size, and a
list or text longer than a few items by its length). A refusal is the one line of
text the server was sent, at most :data:`REFUSAL_CHARS` (:func:`capped`). What a
reply held is what the site answered; whether the server received it is Flower's
to say. The journal is written by the app's code: it is the reviewed code's record
where the site pins the bundle (``deploy.superexec_fork --allow-fab``), the
submitter's otherwise.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHORT = 16  # items of a list shown as they are; longer ones by their length
TEXT = 200  # characters of a text shown as they are


def brief(value: Any) -> Any:
    """``value`` for the journal: numbers, flags and short texts as they are, a
    mapping item by item, a short list of numbers as it is, anything longer by its
    size (ids and posteriors never enter the journal)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= TEXT else f"<text of {len(value):,} characters>"
    if isinstance(value, dict):
        return {str(k): brief(v) for k, v in value.items()} if len(value) <= 256 \
            else f"<mapping of {len(value):,} entries>"
    if isinstance(value, list | tuple) and len(value) <= SHORT and all(
            v is None or isinstance(v, bool | int | float) for v in value):
        return list(value)
    if isinstance(value, list | tuple):
        return f"<list of {len(value):,}>"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value):,} bytes>"
    return f"<{type(value).__name__}>"


def _arrays(value: dict) -> dict:
    return {m: {n: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype),
                    "bytes": int(np.asarray(a).nbytes)} for n, a in arrays.items()}
            for m, arrays in value.items()}


def _sized(value: Any) -> str:
    """A payload field by its size: ids, tags, seed shares never enter the journal."""
    if isinstance(value, list | tuple):
        return f"<list of {len(value):,}>"
    return f"<{len(json.dumps(value, default=str)):,} characters of JSON>"


REFUSAL_CHARS = 2000  # a refusal's text, as sent and journalled


def capped(text: str, limit: int = REFUSAL_CHARS) -> str:
    """``text`` cut to ``limit`` characters, its length said: an error may quote what
    the server or the run's submitter sent (a field name, a run-config value of a
    megabyte), and the site's journal and its SuperNode's log must not grow by it."""
    if len(text) <= limit:
        return text
    said = f"... ({len(text):,} characters, cut)"
    return text[:limit - len(said)] + said  # at most limit: capped again, the same


def summary(kind: str, reply: Any, run: int | None = None) -> dict:
    """The journal's line for one reply (a message dataclass of
    :mod:`mmvm.federation.messages`, or the refusal text sent instead, :func:`capped`:
    one line the server already has) to a message of run ``run``."""
    line: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kind": kind,
                            "run": run}
    if not is_dataclass(reply):
        line["refused"] = capped(str(reply))
        return line
    sent = {}
    for f in fields(reply):
        v, wire = getattr(reply, f.name), f.metadata.get("wire")
        if wire == "blobs":
            sent[f.name] = {str(k): f"<{len(b):,} bytes>" for k, b in v.items()}
        elif wire == "arrays":
            sent[f.name] = _arrays(v)
        elif f.metadata.get("payload"):
            sent[f.name] = _sized(v)
        else:
            sent[f.name] = brief(v)
    line["sent"] = sent
    return line


def append_sent(path: str | Path, kind: str, reply: Any, run: int | None = None) -> None:
    """One line for ``reply`` at the end of the journal ``path`` (made 0600; a link
    there is refused, not followed)."""
    text = json.dumps(summary(kind, reply, run), sort_keys=True, allow_nan=True) + "\n"
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(text)
