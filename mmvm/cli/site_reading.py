"""``mmvm site check``: how the site will read its files, which its node config's
``streaming`` decides, or their size where it says nothing
(:mod:`mmvm.federation.site_config`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mmvm.cli.site_findings import OK, WARNING, NodeCheck
from mmvm.data.decoded import SPARE_BYTES, copies_bytes
from mmvm.data.store_limits import fmt_bytes, memory_budget
from mmvm.federation.policy import SitePolicy
from mmvm.federation.site_config import deployed_streams, whole_bytes


def check_reading(check: NodeCheck, p: SitePolicy, train: Path, test: Path | None) -> None:
    """Say how the site reads its files and, where it streams, what its decoded copy
    needs on the state folder's disk (a warning where that disk lacks the room)."""
    whole, budget = whole_bytes([f for f in (train, test) if f is not None]), memory_budget()
    stream = deployed_streams(p, lambda: whole, lambda: budget)
    if p.streaming is None:
        check.add("data", OK, f"streaming by size: its files hold {fmt_bytes(whole)} of "
                  f"tensors, this host {fmt_bytes(budget)} of memory: it " + (
                      "streams them (over a quarter)" if stream else "reads them whole")
                  + "; streaming=\"true\" or \"false\" decides it")
    if not stream:
        return
    folder = Path(p.state, "decoded")
    near = next(d for d in (folder, *folder.parents) if d.exists())
    free = shutil.disk_usage(near).free
    have = sum(copies_bytes(folder, f) for f in (train, test) if f is not None)
    if have >= whole:  # a run made it: the next reuses it
        check.add("data", OK, f"streaming: its files' decoded copy ({fmt_bytes(whole)}) "
                  f"is in {folder}, current")
        return
    said = f"streaming: its files' decoded copy needs {fmt_bytes(whole - have)} in {folder}"
    if whole - have + SPARE_BYTES > free:
        check.add("data", WARNING, f"{said}, whose disk has {fmt_bytes(free)} free: "
                  f"a run will be refused there (it keeps {fmt_bytes(SPARE_BYTES)} spare)")
    else:
        check.add("data", OK, f"{said} ({fmt_bytes(free)} free; made by mmvm site "
                  f"prepare, or at the first run)")
