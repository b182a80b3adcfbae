"""mmvm.atomic: content, permissions, refusal to overwrite, nothing left on failure (a
full disk named, the previous file intact), a killed run's temp files swept."""

from __future__ import annotations

import errno
import os
import stat

import pytest

import mmvm.atomic as atomic
from mmvm.atomic import atomic_write
from tests.support.full_disk import disk_with_room


def test_bytes_and_writer_give_the_same_content(tmp_path):
    atomic_write(tmp_path / "a.bin", b"hello\x00world")
    atomic_write(tmp_path / "b.bin", lambda fh: (fh.write(b"hello"), fh.write(b"\x00world")))
    assert (tmp_path / "a.bin").read_bytes() == b"hello\x00world"
    assert (tmp_path / "b.bin").read_bytes() == b"hello\x00world"
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.bin"]


def test_overwrite_replaces_the_whole_file_and_creates_the_directory(tmp_path):
    path = tmp_path / "a" / "b" / "m.csv"
    atomic_write(path, b"x" * 1000)
    atomic_write(path, b"short")
    assert path.read_bytes() == b"short" and os.listdir(path.parent) == ["m.csv"]


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_mode_bits_are_exact_whatever_the_umask(tmp_path, mode):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "f", b"data", mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == mode


def test_default_mode_is_private(tmp_path):
    atomic_write(tmp_path / "f", b"data")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o600


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    path = tmp_path / "key.json"
    atomic_write(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        atomic_write(path, b"second", mode=0o644, overwrite=False)
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["key.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failing_writer_leaves_the_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "c.pt"
    atomic_write(path, b"old")

    def writer(fh):
        fh.write(b"half a file")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["c.pt"]
    with pytest.raises(type(error)):
        atomic_write(tmp_path / "new.pt", writer)
    assert os.listdir(tmp_path) == ["c.pt"]


def test_failing_rename_leaves_no_temp(tmp_path, monkeypatch):
    def broken(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write(tmp_path / "m.csv", b"epoch\n1\n")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    atomic_write(path, b"the previous checkpoint")
    disk_with_room(monkeypatch, 100)
    with pytest.raises(atomic.WriteError) as info:
        atomic_write(path, b"x" * 10_000)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert str(info.value) == (
        f"could not write {path}: No space left on device (is the file system of "
        f"{tmp_path} full, or a quota or file size limit hit?); the previous c.pt is "
        "intact")
    with pytest.raises(atomic.WriteError, match=r"new\.pt: No space left on device .*; "
                       r"no new\.pt was written, nor any part of it$"):
        atomic_write(tmp_path / "new.pt", lambda fh: fh.write(b"y" * 10_000))
    monkeypatch.undo()
    assert path.read_bytes() == b"the previous checkpoint"
    assert os.listdir(tmp_path) == ["c.pt"]


def test_an_error_of_the_writers_own_input_is_not_taken_for_the_targets(tmp_path):
    def writer(fh):
        open(tmp_path / "missing.csv", "rb")

    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "out.parquet", writer)
    assert info.value.filename == str(tmp_path / "missing.csv")
    assert os.listdir(tmp_path) == []


def test_sweep_temps_removes_only_the_temp_files_of_the_named_files(tmp_path):
    ours = [".checkpoint.pt.ab_3x9z1.tmp", ".metrics.csv.q0w9e8r7.tmp"]
    others = ["checkpoint.pt", ".checkpoint.pt.tmp", ".checkpoint.pt.ABCDEFGH.tmp",
              ".eval.json.ab_3x9z1.tmp", "notes.ab_3x9z1.tmp", ".checkpoint.pt.abc.tmp"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".config.json.zzzzzzzz.tmp").mkdir()  # not a file: not ours
    removed = atomic.sweep_temps(tmp_path, ("checkpoint.pt", "config.json", "metrics.csv"))
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(others + [".config.json.zzzzzzzz.tmp"])
    assert atomic.sweep_temps(tmp_path / "not-there", ("checkpoint.pt",)) == []
