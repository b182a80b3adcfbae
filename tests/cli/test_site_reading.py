"""``mmvm site check``'s reading findings (:mod:`mmvm.cli.site_reading`): how the site
reads its files, and what its decoded copy needs where it streams."""

from __future__ import annotations

from collections import namedtuple

from mmvm.cli import site_reading
from mmvm.cli.site_check import OK, WARNING, check_node_config
from mmvm.data.streaming import StreamingDataset
from tests.support.site_nodes import findings, node_config

WHOLE = (192 + 96) * 3 * 28 * 28  # site-a's train and test rows x its m0, uint8


def test_the_check_says_how_the_site_reads_its_files_and_what_streaming_needs(
        fed, monkeypatch):
    """Without streaming= the site streams where its files' tensors take over a
    quarter of the host's memory (the check says which, and why); a site that
    streams is told what its decoded copy needs on the state folder's disk, warned
    where that disk lacks it."""
    monkeypatch.setattr(site_reading, "memory_budget", lambda: 4 * WHOLE)
    said = findings(check_node_config(node_config(fed)), "data", OK)
    assert any("streaming by size: its files hold 661.5 KiB of tensors" in d and
               "it reads them whole" in d for d in said), said
    assert not any(d.startswith("streaming: its files' decoded copy") for d in said)
    monkeypatch.setattr(site_reading, "memory_budget", lambda: 4 * WHOLE - 1)
    said = findings(check_node_config(node_config(fed)), "data", OK)
    assert any("it streams them (over a quarter)" in d for d in said), said
    assert said[-1].startswith("streaming: its files' decoded copy needs 661.5 KiB in ")
    streams = check_node_config(node_config(fed, streaming="true"))
    told = findings(streams, "policy", OK)
    assert "streaming on (a decoded copy in <state>/decoded)" in told[0] and \
        "reads its files streamed" in told[1], told
    assert not any("by size" in d for d in findings(streams, "data", OK))
    # once its copy is there (made by a run), the check says so and asks no room
    data = fed["root"] / "data" / "site-a"
    for split in ("train", "test"):
        StreamingDataset(data / f"{split}.parquet", decoded_dir=fed["root"] / "state" /
                         "site-a" / "decoded")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(site_reading.shutil, "disk_usage",
                        lambda _: usage(2**40, 2**40 - 2**30, 2**30))
    said = findings(check_node_config(node_config(fed, streaming="true")), "data", OK)
    assert said[-1] == f"streaming: its files' decoded copy (661.5 KiB) is in " \
        f"{fed['root'] / 'state' / 'site-a' / 'decoded'}, current", said
    for copy in (fed["root"] / "state" / "site-a" / "decoded").glob("*.npy"):
        copy.unlink()
    monkeypatch.setattr(site_reading.shutil, "disk_usage",
                        lambda _: usage(2**40, 2**40 - 2**20, 2**20))
    warned = findings(check_node_config(node_config(fed, streaming="true")), "data",
                      WARNING)
    assert warned == [f"streaming: its files' decoded copy needs 661.5 KiB in "
                      f"{fed['root'] / 'state' / 'site-a' / 'decoded'}, whose disk has "
                      f"1.0 MiB free: a run will be refused there (it keeps 1.0 GiB "
                      f"spare)"], warned
