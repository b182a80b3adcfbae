"""``mmvm site prepare``: a streaming site's decoded copy made before its first run,
the copy the run then reads (current, not made again)."""

from __future__ import annotations

import numpy as np
import torch

from mmvm.cli import main
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.streaming import StreamingDataset
from tests.support.site_nodes import node_config


def _text(nc: dict) -> str:
    return " ".join(f'{k}="{v}"' for k, v in nc.items())


def test_a_streaming_site_prepares_the_copy_its_runs_read(fed, capsys):
    nc = node_config(fed, streaming="true")
    assert main(["site", "prepare", "--no-progress", "--node-config", _text(nc)]) == 0
    out = capsys.readouterr().out
    folder = fed["root"] / "state" / "site-a" / "decoded"
    assert f"train.parquet -> {folder} (441.0 KiB, " in out, out
    assert f"test.parquet -> {folder} (220.5 KiB, " in out, out
    copies = {c: c.stat().st_mtime_ns for c in folder.glob("*.npy")}
    assert len(copies) == 2
    # the state folder it made first is as private as the site makes it
    assert {d.stat().st_mode & 0o777 for d in (folder, folder.parent)} == {0o700}
    train = fed["root"] / "data" / "site-a" / "train.parquet"
    st = StreamingDataset(train, decoded_dir=folder)  # as the site opens it: reused
    assert {c: c.stat().st_mtime_ns for c in folder.glob("*.npy")} == copies
    rows = np.arange(len(st))[::-1].copy()
    assert torch.equal(st.batch(rows)["x"]["m0"],
                       MultimodalDataset.from_parquet(train).batch(rows)["x"]["m0"])
    assert not st.cache_info()["reads"]
    assert main(["site", "prepare", "--no-progress", "--node-config", _text(nc)]) == 0
    assert f"train.parquet: its copy in {folder} is current (441.0 KiB)" in \
        capsys.readouterr().out  # said, not decoded again
    assert {c: c.stat().st_mtime_ns for c in folder.glob("*.npy")} == copies


def test_a_site_that_reads_its_files_whole_has_nothing_to_prepare(fed, capsys):
    for said, nc in (("streaming=false", node_config(fed, streaming="false")),
                     ("they take under a quarter of this host's memory", node_config(fed))):
        assert main(["site", "prepare", "--node-config", _text(nc)]) == 0
        out = capsys.readouterr().out
        assert f"site site-a reads its files whole ({said}" in out, out
        assert not (fed["root"] / "state" / "site-a" / "decoded").exists()
