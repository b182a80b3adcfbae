"""``mmvm data make``: the train and test files are one pair; a failure while writing
them (a full disk) leaves neither, or the pair the folder held, never half of one."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import mmvm.data.hippocampus as hippocampus
import mmvm.data.polymnist as polymnist
from mmvm.cli import main

MAKE = {"polymnist": (polymnist, ["--digits-source", "sklearn", "--n-train", "20",
                                  "--n-test", "10"]),
        "hippocampus": (hippocampus, ["--trials-per-odor", "2"])}


def _full_disk_at_test_file(monkeypatch, module) -> None:
    """The module's writer fails on test.parquet as a full disk does (train.parquet,
    written first, succeeds)."""
    real = module.write_site_table

    def write(path, *args, **kwargs):
        if Path(path).name == "test.parquet":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, "write_site_table", write)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("dataset", sorted(MAKE))
def test_a_full_disk_leaves_no_train_file_without_its_test_file(dataset, tmp_path,
                                                                monkeypatch, capsys):
    module, flags = MAKE[dataset]
    _full_disk_at_test_file(monkeypatch, module)
    out = tmp_path / "data"
    assert main(["data", "make", dataset, "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmvm data make {dataset}: error: No space left on device: ")
    assert err.strip().endswith("test.parquet") and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nor a staging folder


@pytest.mark.parametrize("dataset", sorted(MAKE))
def test_a_full_disk_under_force_keeps_the_previous_pair(dataset, tmp_path, monkeypatch,
                                                         capsys):
    module, flags = MAKE[dataset]
    out = tmp_path / "data"
    assert main(["data", "make", dataset, "--out", str(out), "--quiet", *flags]) == 0
    before = _tree(out)
    assert sorted(before) == ["test.parquet", "train.parquet"]
    _full_disk_at_test_file(monkeypatch, module)
    assert main(["data", "make", dataset, "--out", str(out), "--quiet", "--force",
                 "--seed", "1", *flags]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_default_data_is_made_again_when_only_its_test_file_is_there(tmp_path,
                                                                         monkeypatch):
    """The pair is moved into place test file first: a simulation's first use that
    found test.parquet alone took the data as made."""
    from mmvm.data import default

    made = []
    monkeypatch.setattr(default, "make_polymnist", lambda full, **kw: made.append(full))
    monkeypatch.setattr(default, "split_sites", lambda *a, **kw: None)
    full = tmp_path / "polymnist-seed0-n20-10"
    full.mkdir()
    (full / "test.parquet").write_bytes(b"")
    (full / "sites-vertical-2-missing0").mkdir()
    (full / "sites-vertical-2-missing0" / "sites.json").write_text('{"files": {}}')
    default.ensure_default_sites(tmp_path, n_train=20, n_test=10)
    assert made == [full]
