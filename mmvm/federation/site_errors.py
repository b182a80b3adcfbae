"""What a secure site tells the server when something fails: a code, never its data.

Error text travels to the server (Flower puts the exception's text in the error
reply). Data errors name files, columns and sample ids; other exceptions may quote
anything. So in secure mode a site keeps the whole error in its own log and answers
with the error's class name; only errors about the protocol itself (a refused
envelope, an order violation, a malformed message, a refused policy), whose text is
about what the server sent, keep their message.
"""

from __future__ import annotations

import os
import re
import sys
import time
import traceback
from pathlib import Path

from mmvm.federation import policy, sealed_channel  # noqa: F401  (their SecurityErrors)
from mmvm.federation.admission import ANSI
from mmvm.federation.coordinator import FederationError
from mmvm.federation.messages import MessageError
from mmvm.federation.posteriors import PosteriorError
from mmvm.federation.sent_log import capped
from mmvm.secure import session  # noqa: F401  (UnknownSiteError)
from mmvm.secure.errors import SecurityError
from mmvm.secure.keys import validate_site_name

PROTOCOL_ERRORS = (SecurityError, FederationError, MessageError, PosteriorError)
SITE_TAG = "[site {site}] "  # a plaintext site's error text starts so (its name)
TAGGED = re.compile(r"\[site ([^\]\n]{1,100})\] (.*)", re.S)
LOG_BYTES = 4 << 20  # a site's error log is rotated at this size (one older file kept)


class SiteError(RuntimeError):
    """What the server learns of a secure site's failure."""


def public_error(site: str, log: Path, kind: str, err: BaseException) -> SiteError:
    """Append ``err`` with its traceback to ``log`` (the site's own file) and return
    the error the server may see."""
    entry = (f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {kind}\n"
             + "".join(traceback.format_exception(err)))
    where = "its log"
    try:
        log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _rotate(log)
        # the site's eyes only: it may name files and sample ids (0600, as its state)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as fh:
            os.chmod(log, 0o600)  # a log made before (umask) is narrowed too
            fh.write(entry)
    except OSError:  # the state folder itself failed: the SuperNode's own stderr
        sys.stderr.write(f"mmvm site {site}: cannot write {log}; the error:\n{entry}")
        where = "its SuperNode's log (its state folder could not be written)"
    code = type(err).__name__
    if isinstance(err, PROTOCOL_ERRORS):
        return SiteError(f"{code}: {err}")
    return SiteError(f"{code} in {kind} at site {site}; the details are in {where}")


def _rotate(log: Path) -> None:
    """Keep a site's error log and the one before it, each about :data:`LOG_BYTES`
    (rotated once past it): a server that sends message after message the site
    refuses must not fill the site's disk with tracebacks."""
    try:
        if log.stat().st_size >= LOG_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:  # none yet, or another process of the site rotated it
        pass


def security_errors() -> set[str]:
    """Class names of every :class:`SecurityError` (this module imports the modules
    that define them)."""
    names, todo = set(), [SecurityError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def untagged(reason: str) -> tuple[str | None, str]:
    """``(site, reason)`` of an error text a site tagged with its name (``None``: an
    untagged one). The name is the site's word: shown beside its node id, never
    used to tell sites apart."""
    m = TAGGED.fullmatch(reason)
    if m is None:
        return None, reason
    try:  # a name as sites are named, nothing that would read as the server's words
        return validate_site_name(m.group(1)), m.group(2)
    except ValueError:
        return None, m.group(2)


def refused_by_protection(reason: str) -> bool:
    """Whether a site's error text (``"ClassName: ..."``, as sites answer) says that
    its protection refused what it was sent: never a fault a run rides through."""
    return reason.split(":", 1)[0].strip() in security_errors()


REASON_CHARS = 2000  # of a site's error text, shown


def site_reason(text: str) -> str:
    """Flower's ``"<class 'pkg.Error'>:<'message'>"`` -> ``"Error: message"``; a
    traceback (a ClientApp that raised in a Ray worker) -> its first exception line,
    the cause, and where it was raised."""
    m = re.match(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>$", text.strip(), re.S)
    out = f"{m.group(1)}: {m.group(2).strip()}" if m else text.strip()
    if "Traceback" in out or "\n  File " in out:
        out = _cause(ANSI.sub("", out)) or out
    out = "".join(c if c.isprintable() or c == "\n" else " " for c in out)  # no escapes
    return capped(out, REASON_CHARS)  # a site's text: readable, not a flood in the log


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Iteration))"
                     r"(?:: ?(.*))?$")
_WHERE = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')


def _cause(tb: str) -> str | None:
    """``Name: message (file:line in function)`` of the exception a traceback text is
    about, with the last frame before it: the first one named (at the start of a
    line) where a chain says "direct cause", the last where one was raised "during
    handling" of another."""
    where, found = None, []
    for line in tb.splitlines():
        frame = _WHERE.match(line)
        if frame:
            where = f"{Path(frame.group(1)).name}:{frame.group(2)} in {frame.group(3)}"
            continue
        raised = _RAISED.match(line.rstrip())  # not stripped: source lines are indented
        if raised and "(" not in raised.group(1):
            name = raised.group(1).rsplit(".", 1)[-1]
            found.append(f"{name}: {(raised.group(2) or '').strip()}".rstrip(": ")
                         + (f" ({where})" if where else ""))
    if not found:
        return None
    return found[-1] if "During handling of the above exception" in tb else found[0]
