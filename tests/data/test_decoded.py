"""mmvm.data.decoded: a site file's decoded copy is reused while the file is unchanged,
made again when it changes, and never left half-written (no room on the disk, a row
group that fails to read)."""

from __future__ import annotations

import os
from collections import namedtuple

import numpy as np
import pytest
import torch

from mmvm.data import decoded
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.store import DataError, write_site_table
from mmvm.data.streaming import StreamingDataset


def _file(path, seed: int = 0, n: int = 90):
    rng = np.random.default_rng(seed)
    write_site_table(path, [f"s{i:03d}" for i in rng.permutation(n)],
                     {"img": rng.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8),
                      "vec": rng.normal(size=(n, 3)).astype(np.float32)},
                     {"label": rng.integers(0, 3, size=n)}, {}, row_group_size=16)
    return path


def _same(a: StreamingDataset, path) -> None:
    mem = MultimodalDataset.from_parquet(path)
    rows = np.random.default_rng(1).permutation(len(mem))
    for m in mem.names:
        assert torch.equal(a.batch(rows)["x"][m], mem.batch(rows)["x"][m]), m


def test_a_copy_is_reused_while_the_file_is_unchanged_and_made_again_when_it_changes(
        tmp_path):
    path, folder = _file(tmp_path / "train.parquet"), tmp_path / "decoded"
    _same(StreamingDataset(path, decoded_dir=folder), path)
    copies = sorted(folder.glob("*.npy"))
    assert len(copies) == 2 and folder.stat().st_mode & 0o777 == 0o700
    made = [c.stat().st_mtime_ns for c in copies]
    _same(StreamingDataset(path, decoded_dir=folder), path)
    assert [c.stat().st_mtime_ns for c in copies] == made  # reused, not written again
    _file(path, seed=5)  # the site's file replaced: other values, same ids
    _same(StreamingDataset(path, decoded_dir=folder), path)
    now = sorted(folder.glob("*.npy"))
    assert len(now) == 2 and not set(now) & set(copies)  # the older copy is gone


def test_no_room_on_the_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    path, folder = _file(tmp_path / "train.parquet"), tmp_path / "decoded"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(decoded.shutil, "disk_usage",
                        lambda _: usage(2**40, 2**40 - 2**29, 2**29))
    with pytest.raises(DataError, match=r"train\.parquet: its decoded copy for streaming "
                                        r"needs 2\.5 KiB in .*decoded, which has "
                                        r"512\.0 MiB free"):
        StreamingDataset(path, decoded_dir=folder)
    assert [f for f in os.listdir(folder) if not f.endswith(".lock")] == []


def test_a_read_that_fails_midway_leaves_no_copy(tmp_path, monkeypatch):
    """A row group that fails to read (a corrupt page, the file rewritten meanwhile)
    fails the open with its error and leaves neither a copy nor a temporary file."""
    path, folder = _file(tmp_path / "train.parquet"), tmp_path / "decoded"
    real = StreamingDataset.group_reader

    def failing(self, fi):
        read = real(self, fi)
        return lambda k: read(k) if k < 3 else (_ for _ in ()).throw(
            DataError(f"{path}: row group {k} is corrupt"))

    monkeypatch.setattr(StreamingDataset, "group_reader", failing)
    with pytest.raises(DataError, match="row group 3 is corrupt"):
        StreamingDataset(path, decoded_dir=folder)
    assert [f for f in os.listdir(folder) if not f.endswith(".lock")] == []
    monkeypatch.undo()
    _same(StreamingDataset(path, decoded_dir=folder), path)  # and it works after


def test_a_damaged_copy_is_made_again_and_copies_are_the_sites_own(tmp_path):
    """A copy cut short (a full disk, an operator's cp) is not read as data: it is
    decoded again. Copies are 0600 in a 0700 folder, as the site's state is."""
    path, folder = _file(tmp_path / "train.parquet"), tmp_path / "decoded"
    StreamingDataset(path, decoded_dir=folder)
    copies = sorted(folder.glob("*.npy"))
    assert {c.stat().st_mode & 0o777 for c in copies} == {0o600}
    sizes = [c.stat().st_size for c in copies]
    with open(copies[0], "r+b") as fh:
        fh.truncate(copies[0].stat().st_size // 2)
    _same(StreamingDataset(path, decoded_dir=folder), path)
    assert sorted(folder.glob("*.npy")) == copies
    assert [c.stat().st_size for c in copies] == sizes  # whole again


def test_a_file_rewritten_with_its_old_size_and_time_is_decoded_again(tmp_path):
    """``cp -p``, ``rsync -a`` and ``tar x`` keep a file's modification time, and a
    rewrite of the same shape keeps its size: the copy is keyed on the change time
    and inode too, which nothing sets back."""
    def vectors(path, seed: int):  # uncompressed, distinct floats: the size is fixed
        write_site_table(path, [f"s{i:03d}" for i in range(90)], {"vec": np.random.
                         default_rng(seed).normal(size=(90, 3)).astype(np.float32)},
                         None, {}, compression="none")
        return path

    path, folder = vectors(tmp_path / "train.parquet", 0), tmp_path / "decoded"
    StreamingDataset(path, decoded_dir=folder)
    before = path.stat()
    os.replace(vectors(tmp_path / "other.parquet", 9), path)  # new values, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert path.stat().st_mtime_ns == before.st_mtime_ns
    _same(StreamingDataset(path, decoded_dir=folder), path)


def test_a_killed_decodes_leftover_is_removed_and_one_decode_runs_at_a_time(tmp_path):
    """A decode killed mid-way (no ``finally``) left its hidden temporary file, which
    the next decode removes; a live process's is kept. Two processes decoding the one
    file take turns (a lock), so both do not fill the disk with a copy each."""
    import threading
    import time

    from mmvm.folder_lock import acquire

    path, folder = _file(tmp_path / "train.parquet"), tmp_path / "decoded"
    folder.mkdir()
    stem = decoded.hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    dead = folder / f".{stem}-aaaa-bbbb.999999999.tmp.npy"
    alive = folder / f".{stem}-aaaa-cccc.{os.getpid()}.tmp.npy"
    dead.write_bytes(b"x" * 100), alive.write_bytes(b"x")
    held = acquire(folder / f".{stem}.lock", wait=0)
    threading.Timer(0.3, os.close, [held]).start()
    t0 = time.monotonic()
    _same(StreamingDataset(path, decoded_dir=folder), path)
    assert time.monotonic() - t0 >= 0.3  # it waited for the holder
    assert not dead.exists() and alive.exists()
