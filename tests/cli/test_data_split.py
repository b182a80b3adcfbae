"""``mmvm data split``: bad site names and too many shards are refused before anything
is written, and an earlier layout in --out is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmvm.cli import main
from mmvm.data.store import write_site_table


def _split(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmvm.cli", "data", "split", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("name, said", [
    ("sites.json", "site name 'sites.json' is the layout's index file (sites.json, "
                   "written next to the site folders); name the site otherwise"),
    (".split-x", "site name '.split-x' starts with '.': a hidden name, as the split's "
                 "own staging files are (.split-*, .sites.json.*.tmp)"),
])
def test_a_reserved_site_name_is_refused_and_nothing_is_written(tiny_polymnist, tmp_path,
                                                                name, said):
    """A site named sites.json left every site folder written and the split failing
    on the index (a half-written layout)."""
    files = [str(tiny_polymnist / "train.parquet"), str(tiny_polymnist / "test.parquet")]
    res = _split(*files, "--out", "out", "--names", f"{name},b,c", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == f"mmvm data split: error: --names: {said}"
    assert list(tmp_path.iterdir()) == []


def test_a_reserved_name_leaves_an_earlier_layout_untouched(tiny_polymnist, tmp_path,
                                                            capsys):
    files = [str(tiny_polymnist / "train.parquet"), str(tiny_polymnist / "test.parquet")]
    out = tmp_path / "out"
    assert main(["data", "split", *files, "--out", str(out), "--names", "a,b,c"]) == 0
    before = _tree(out)
    capsys.readouterr()
    assert main(["data", "split", *files, "--out", str(out), "--force",
                 "--names", "a,b,SITES.JSON"]) == 2
    assert "--names: site name 'SITES.JSON' is the layout's index file" in \
        capsys.readouterr().err
    assert _tree(out) == before


def test_more_shards_than_rows_is_refused_naming_both(tiny_polymnist, tmp_path):
    """--shards 200 over 96 test rows wrote empty site files."""
    files = [str(tiny_polymnist / "train.parquet"), str(tiny_polymnist / "test.parquet")]
    res = _split(*files, "--out", "out", "--layout", "horizontal", "--shards", "100",
                 cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (
        f"mmvm data split: error: --shards 100: {files[1]} has 96 rows, fewer than the "
        f"shards; a site would get none (an empty site file, on which nothing trains or "
        f"is evaluated): give at most 96 shards")
    assert list(tmp_path.iterdir()) == []


def test_a_shard_that_draws_no_row_is_refused_and_nothing_is_written(tmp_path, capsys):
    """As many shards as rows: the ids' draw leaves a shard empty; refused in the
    staging folder, so --out holds what it held (here: nothing)."""
    src = write_site_table(tmp_path / "train.parquet", [f"s-{i}" for i in range(4)],
                           {"a": np.zeros((4, 2), np.float32),
                            "b": np.ones((4, 3), np.float32)}, None, {})
    out = tmp_path / "out"
    assert main(["data", "split", str(src), "--out", str(out), "--layout", "hybrid",
                 "--shards", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmvm data split: error: {src}: site 'site-a-")
    assert "drew none of the 4 rows" in err and "so nothing was written" in err
    assert not out.exists()


def test_an_input_without_rows_is_refused(tmp_path, capsys):
    src = write_site_table(tmp_path / "train.parquet", [], {"a": np.zeros((0, 2),
                                                                       np.float32)},
                           None, {})
    assert main(["data", "split", str(src), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mmvm data split: error: {src}: has no rows; every site's file of it would be "
        f"empty (nothing trains or is evaluated on one)")
    assert not (tmp_path / "out").exists()
