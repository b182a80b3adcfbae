"""What a deployment site tells the server and its operator when it answers, refuses
or fails (``client/site_journal.py``): one line each, its folders named by their node
config keys, tracebacks and amounts in its own logs and journals, none of which a
server can grow without bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from client import site_node
from mmvm.federation.settings import app_run_config
from tests.support.site_nodes import describe


def test_what_the_server_sends_cannot_grow_the_sites_journals(plain_site, capsys):
    """Security review (2026-12-06): a window body of 64 field names of 16 KiB each
    was refused with every name quoted, and the refusal journalled whole: 1 MiB of
    the site's disk per message; a run config value of 1 MiB did the same to
    refused.jsonl for every run the site refused."""
    from flwr.app import ConfigRecord

    from mmvm.federation.messages import DescribeRequest
    from mmvm.federation.sent_log import REFUSAL_CHARS
    from wire.records import to_record

    ctx = Context(run_id=7, node_id=1, node_config=plain_site, state=RecordDict(),
                  run_config=app_run_config())
    body = ConfigRecord({f"k{i:02d}" + "A" * (16 << 10): 0 for i in range(64)})
    for _ in range(3):
        reply = site_node.answer("window", RecordDict({"body": body}), ctx)
        assert "unknown fields" in reply and "and 59 more" in reply
        assert len(reply) < 1000
    sent = Path(plain_site["state"]) / "run-7" / "site-m0.sent.jsonl"
    assert sent.stat().st_size < 3 * 2 * REFUSAL_CHARS
    for run_id in (200, 201):
        rc = app_run_config(exchange="x" * (1 << 20))
        ctx = Context(run_id=run_id, node_id=1, node_config=plain_site,
                      state=RecordDict(), run_config=rc)
        reply = site_node.answer("describe", to_record(DescribeRequest()), ctx)
        assert isinstance(reply, str) and "characters, cut" in reply
        assert len(reply) < REFUSAL_CHARS + 100
    refused = Path(plain_site["state"]) / "refused.jsonl"
    assert refused.stat().st_size < 2 * 2 * REFUSAL_CHARS
    assert max(map(len, capsys.readouterr().err.splitlines())) < REFUSAL_CHARS + 200


@pytest.mark.parametrize("report, error", [
    (True, RuntimeError), (False, RuntimeError),
    (False, "diverged")])  # an expected error that names the step it diverged at
def test_an_unexpected_error_of_a_site_that_keeps_its_losses_stays_in_its_log(
        plain_site, monkeypatch, capsys, report, error):
    """A deployed plaintext site's unexpected error travels as its text, its folders
    named by their node config keys (Flower's error reply would carry them); one with
    ``report-losses = false`` sends the class and where to look, since the text may
    quote the numbers it keeps (a loss, a weight, the step a divergence began at);
    the traceback goes to its error log, and its SuperNode's log says where."""
    from mmvm.training import TrainingDivergedError

    kind = TrainingDivergedError if error == "diverged" else error

    def fails(self, request):
        raise kind(f"loss went to 1234.5678 at row 17 of {plain_site['data']}/x")

    monkeypatch.setattr(site_node.Endpoint, "handle", fails)
    nc = {**plain_site, "report-losses": report}
    reply = describe(nc)
    log = Path(plain_site["state"]) / "run-7" / "site-m0.errors.log"
    if report:
        assert reply == "[site site-m0] RuntimeError: loss went to 1234.5678 at row 17 " \
            "of <data>/x", reply
        assert f"(traceback: {log})" in capsys.readouterr().err
        assert "Traceback" in log.read_text()
        return
    assert isinstance(reply, str) and "1234.5678" not in reply, reply
    assert reply.startswith(f"[site site-m0] SiteError: {kind.__name__} in describe") \
        and "its log" in reply, reply
    assert "loss went to 1234.5678 at row 17" in log.read_text()
    assert f"(traceback: {log})" in capsys.readouterr().err  # the operator's pointer


def test_the_sites_journal_says_how_it_reads_its_files(plain_site, capsys):
    """Its operator reads in the SuperNode's log where the site trains (its node
    config's device, else a GPU when the host has one) and whether it streams (and
    from which copy) or reads its files whole, as its node config's streaming decides;
    the server is told nothing of it."""
    decoded = Path(plain_site["state"]) / "decoded"
    site = dict(plain_site, streaming="false", device="cpu")
    assert not isinstance(describe(site, 80), str)
    assert "mmvm site site-m0: trains on cpu; reads its files whole\n" in \
        capsys.readouterr().err
    reply = describe(dict(plain_site, streaming="true"), 81)
    assert not isinstance(reply, str) and "decoded" not in repr(reply)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"mmvm site site-m0: trains on {auto}; reads its files streamed, from its " \
        f"decoded copy in {decoded}\n" in capsys.readouterr().err
    assert any(decoded.glob("*.npy"))  # describe read the files: through the copy


@pytest.mark.parametrize("state", [None, "~/st"])
def test_a_refused_run_is_journalled_in_the_default_or_a_home_state_folder(
        plain_site, tmp_path, monkeypatch, state):
    """Security review (2026-12-07): the refusal of a whole run was recorded only
    where the node config named its state folder, and not expanding ``~`` there:
    a site on the default ``~/.mmvm/state/<site>`` or a ``~/...`` one kept no record
    of the runs it refused; nor did a fresh site, whose state folder its first run
    makes."""
    import json

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / (".mmvm/state/site-m0" if state is None else "st")
    nc = {"data": plain_site["data"], "experiment": "0" * 64}
    said = describe(nc if state is None else dict(nc, state=state), 82)
    assert isinstance(said, str) and "not one its node config allows" in said, said
    lines = [json.loads(t) for t in (folder / "refused.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["refused"] == said and lines[0]["run"] == 82
    assert folder.stat().st_mode & 0o777 == 0o700  # a fresh site's, made for it
    # a server's flood of refused runs fills no disk: past LOG_BYTES the journal keeps
    # its first refusals, and the SuperNode's log (rotated by its service) each one
    from mmvm.federation.site_errors import LOG_BYTES

    with open(folder / "refused.jsonl", "ab") as fh:
        fh.truncate(LOG_BYTES)
    again = describe(nc if state is None else dict(nc, state=state), 84)
    assert isinstance(again, str) and (folder / "refused.jsonl").stat().st_size == LOG_BYTES


def test_a_plaintext_sites_error_names_its_folders_by_their_node_config_keys(plain_site):
    """Where a deployed site keeps its files is not the server's to learn: a run over
    modalities the site does not hold is refused with ``<data>/train.parquet``, the
    absolute path staying in the site's own log."""
    from mmvm.federation.messages import DescribeRequest
    from wire.records import to_record

    context = Context(run_id=73, node_id=1, node_config=plain_site, state=RecordDict(),
                      run_config=app_run_config(config="configs/hippocampus.toml"))
    said = site_node.answer("describe", to_record(DescribeRequest()), context)
    assert isinstance(said, str) and "DataError: <data>/train.parquet: site 'site-m0' " \
        "holds none of the configured modalities" in said, said
    assert plain_site["data"] not in said
