"""The site's journal of what it sent (``mmvm.federation.sent_log``): values as sent,
arrays and sealed blobs by size only, a refusal by its text. With real processes:
tests/deploy/test_deployment.py compares each site's journal with the server's
results."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest

from mmvm.federation.messages import DescribeReply, UnmaskReply, WindowReply
from mmvm.federation.sent_log import append_sent, brief, summary


def test_values_are_kept_and_data_is_shown_by_its_size_only():
    reply = WindowReply(metrics={"rec_nll": 123.5, "rows": 64, "nan": float("nan")},
                        posteriors={"b": b"x" * 1000, "c": b"y" * 10},
                        weights={"m0": {"enc.w": np.zeros((4, 3), np.float32)}},
                        shares={})
    line = summary("window", reply)
    assert line["kind"] == "window" and "time" in line
    sent = line["sent"]
    assert sent["metrics"]["rec_nll"] == 123.5 and sent["metrics"]["rows"] == 64
    assert sent["posteriors"] == {"b": "<1,000 bytes>", "c": "<10 bytes>"}
    assert sent["weights"] == {"m0": {"enc.w": {"shape": [4, 3], "dtype": "float32",
                                                "bytes": 48}}}
    ids = [f"patient-{i}" for i in range(500)]
    described = summary("describe", DescribeReply(site="a", modalities=["m0"], n=500,
                                                  labelled=True, identifiers=ids))
    assert described["sent"]["identifiers"] == "<list of 500>"  # ids never copied
    assert "patient-1" not in json.dumps(described)
    assert described["sent"]["modalities"] == "<list of 1>"  # a list of texts: length
    # seed shares go to the server once; the journal keeps their size, not them
    shares = {"m0": {"b": "c2VjcmV0LXNoYXJl", "c": "b3RoZXItc2hhcmU="}}
    unmasked = summary("unmask", UnmaskReply(shares=shares), run=7)
    assert "c2VjcmV0" not in json.dumps(unmasked) and unmasked["run"] == 7
    assert unmasked["sent"]["shares"].endswith("characters of JSON>")


def test_brief_keeps_short_numbers_and_sizes_the_rest():
    assert brief([1, 2.5, None, True]) == [1, 2.5, None, True]
    assert brief(list(range(17))) == "<list of 17>"
    assert brief("x" * 201) == "<text of 201 characters>"
    assert brief(b"abc") == "<3 bytes>"
    assert brief({"a": {"b": [1, 2]}}) == {"a": {"b": [1, 2]}}


def test_lines_are_appended_to_a_file_only_the_site_reads(tmp_path):
    path = tmp_path / "a.sent.jsonl"
    append_sent(path, "attach", WindowReply(), run=3)
    long = "site a: window failed: DataError: " + "x" * 400  # sent whole: kept whole
    append_sent(path, "window", long, run=3)
    lines = [json.loads(t) for t in path.read_text().splitlines()]
    assert [(ln["kind"], ln["run"]) for ln in lines] == [("attach", 3), ("window", 3)]
    assert lines[1]["refused"] == long
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    link = tmp_path / "link.jsonl"  # planted where the journal goes: not followed
    link.symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(OSError):
        append_sent(link, "attach", WindowReply())
    assert not (tmp_path / "elsewhere.jsonl").exists()
