"""``mmvm data split``: bad site names are refused before anything is written, and an
earlier layout in --out is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmvm.cli import main


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
