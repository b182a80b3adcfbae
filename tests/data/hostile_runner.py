"""Run readers on hostile inputs under an address-space limit; used by
``test_hostile_inputs.py`` (one process for every case: importing torch and pyarrow
takes seconds).

    python tests/data/hostile_runner.py CASES.json HEADROOM_BYTES

``CASES.json``: ``[{"id", "reader", "path" or "paths", "kwargs"}]``. After the imports,
``RLIMIT_AS`` is set to what the process maps plus ``HEADROOM_BYTES``; every case then
runs, and one JSON list goes to stdout: ``{"id", "status": "ok" | "error" | "exit",
"type", "msg", "value", "seconds", "peak"}``, then ``{"id": "_limits"}`` with the bytes mapped
and resident after the imports, the memory budget left and the peak resident bytes. A
case never stops the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: F401 - mapped before the limit, as in a real run

from mmvm.cli import main
from mmvm.cli.data_check import check_problem
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.labels import read_labels
from mmvm.data.store import iter_site_batches, read_site_meta, read_site_table
from mmvm.data.store_limits import memory_budget
from mmvm.data.streaming import StreamingDataset
from mmvm.federation.posteriors import decode_table


def _mapped(field: int = 0) -> int:
    """Bytes mapped (``field`` 0) or resident (1) now."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[field]) * resource.getpagesize()


def _peak() -> int:
    """Peak resident bytes of this process image (``VmHWM``; ``ru_maxrss`` would also
    count the forked parent's pages, kept across exec)."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _streaming(path: str) -> int:
    ds = StreamingDataset(path)
    for lo in range(0, len(ds), 64):  # every row: tensors are read lazily
        ds.batch(list(range(lo, min(len(ds), lo + 64))))
    return len(ds)


def _check(path: str) -> int:
    summary, problem = check_problem(path)
    if problem is not None:
        raise CheckInvalid(problem)
    return summary["rows"]


def _cli(paths: list[str]) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["data", "check", *paths])
        except SystemExit as e:
            rc = e.code
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


class CheckInvalid(Exception):
    """``mmvm data check`` found the file invalid (its message)."""


READERS = {
    "meta": lambda p, **kw: read_site_meta(p)["num_rows"],
    "table": lambda p, **kw: len(read_site_table(p)),
    "stream": lambda p, **kw: sum(len(b) for b in iter_site_batches(p, None, 4096)),
    "memory": lambda p, **kw: len(MultimodalDataset.from_parquet(p)),
    "streaming": lambda p, **kw: _streaming(p),
    "labels": lambda p, **kw: int((read_labels([p], ["s0"], ["label"])["label"] >= 0)
                                  .sum()),
    "check": lambda p, **kw: _check(p),
    "posterior": lambda p, **kw: {m: len(t) for m, t in
                                  decode_table(Path(p).read_bytes(), **kw).items()},
}


def run(case: dict) -> dict:
    t0 = time.perf_counter()
    out = {"id": case["id"]}
    try:
        if case["reader"] == "cli":
            value = _cli(case["paths"])
        else:
            value = READERS[case["reader"]](case["path"], **case.get("kwargs", {}))
        out.update(status="ok", value=value)
    except SystemExit as e:
        out.update(status="exit", type="SystemExit", msg=str(e.code))
    except Exception as e:  # noqa: BLE001 - reported, judged by the test
        out.update(status="error", type=type(e).__name__, msg=str(e)[:5000])
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["peak"] = _peak()
    return out


def _warm_up() -> None:
    """Use every reader once on a valid file before the limit: pyarrow's allocator and
    thread pools reserve their address space on first use (without this, a first
    malloc of a few bytes fails under the limit)."""
    import numpy as np

    from mmvm.data.store import write_site_table
    from mmvm.federation.posteriors import Posteriors, encode_table

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "warm.parquet")
        n = 64
        write_site_table(path, [f"s{i}" for i in range(n)],
                         {"m0": np.zeros((n, 2, 3), np.float32)},
                         {"label": np.zeros(n, np.int64)}, {}, row_group_size=16)
        for reader in READERS.values():
            if reader is not READERS["posterior"]:
                reader(str(path))
        blob = encode_table({"m0": Posteriors(np.arange(n), np.zeros((n, 4), np.float32),
                                              np.zeros((n, 4), np.float32))})
        decode_table(blob, n_rows=n)
        _cli([str(path)])


def main_() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    headroom = int(sys.argv[2])
    _warm_up()
    mapped, resident = _mapped(), _mapped(1)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, resource.RLIM_INFINITY))
    results = []
    for case in cases:  # the id first, so that a crash names its case
        print(case["id"], file=sys.stderr, flush=True)
        results.append(run(case))
    results.append({"id": "_limits", "mapped": mapped, "resident": resident,
                    "budget": memory_budget(),
                    "peak": _peak()})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main_()
