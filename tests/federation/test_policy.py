"""A site's policy comes from its node config and refuses what it does not allow."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mmvm.federation.node_config import load_policy
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.site_config import site_experiment
from mmvm.secure.keys import SiteKeys


@pytest.fixture
def directory():
    return {n: SiteKeys.generate(n).public for n in ("a", "b", "c", "mallory")}


def _pins(directory, *names):
    return ";".join(f"{n}={directory[n].fingerprint}" for n in names)


def test_a_site_with_keys_is_secure_by_default(tmp_path, directory):
    p = load_policy({"data": "/d", "keys": str(tmp_path / "k.json"),
                     "peers": _pins(directory, "b", "c")}, "a")
    assert p.require_secure and not p.allow_collect and not p.allow_pair_masking
    assert p.state.endswith("/.mmvm/state/a") and "~" not in p.state
    with pytest.raises(PolicyError, match=r"requires secure runs \(require-secure\)"):
        p.check_run("a", secure=False, align="pseudonym")
    p.check_run("a", secure=True, align="pseudonym")
    plain = load_policy({"data": "/d"}, "a")  # no keys: a plaintext site
    assert not plain.require_secure and plain.allow_collect
    plain.check_run("a", secure=False, align="pseudonym")
    assert load_policy({"partition-id": 0, "num-partitions": 3}, "a").test_bed


def test_switches_and_their_errors(tmp_path, directory):
    nc = {"data": "/d", "keys": "k", "peers": "*", "require-secure": "false",
          "allow-collect": "true", "allow-pair-masking": True, "require-psi": "yes",
          "state": str(tmp_path)}
    p = load_policy(nc, "a")
    assert not p.require_secure and p.allow_collect and p.allow_pair_masking
    assert p.peers is None and p.state == str(tmp_path)
    with pytest.raises(PolicyError, match=r"requires PSI alignment \(require-psi\)"):
        p.check_run("a", secure=True, align="pseudonym")
    with pytest.raises(PolicyError, match="must pin its peers"):
        load_policy({"data": "/d", "keys": "k"}, "a")
    with pytest.raises(PolicyError, match=r"unknown keys \['alow-collect'\]"):
        load_policy({"data": "/d", "alow-collect": "true"}, "a")
    with pytest.raises(PolicyError, match=r"is not a boolean \(true or false"):
        load_policy({"data": "/d", "require-secure": "maybe"}, "a")
    assert load_policy({"data": "/d", "keys": "k", "peers": "*", "require-secure": "on"},
                       "a").require_secure
    with pytest.raises(PolicyError, match="is not 'name=fingerprint'"):
        load_policy({"data": "/d", "keys": "k", "peers": "b=12ab"}, "a")
    for empty in ("", " ", ";", " ; ;"):  # never "trust everyone" by accident: that
        with pytest.raises(PolicyError, match="peers is empty"):  # is peers="*"
            load_policy({"data": "/d", "keys": "k", "peers": empty}, "a")


def test_pinned_peers_filter_the_directory_and_catch_substituted_keys(directory):
    p = load_policy({"data": "/d", "keys": "k", "peers": _pins(directory, "b", "c")}, "a")
    assert sorted(p.trusted("a", directory)) == ["a", "b", "c"]  # not mallory
    forged = dict(directory, b=SiteKeys.generate("b").public,  # the operator swapped
                  c=SiteKeys.generate("c").public)  # b and c: both named, with advice
    with pytest.raises(PolicyError, match=r"keys of b, c are not the pinned ones"
                                          r" \(b: directory .*; c: directory .*\)\. "
                                          r"Re-confirm .* do not copy it from the dir"):
        p.trusted("a", forged)
    gone = {k: v for k, v in directory.items() if k != "c"}
    with pytest.raises(PolicyError, match=r"pinned peers c are not in the public key"):
        p.trusted("a", gone)
    both = {k: v for k, v in forged.items() if k != "c"}  # c gone, b swapped: both named
    with pytest.raises(PolicyError, match=r"peers c are not in .*; and the directory's "
                                          r"keys of b are not the pinned ones"):
        p.trusted("a", both)
    fp = directory["b"].fingerprint  # spaces and case do not matter
    same = load_policy({"data": "/d", "keys": "k",
                        "peers": f"b={fp.replace(' ', '').upper()}"}, "a")
    assert sorted(same.trusted("a", directory)) == ["a", "b"]
    twice = f"{_pins(directory, 'b')};b={forged['b'].fingerprint}"  # a pasted second pin
    with pytest.raises(PolicyError, match=r"peers pins 'b' twice; keep the fingerprint its"):
        load_policy({"data": "/d", "keys": "k", "peers": twice}, "a")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "my data", "", "site-a\n"])
def test_a_deployment_sites_name_is_a_file_name_in_its_state_folder(name, tmp_path):
    """`<state>/<site>.errors.log`, `<site>.pt`: a name such as `../x` would put the
    site's files outside its state folder, plaintext or secure alike."""
    with pytest.raises(PolicyError, match=rf"invalid site name {re.escape(repr(name))}.*"
                                          r"set site=\"<name>\""):
        load_policy({"data": str(tmp_path), "site": name}, name)
    assert load_policy({"data": str(tmp_path)}, "site-a.2").state.endswith("site-a.2")
    assert load_policy({}, name).test_bed  # a simulation names its sites itself


def test_min_rows_floors_what_a_plans_windows_may_say_about_the_site():
    """``own[w]``: the site's rows in window w; metrics are sums over them. A window of
    none is harmless for a site that shares nothing, but a holder of a shared
    modality must train it in every window (rows that hold that modality): else it
    sends back the weights it got, and the masked mean could isolate another one."""
    assert load_policy({"data": "/d"}, "a").min_rows == 1
    p = load_policy({"data": "/d", "min-rows": 4}, "a")
    p.check_plan("a", np.array([4, 9, 0, 5]), {})
    with pytest.raises(PolicyError, match=r"trains 3 of its rows in window 1 \(1 of 3 "
                                          r"windows below the site's min-rows = 4\)"):
        p.check_plan("a", np.array([4, 3, 8]), {})
    with pytest.raises(PolicyError, match=r"trains 0 of its rows with modality 'm0' in "
                                          r"window 2 \(1 of 4 windows\); a site that "
                                          r"shares 'm0'.s weights trains it on at least 4"):
        p.check_plan("a", np.array([4, 9, 4, 5]), {"m0": np.array([4, 9, 0, 5])})
    with pytest.raises(PolicyError, match="rows with modality 'm1' in window 0"):
        p.check_plan("a", np.array([4, 4]), {"m0": np.array([4, 4]),
                                             "m1": np.array([3, 4])})
    default = load_policy({"data": "/d"}, "a")
    default.check_plan("a", np.array([1, 1, 0]), {})
    default.check_plan("a", np.array([1, 1, 2]), {"m0": np.array([1, 1, 1])})
    with pytest.raises(PolicyError, match="window 2"):
        default.check_plan("a", np.array([1, 1, 2]), {"m0": np.array([1, 1, 0])})
    for bad in ("many", 0, -2, 2.5, True, float("inf"), float("nan")):
        with pytest.raises(PolicyError, match="min-rows = .* is not a positive integer"):
            load_policy({"data": "/d", "min-rows": bad}, "a")
    assert load_policy({"data": "/d", "min-rows": "16"}, "a").min_rows == 16


def test_max_limits_parse_and_refuse_plans_and_models_beyond_them():
    """The server picks n, batch size and epochs, the submitter the model: a site
    refuses any beyond its own limits, naming the key, before building anything."""
    p = load_policy({"data": "/d"}, "a")  # defaults
    assert (p.max_steps, p.max_visits, p.max_batch, p.max_params, p.max_step_gib) == (
        10_000_000, 100_000_000, 4096, 200_000_000, 16)
    p.check_size("a", 60_000, 256, 100)  # PolyMNIST, 100 epochs: 23,500 steps
    with pytest.raises(PolicyError, match=r"10,000,000,000 rows; its node config "
                                          r"allows 100,000,000 \(max-visits\)"):
        p.check_size("a", 10, 2, 10**9)
    tight = load_policy({"data": "/d", "max-steps": "100", "max-batch": 64,
                         "max-visits": "1000", "max-params": "5000"}, "a")
    tight.check_size("a", 10, 1, 11)  # 9 batches an epoch (the last row joins)
    with pytest.raises(PolicyError, match=r"12 epochs x 9 steps = 108 steps; its node "
                                          r"config allows 100 \(max-steps\)"):
        tight.check_size("a", 10, 1, 12)
    with pytest.raises(PolicyError, match=r"a batch of 65 rows.*\(max-batch\)"):
        tight.check_size("a", 100, 65, 1)
    tight.check_params("a", 5000)
    with pytest.raises(PolicyError, match=r"5,001 parameters.*allows 5,000 \(max-params\)"):
        tight.check_params("a", 5001)
    bed = load_policy({"partition-id": 0, "num-partitions": 3}, "a")  # a simulation:
    bed.check_size("a", 10, 2, 10**9)  # the run config is its only config, no limits
    bed.check_params("a", 10**12)
    tight = load_policy({"data": "/d", "max-step-gib": "2"}, "a")
    tight.check_step("a", 64, lambda: 2 * 2**30)
    with pytest.raises(PolicyError, match=r"batch of 64 rows needs about 2.5 GiB; its "
                                          r"node config allows 2 GiB \(max-step-gib\)"):
        tight.check_step("a", 64, lambda: int(2.5 * 2**30))
    bed.check_step("a", 64, lambda: pytest.fail("no estimate in a test bed"))
    # what a site would hold of its test set's latents: the amount would tell the
    # server its size (the message goes to the server), so only the site's log has it
    tight.check_held("a", "the latents", 2 * 2**30)
    with pytest.raises(PolicyError, match=r"^site a: the latents would need more than its "
                                          r"node config allows, 2 GiB \(max-step-gib\); "
                                          r"its log says how much$") as refused:
        tight.check_held("a", "the latents", 2 * 2**30 + 137 * 2**20)
    assert str(refused.value.__cause__) == f"{2 * 2**30 + 137 * 2**20:,} bytes"
    with pytest.raises(PolicyError, match=r"max-steps = '0' is not a positive integer"):
        load_policy({"data": "/d", "max-steps": "0"}, "a")
    with pytest.raises(PolicyError, match=r"'max-step': did you mean 'max-steps'"):
        load_policy({"data": "/d", "max-step": "10"}, "a")


def test_eval_labels_name_the_columns_a_final_evaluation_may_probe(directory):
    """The run config names the label column a site's evaluation probes; its node
    config says which it reports on: by default only ``label`` at a secure site,
    any at a plaintext one or in a simulation's test bed."""
    secure = load_policy({"data": "/d", "keys": "k", "peers": "*"}, "a")
    assert secure.label_allowed("label") and not secure.label_allowed("label.hiv")
    assert load_policy({"data": "/d"}, "a").label_allowed("label.hiv")
    assert load_policy({"partition-id": 0, "num-partitions": 3}, "a").label_allowed("x")
    some = load_policy({"data": "/d", "eval-labels": "label.dx , label.view.*"}, "a")
    assert some.eval_labels == ("label.dx", "label.view.*")
    assert some.label_allowed("label.dx") and some.label_allowed("label.view.ap")
    assert not some.label_allowed("label") and not some.label_allowed("label.dx2")
    none = load_policy({"data": "/d", "eval-labels": ""}, "a")
    assert none.eval_labels == () and not none.label_allowed("label")
    with pytest.raises(PolicyError, match=r"eval-labels entries \['dx'\] are not label "
                                          r"columns"):
        load_policy({"data": "/d", "eval-labels": "label,dx"}, "a")


def test_a_sites_device_is_its_node_configs_and_not_part_of_the_shared_experiment():
    """A hospital picks its GPU (or the CPU); the run config's train.device is
    ignored there, and the sites still agree on the experiment (masks bind to it)."""
    from pathlib import Path

    from mmvm.config import config_digest, load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "hippocampus.toml",
                      ["train.device=cuda"])
    p = load_policy({"data": "/d", "device": "cpu"}, "a")
    assert site_experiment(p, cfg).train.device == "cpu" and cfg.train.device == "cuda"
    assert config_digest(site_experiment(p, cfg)) == config_digest(cfg)
    other = load_config(Path(__file__).resolve().parents[2] / "configs" /
                        "hippocampus.toml", ["train.lr=0.002"])
    assert config_digest(other) != config_digest(cfg)  # the rest still counts
    # without the key: a GPU when the host has one, never the submitter's choice
    assert site_experiment(load_policy({"data": "/d"}, "a"), cfg).train.device == "auto"
    assert site_experiment(SitePolicy(test_bed=True), cfg) == cfg  # a simulation: the run's
    assert load_policy({"data": "/d", "device": "cuda:1"}, "a").device == "cuda:1"
    with pytest.raises(PolicyError, match=r"device = 'gpu' is not a device"):
        load_policy({"data": "/d", "device": "gpu"}, "a")


def test_a_site_reads_its_files_as_its_node_config_says_and_the_experiment_is_shared(
        tmp_path, monkeypatch):
    """A hospital whose images fit only streamed says so in its node config, or the
    site decides by its files' size (streamed above a quarter of its memory): the run
    config's data.streaming is not a deployed site's, nor where its decoded copy goes
    (the site's data: its state folder). Streamed or not, the batches are the same,
    so the sites still agree on the experiment's digest (masks and pins bind to it)."""
    from pathlib import Path

    from mmvm.config import config_digest, load_config
    from mmvm.data.store import write_site_table
    from mmvm.federation import site_config

    path = Path(__file__).resolve().parents[2] / "configs" / "hippocampus.toml"
    cfg = load_config(path, ["data.streaming=false", "data.decoded_dir='/tmp/open'"])
    nc = {"data": "/d", "state": "/srv/st", "streaming": "true"}
    streams = site_experiment(load_policy(nc, "a"), cfg)
    assert streams.data.streaming and streams.data.decoded_dir == "/srv/st/decoded"
    assert config_digest(streams) == config_digest(cfg)
    (tmp_path / "not.parquet").write_bytes(b"no parquet")  # not read where the node
    assert site_experiment(load_policy(nc, "a"), cfg,  # says
                           [tmp_path / "not.parquet"]).data.streaming
    run_streams = load_config(path, ["data.streaming=true", "data.decoded_dir='/tmp/o'"])
    auto = load_policy({"data": "/d", "state": "/srv/st"}, "a")
    files = [write_site_table(tmp_path / "train.parquet", ["a", "b"],
                              {"x": np.zeros((2, 1000), np.float32)}, None, {})]
    ran = site_experiment(auto, run_streams, files)  # 8 kB: read whole, whatever the run
    assert not ran.data.streaming and ran.data.decoded_dir == ""
    monkeypatch.setattr(site_config, "memory_budget", lambda: 4 * 8000)
    assert not site_experiment(auto, cfg, files).data.streaming  # a quarter: whole
    monkeypatch.setattr(site_config, "memory_budget", lambda: 4 * 8000 - 1)
    big = site_experiment(auto, cfg, files)
    assert big.data.streaming and big.data.decoded_dir == "/srv/st/decoded"
    whole = site_experiment(load_policy({"data": "/d", "streaming": "false"}, "a"), cfg,
                            files)
    assert not whole.data.streaming and whole.data.decoded_dir == ""
    assert site_experiment(SitePolicy(test_bed=True), run_streams) == run_streams
    # what its journal says of it (client/site_node.py, at each run's first message)
    import dataclasses

    assert site_config.reading(big) == "reads its files streamed, from its decoded " \
        "copy in /srv/st/decoded" and site_config.reading(whole) == "reads its files whole"
    by_group = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, streaming=True, decoded_dir=""))  # (a test bed's run config's choice)
    assert site_config.reading(by_group) == "reads its files streamed, by Parquet row group"
    with pytest.raises(PolicyError, match=r"streaming = 'sometimes' is not a boolean"):
        load_policy({"data": "/d", "streaming": "sometimes"}, "a")


def test_a_run_config_compiles_a_sites_networks_only_where_the_site_allows_it():
    """train.compile makes torch Inductor write C++/Triton code under /tmp and build
    it at every message: a deployment site does that only with allow-compile; a
    simulation follows the run config. Sites that differ still agree on the
    experiment (masks bind to its digest)."""
    from pathlib import Path

    from mmvm.config import config_digest, load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "hippocampus.toml",
                      ["train.compile=true"])
    site = load_policy({"data": "/d"}, "a")
    assert site.allow_compile is False and site_experiment(site, cfg).train.compile is False
    allowed = load_policy({"data": "/d", "allow-compile": "true"}, "a")
    assert site_experiment(allowed, cfg).train.compile is True
    assert config_digest(site_experiment(site, cfg)) == config_digest(cfg)
    assert site_experiment(SitePolicy(test_bed=True), cfg).train.compile is True
    with pytest.raises(PolicyError, match=r"allow-compile"):
        load_policy({"data": "/d", "allow-compile": "maybe"}, "a")


def test_batches_per_epoch_counts_what_the_schedule_draws():
    from mmvm.schedule import batches_per_epoch, epoch_batches

    for n in range(1, 40):
        for b in range(1, 12):
            assert batches_per_epoch(n, b) == len(epoch_batches(n, b, 0, 0)), (n, b)


def test_require_psi_without_keys_is_a_node_config_error(tmp_path):
    """PSI needs a secure run, which needs keys; a plaintext run sends its ids in
    clear, so such a site would refuse every run: said when the node config is read."""
    with pytest.raises(PolicyError, match="require-psi without keys would refuse every"):
        load_policy({"data": str(tmp_path), "require-psi": "true"}, "a")
    assert not load_policy({"data": str(tmp_path), "require-psi": "false"}, "a").require_psi


@pytest.mark.parametrize("extra", [{"peers": "a=ff;c=ee"}, {"directory": "/d.json"},
                                   {"require-secure": "true"}])
def test_a_secure_sites_keys_without_keys_is_a_node_config_error(tmp_path, extra):
    """`keys = "/k.json"` (spaces around its '=') is dropped by Flower: the site kept
    its pinned peers, required nothing, answered a plaintext describe and sent every
    sample id in clear. Peers, a directory or require-secure without keys: refused."""
    with pytest.raises(PolicyError, match="belongs? to a secure site, but keys= is missing"):
        load_policy({"data": str(tmp_path), **extra}, "b")
    assert not load_policy({"data": str(tmp_path), "require-secure": "false"},
                           "b").require_secure  # a plaintext site, said so


def test_report_losses_is_on_unless_the_site_says_otherwise(tmp_path):
    assert load_policy({"data": str(tmp_path)}, "a").report_losses
    assert not load_policy({"data": str(tmp_path), "report-losses": "off"}, "a").report_losses
    with pytest.raises(PolicyError, match="report-losses = 'some' is not a boolean"):
        load_policy({"data": str(tmp_path), "report-losses": "some"}, "a")


def test_holders_lists_each_modalitys_group_and_a_server_group_must_match(tmp_path):
    p = load_policy({"data": str(tmp_path), "holders": "frontal=a, c;lateral=b"}, "a")
    assert p.holders == {"frontal": frozenset({"a", "c"}), "lateral": frozenset({"b"})}
    assert load_policy({"data": str(tmp_path)}, "a").holders is None  # the server's word
    p.check_holders("a", {"frontal": ["c", "a"]})  # the listed group, in any order
    for shared in ({"frontal": ["a", "c", "x"]}, {"frontal": ["a", "x", "y"]},
                   {"lateral": ["a", "b"]}, {"m9": ["a", "b", "c"]}):
        with pytest.raises(PolicyError, match="in the group .* holders= lists"):
            p.check_holders("a", shared)
    for bad, says in (("frontal", "not 'modality=site,site"), ("frontal=a;frontal=a,b",
                      "one entry per modality"), ("frontal=a/b", "invalid site name"),
                      (";", "holders is empty")):
        with pytest.raises(PolicyError, match=says):
            load_policy({"data": str(tmp_path), "holders": bad}, "a")


def test_experiment_lists_the_config_digests_a_site_may_run(tmp_path):
    from mmvm.config import config_digest, load_config

    cfg = load_config("configs/polymnist_cpu.toml")
    other = load_config("configs/polymnist_cpu.toml", ["model.latent_dim=4704"])
    digest = config_digest(cfg)
    p = load_policy({"data": str(tmp_path), "experiment": f" {digest.upper()} ,"}, "a")
    assert p.experiments == (digest,)
    p.check_experiment("a", cfg)
    with pytest.raises(PolicyError, match=rf"digest {config_digest(other)[:16]}\.\.\.\) is "
                       rf"not one its node config allows \(experiment={digest[:16]}"):
        p.check_experiment("a", other)
    load_policy({"data": str(tmp_path)}, "a").check_experiment("a", other)  # any
    for bad in ("abc", digest + "0", ",", digest[:-1] + "g"):
        with pytest.raises(PolicyError, match="not experiment digests"):
            load_policy({"data": str(tmp_path), "experiment": bad}, "a")


def test_a_sites_folders_are_named_by_their_node_config_keys_in_what_it_sends(
        tmp_path, monkeypatch):
    """Its data, keys and state folders (the default state folder too, written or
    resolved) become ``<data>``, ``<state>``...; whole paths only (``/srv/a`` is not
    ``/srv/ab``), the innermost first; a simulation's text is left as it is."""
    from mmvm.federation.node_config import redacted

    nc = {"data": "/srv/a", "state": "/srv/a/st", "keys": "/etc/k"}
    assert redacted("/srv/a/train.parquet, /srv/ab/x '/srv/a/st/run-1/a.pt' /etc/k",
                    nc) == "<data>/train.parquet, /srv/ab/x '<state>/run-1/a.pt' <keys>"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert redacted(f"could not write {tmp_path}/.mmvm/state/a/run-5/a.pt",
                    {"data": "/srv/a"}) == "could not write <state>/run-5/a.pt"
    monkeypatch.chdir(tmp_path)
    assert redacted(f"the data in {tmp_path}/d/x", {"data": "d"}) == "the data in <data>/x"
    assert redacted("/srv/a/x", {"partition-id": 0}) == "/srv/a/x"
