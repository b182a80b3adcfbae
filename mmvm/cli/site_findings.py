"""What ``mmvm site check`` finds: one line per thing checked, ok, warning or error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

OK, WARNING, ERROR = "ok", "warning", "error"


@dataclass
class Finding:
    item: str  # what was checked: "policy", "data", "keys", ...
    status: str  # ok | warning | error
    detail: str


@dataclass
class NodeCheck:
    site: str
    findings: list[Finding] = field(default_factory=list)

    def add(self, item: str, status: str, detail: str) -> None:
        self.findings.append(Finding(item, status, detail))

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.findings)

    @property
    def ok(self) -> bool:
        return self.count(ERROR) == 0


def attempt(check: NodeCheck, item: str, load: Callable):
    """``load()``, or None with its error added to ``check`` under ``item``."""
    try:
        return load()
    except FileNotFoundError as err:
        check.add(item, ERROR, f"{err.filename}: no such file")
    except PermissionError as err:
        check.add(item, ERROR, str(err))
    except (ValueError, KeyError, TypeError) as err:
        check.add(item, ERROR, f"not readable: {type(err).__name__}: {err}")
    return None
