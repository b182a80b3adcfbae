"""A process that keeps its site parses the run config once per run, not per message."""

from __future__ import annotations

import sys

import pytest
import torch
from flwr.app import Context, RecordDict

from client import site_node
from mmvm.config import ConfigError
from mmvm.federation.settings import app_run_config
from mmvm.federation.site_errors import untagged


def test_the_run_config_is_parsed_once_per_process_and_config(monkeypatch):
    parsed = []
    real = site_node.load_settings
    monkeypatch.setattr(site_node, "load_settings", lambda rc, *a: parsed.append(rc) or real(rc, *a))
    monkeypatch.setattr(site_node, "_SETTINGS", {})
    rc = app_run_config()
    first = site_node.run_settings(rc, 7)
    assert site_node.run_settings(dict(rc), 7) is first and len(parsed) == 1
    other = site_node.run_settings({**rc, "float16": not rc["float16"]}, 7)
    assert other.float16 != first.float16 and len(parsed) == 2
    for _ in range(2):  # a bad config is refused every time, never remembered
        with pytest.raises(ConfigError, match="exchange"):
            site_node.run_settings({**rc, "exchange": "sometimes"}, 7)
    assert len(parsed) == 4
    assert site_node.run_settings({**rc, "float16": not rc["float16"]}, 7) is other
    assert site_node.run_settings(rc, 8) is not first and len(parsed) == 5  # a new run


def test_a_simulated_sites_files_are_found_once_per_run(monkeypatch, tmp_path):
    """Finding them takes a lock every simulated site shares: a site host answers
    every window, so it looks once per run (a new run, or other data, looks again)."""
    made = []
    real = site_node.ensure_default_sites
    monkeypatch.setattr(site_node, "ensure_default_sites",
                        lambda *a, **k: made.append(a) or real(*a, **k))
    monkeypatch.setattr(site_node, "_SIM_FILES", {})
    rc = {**app_run_config(), "data-dir": str(tmp_path), "n-train": 60, "n-test": 20}
    s = site_node.run_settings(rc, 7)
    nc = {"partition-id": 1, "num-partitions": 3}
    first = site_node._site_files(nc, s, 7)
    assert first[0] and first[1].endswith(".parquet") and len(made) == 1
    assert [site_node._site_files(nc, s, 7) for _ in range(3)] == [first] * 3
    assert len(made) == 1
    other = site_node._site_files({**nc, "partition-id": 0}, s, 7)
    assert other[0] != first[0] and len(made) == 2
    assert site_node._site_files(nc, s, 8) == first and len(made) == 3  # a new run
    assert all(k[0] == 8 for k in site_node._SIM_FILES)  # the old run's are dropped
    with pytest.raises(ConfigError, match="num-sites=3"):  # refused every time
        site_node._site_files({**nc, "num-partitions": 2}, s, 8)
    with pytest.raises(ConfigError, match="num-sites=3"):
        site_node._site_files({**nc, "num-partitions": 2}, s, 8)
    assert len(made) == 5


class _Ray:
    def __init__(self, initialized: bool) -> None:
        self.initialized = initialized

    def is_initialized(self) -> bool:
        return self.initialized


@pytest.mark.parametrize("ray", [None, _Ray(False)])
def test_a_deployment_node_config_without_data_is_refused(monkeypatch, ray):
    """Flower's tutorials start SuperNodes with partition-id / num-partitions. Outside
    a simulation that would make the run config (whoever submits the run) pick the
    site's folders and switch secure mode off: the site refuses, saying what to set."""
    monkeypatch.setitem(sys.modules, "ray", ray)  # None: Ray was never imported
    for nc in ({"partition-id": 0, "num-partitions": 3}, {"site": "a"}, {}):
        context = Context(run_id=7, node_id=1, node_config=nc, state=RecordDict(),
                          run_config={**app_run_config(), "secure": False})
        tag, reply = untagged(site_node.answer("describe", RecordDict(), context))
        assert tag == nc.get("site")  # a site that names itself is named to the server
        assert reply.startswith("ConfigError: node config (keys ") and \
            'no data="/path/to/site"' in reply and "section 3" in reply, reply
    typo = Context(run_id=7, node_id=1, node_config={"site": "a", "dat": "/srv/a"},
                   state=RecordDict(), run_config=app_run_config())
    assert "(is 'dat' meant to be 'data'?)" in site_node.answer("describe", RecordDict(),
                                                                  typo)


def test_node_config_paths_that_are_not_there_are_named_at_the_site_only(tmp_path, capsys):
    """A typo in data= or keys= fails the first message naming the keys to the server,
    and the paths in the SuperNode's own log (its stderr), before anything is read."""
    data = tmp_path / "frontl"
    nc = {"site": "hospital-a", "data": str(data), "keys": str(tmp_path / "site_key.json"),
          "peers": "*"}
    context = Context(run_id=7, node_id=1, node_config=nc, state=RecordDict(),
                      run_config=app_run_config(secure=True))
    reply = site_node.answer("describe", RecordDict(), context)
    assert reply == ("[site hospital-a] ConfigError: node config of site hospital-a: data, "
                     "keys name files "
                     "that are not there (the site's log says which)")
    assert str(tmp_path) not in reply  # the server does not learn the site's paths
    err = capsys.readouterr().err
    assert f"mmvm site hospital-a: node config: data={data} (no such folder); " \
           f"keys={tmp_path / 'site_key.json'} (no such file or folder)" in err
    assert "refused the run's describe message: ConfigError" in err


def test_a_sites_error_log_is_its_own(tmp_path):
    """The log of a secure site's failures may name files and sample ids: 0600."""
    from mmvm.federation.site_errors import public_error

    log = tmp_path / "run-7" / "a.errors.log"
    err = public_error("a", log, "window", OSError("disk /data/ids.csv full"))
    assert "in window at site a" in str(err) and "ids.csv" not in str(err)
    assert log.stat().st_mode & 0o777 == 0o600 and log.parent.stat().st_mode & 0o777 == 0o700
    assert "disk /data/ids.csv full" in log.read_text()


def test_a_simulated_site_follows_the_run_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", _Ray(True))
    nc = {"partition-id": 0, "num-partitions": 3}
    site_node._require_simulation(nc)  # a simulation's Ray worker: the test bed
    with pytest.raises(ConfigError, match="no data="):
        site_node._require_simulation({"partition-id": 0})


def test_a_deployment_site_reads_only_the_apps_configs(tmp_path):
    """The run config names the experiment config; at a deployment site it must be
    one of the app's files, not any file the site can read."""
    secret = tmp_path / "secret.toml"
    secret.write_text('[train]\ntoken = "s3cr3t"\n')
    rc = app_run_config()
    for path in (str(secret), "../" * 12 + str(secret)[1:], "configs/../../x.toml",
                 "configs/\x00.toml"):
        with pytest.raises(ConfigError, match="reads only the app's own config files"):
            site_node.run_settings({**rc, "config": path}, 7, app_only=True)
    with pytest.raises(ConfigError, match=r"^run config: config = 'configs/nope.toml' "
                                          r"is not a file of the app$"):
        site_node.run_settings({**rc, "config": "configs/nope.toml"}, 7, app_only=True)
    with pytest.raises(ConfigError, match="secret.toml: "):  # a test bed reads it
        site_node.run_settings({**rc, "config": str(secret)}, 7)
    s = site_node.run_settings({**rc, "config": "configs/hippocampus.toml"}, 7,
                               app_only=True)
    assert s.experiment.model.latent_dim > 0


class _Processes:
    """Sites as their ClientApp process answers (``site_node.answer``, resident: a
    process that keeps its site for the run), over their messages' Flower records;
    a site's error line is a window's :class:`SiteFailure`, as Flower delivers it."""

    def __init__(self, contexts: dict) -> None:
        self.contexts = contexts

    def nodes(self) -> list[str]:
        return list(self.contexts)

    online = nodes

    def exchange(self, requests, wait=None, need=1):
        from mmvm.federation.coordinator import FederationError
        from mmvm.federation.messages import SiteFailure
        from wire.records import reply_from_record, to_record

        out = {}
        for key, req in requests.items():
            try:
                reply = site_node.answer(req.kind, to_record(req), self.contexts[key],
                                         resident=True)
            except Exception as err:  # Flower makes it an error reply
                reply = f"{type(err).__name__}: {err}"
            if isinstance(reply, str):
                if wait is None:
                    raise FederationError(reply)
                out[key] = SiteFailure(key, reply)
            else:
                out[key] = reply_from_record(req.kind, reply)
        return out


def _write_error():
    from mmvm.atomic import WriteError

    return WriteError(28, "could not write /srv/state/site-m2.pt: No space left on "
                          "device; the previous site-m2.pt is intact")


@pytest.mark.parametrize("error,reason", [
    (lambda: OSError(28, "No space left on device"),
     "failed: [site site-m2] OSError: [Errno 28] No space left on device"),
    # mmvm's own words, with the file, in one line: the server showed the OSError it
    # was raised from, with the wrong place, and Flower printed two tracebacks
    (_write_error, "failed: [site site-m2] WriteError: could not write "
                   "/srv/state/site-m2.pt: No "
                   "space left on device; the previous site-m2.pt is intact")])
def test_a_resident_site_that_fails_a_window_keeps_its_state(
        monkeypatch, tmp_path, tiny_polymnist, tiny_config, error, reason):
    """A process that keeps its site writes it at checkpoints only. When its window
    fails, rereading the site from disk would silently take it back to the last
    checkpoint (here: attach) although the server counted its earlier windows; it
    keeps the site instead, so the run ends exactly as one where it was away."""

    from mmvm.federation.local import LocalTransport, Outages
    from mmvm.federation.loop import run_federation
    from mmvm.federation.settings import settings_for
    from mmvm.federation.site import Site
    from tests.support.federate import make_sites, params, plain_endpoints, split

    torch.set_num_threads(1)
    cfg = tiny_config(tiny_polymnist, epochs=1)  # 3 one-step windows
    s = settings_for(cfg, exchange="step", float16=False, checkpoint_every=100)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    away = make_sites(cfg, specs, root)
    run_federation(Outages(LocalTransport(plain_endpoints(away)), {"n2": {2}}), s)

    monkeypatch.setattr(site_node, "_NODES", {})
    monkeypatch.setattr(site_node, "run_settings", lambda rc, run_id, app_only=False: s)
    names = {f"n{i}": spec.name for i, spec in enumerate(specs)}
    train = Site.train_window

    def failing(site, index, others):
        if (site.name, index) == (names["n2"], 2):
            raise error()
        return train(site, index, others)

    monkeypatch.setattr(Site, "train_window", failing)
    contexts = {k: Context(run_id=7, node_id=i + 1, state=RecordDict(), run_config={},
                           node_config={"site": n, "data": str(root / n),
                                        "state": str(tmp_path / "state" / n)})
                for i, (k, n) in enumerate(names.items())}
    procs, sent = _Processes(contexts), []
    exchange = procs.exchange
    procs.exchange = lambda reqs, *a: sent.append(reqs) or exchange(reqs, *a)
    res = run_federation(procs, s)
    assert res.history[2]["refused"] == {names["n2"]: reason}
    import json  # the site's journal of what it sent has the failure's line too

    journal = tmp_path / "state" / names["n2"] / "run-7" / f"{names['n2']}.sent.jsonl"
    lines = [json.loads(t) for t in journal.read_text().splitlines()]
    failed = [ln for ln in lines if "refused" in ln]
    assert [ln["kind"] for ln in failed] == ["window"], lines
    assert "No space left on device" in failed[0]["refused"]
    for n in names.values():  # a deployed site's own pictures, beside its state
        assert (tmp_path / "state" / n / "run-7" / f"{n}-pictures" /
                "generations.png").stat().st_size > 1000
    live = {k: site_node._NODES[(7, c.node_id)].site for k, c in contexts.items()}
    assert live["n2"].windows_done == 2  # windows 0 and 1, not 0 (the attach state)
    a, b = params(away.values()), params(live.values())
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    # the evaluate asked again (a server that died before it wrote the results) gets
    # its kept reply and draws nothing again: a cheap message would otherwise cost a
    # pass over the test set each time
    import mmvm.federation.site_pictures as site_pictures
    from wire.records import to_record

    drawn = []
    monkeypatch.setattr(site_pictures, "draw_site_pictures", lambda *a: drawn.append(a))
    [asked] = [r["n0"] for r in sent if r.get("n0") is not None
               and r["n0"].kind == "evaluate"]
    again = site_node.answer("evaluate", to_record(asked), contexts["n0"], resident=True)
    assert not isinstance(again, str) and drawn == []
