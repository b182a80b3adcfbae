"""Run settings: read once from the run config, defaults only in pyproject.toml."""

from __future__ import annotations

import pytest

from mmvm.config import ConfigError
from mmvm.federation.plan import PlanArgs
from mmvm.federation.settings import app_run_config, load_settings, settings_for


def test_the_apps_defaults_parse():
    s = load_settings(app_run_config())
    assert s.exchange in ("step", "steps", "round") and s.num_sites >= 1
    assert s.delta_tol is None  # -1 in the file means off
    assert s.secure is False and s.keys_dir == "" and s.eval_data == "default"
    assert s.site_hosts is True and s.decode_ahead is True
    assert "~" not in s.state_dir and "~" not in s.out_dir  # expanded
    t = s.experiment.train
    assert s.plan_args() == PlanArgs(t.batch_size, t.seed, t.epochs, s.exchange,
                                     s.exchange_steps, s.local_epochs, s.warmup)


def test_overrides_and_string_forms_of_flower_values():
    s = load_settings(app_run_config(exchange="step", float16="false", delta_tol=0.5,
                                     set="train.epochs=1", keys_dir="~/k",
                                     decode_ahead="false"))
    assert (s.exchange, s.float16, s.delta_tol, s.experiment.train.epochs,
            s.decode_ahead) == ("step", False, 0.5, 1, False)
    assert s.keys_dir.endswith("/k") and not s.keys_dir.startswith("~")


@pytest.mark.parametrize("change,match", [
    ({"exchange": "daily"}, r"exchange = 'daily'; choose one of"),
    ({"layout": "diagonal"}, r"layout = 'diagonal'"),
    ({"layout": "hybrid", "shards": 1}, r"layout = 'hybrid' needs shards >= 2 \(got 1\)"),
    ({"local_epochs": 0}, r"must be >= 1"),
    ({"missing": 1.0}, r"missing = 1.0 must be in \[0, 1\)"),
    ({"float16": "maybe"}, r"float16 = 'maybe' is not a boolean"),
    # a node config's words for a boolean, read alike (a run config refused "on")
    ({"float16": "on", "secure": "maybe"}, r"secure = 'maybe' is not a boolean \(true or "
                                          r"false; yes/no, on/off, 1/0 also do\)"),
    ({"num_sites": "three"}, r"num-sites = 'three' is not a valid int"),
    # flwr hands numbers over as TOML reads them: neither cut nor read as NaN
    ({"num_sites": 3.7}, r"num-sites = 3.7 is not a valid int"),
    ({"num_sites": True}, r"num-sites = True is not a valid int"),
    ({"delta_tol": float("nan")}, r"delta-tol = nan is not a number"),
    ({"delta_tol": "nan"}, r"delta-tol = 'nan' is not a number"),
    ({"reply_timeout": 0}, r"reply-timeout = 0.0 and connect-timeout = 30.0 must be > 0"),
    ({"reply_poll": -0.1}, r"reply-poll = -0.1 must be 0 \(5 ms in a simulation"),
    ({"reply_poll": 5}, r"reply-poll = 5.0 must be 0 .* or in \[0.005, 1\] seconds"),
    # a poll every microsecond would keep the SuperLink busy answering the server
    ({"reply_poll": 1e-6}, r"reply-poll = 1e-06 must be 0 .* or in \[0.005, 1\]"),
    ({"secure": True, "delta_tol": 0.1}, r"delta-tol .* not available with secure"),
    ({"set": "train.epochz=2"}, r"did you mean 'train.epochs'"),
    # named as the run config names them, not by where Flower staged the app
    ({"set": "train.epochz=2"}, r"^configs/polymnist_cpu.toml, override 'train.epochz=2': "),
    ({"config": "configs/polymnist-cpu.toml"}, r"^config file configs/polymnist-cpu.toml "
                                               r"does not exist; did you mean "
                                               r"'polymnist_cpu.toml'\?$"),
    ({"hippocampus": "tuning=-1"}, r"hippocampus = 'tuning=-1': tuning is a standard dev"),
    ({"hippocampus": "sparse"}, r"hippocampus = 'sparse': 'sparse': expected name=number"),
    # every site parses the run config at every message: not a `set` of thousands
    ({"set": ";".join(["train.lr=0.001"] * 257)}, r"set has 257 overrides; at most 256"),
    # ... nor one override of thousands of modalities (parsed before any node config
    # check: ~1 ms of a site's CPU each, at every message)
    ({"set": "model.modalities={" + ",".join(f'x{i}={{kind="vector",shape=[4]}}'
                                             for i in range(700)) + "}"},
     r"set is 21,608 characters long; at most 16,384"),
    # the user's own site folders: one simulated site per folder, named after it
    ({"site_dirs": "/labs/a,/labs/b", "num_sites": 3},
     r"site-dirs lists 2 folders and num-sites = 3: set num-sites=2"),
    ({"site_dirs": "labs/a,/labs/b", "num_sites": 2}, r"site-dirs 'labs/a' is relative"),
    ({"site_dirs": "/x/a,/y/a", "num_sites": 2}, r"several folders named 'a'"),
    # what a site's parser met untrusted (it raised past the site's refusal, a
    # ValueError from int() and a RecursionError from tomllib): refused, named
    ({"resume": "1" * 5000}, r"resume = '1111.*' is not a run id"),
    ({"resume": str(2**64)}, r"resume = '18446744073709551616' is not a run id"),
    ({"set": "eval.labels=" + "[" * 5000}, r"eval.labels=\[\[.*nested too deeply"),
    # no federation trains them: refused at the server's start, not at describe
    ({"set": "model.method=moe"}, r"model.method = 'moe' cannot train federated"),
    ({"set": "data.streaming=true;data.schedule=grouped"},
     r"data.schedule = 'grouped': federated sites follow the server's shared"),
])
def test_bad_values_fail_naming_the_key(change, match):
    with pytest.raises(ConfigError, match=match):
        load_settings(app_run_config(**change))


@pytest.mark.parametrize("key, what, example", [
    ("out_dir", r"results \(<out-dir>/run-<id>/\)", "~/.mmvm/runs"),
    ("state_dir", "the sites' model and optimizer state", "~/.mmvm/state"),
    ("data_dir", "the simulation's default data", "~/.mmvm/data"),
])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_folder_setting_is_refused_naming_the_key(key, what, example, value):
    """'' was read as Path(''): the server's results, the sites' state or the
    simulation's data went into the current folder of whichever process ran."""
    name = key.replace("_", "-")
    with pytest.raises(ConfigError, match=rf"^run config: {name} = {value!r} names no "
                       rf"folder: {what} would be written into the current folder of "
                       rf"whichever process runs; give a folder, e\.g\. "
                       rf"{name}='{example}'$"):
        load_settings(app_run_config(**{key: value}))


def test_empty_keys_dir_and_eval_data_keep_their_meaning_a_blank_one_is_refused():
    s = load_settings(app_run_config(keys_dir="", eval_data=""))
    assert s.keys_dir == "" and s.eval_data == ""  # documented: no keys, no evaluation
    with pytest.raises(ConfigError, match=r"^run config: keys-dir = '  ' is blank; give a "
                                          r"folder, or '' for no keys"):
        load_settings(app_run_config(keys_dir="  "))
    with pytest.raises(ConfigError, match=r"^run config: eval-data = ' ' is blank; give a "
                                          r"folder, or '' for no server-side evaluation$"):
        load_settings(app_run_config(eval_data=" "))


def test_a_run_id_is_read_as_flower_prints_it():
    """'042' is run 42 (the folders are named so); the largest 64-bit id is one."""
    assert load_settings(app_run_config(resume="042")).resume == "42"
    assert load_settings(app_run_config(resume=str(2**64 - 1))).resume == str(2**64 - 1)
    assert load_settings(app_run_config(resume="000")).resume == "0"


def test_hippocampus_lookalike_knobs():
    """The simulation's hippocampus look-alike: defaults, the dense v1 preset, knobs."""
    from mmvm.data.hippocampus import DEFAULTS, DENSE_V1

    assert load_settings(app_run_config()).hippocampus == DEFAULTS
    assert load_settings(app_run_config(hippocampus="dense")).hippocampus == DENSE_V1
    s = load_settings(app_run_config(hippocampus="tuning=1.0, tuned-fraction=0.5"))
    assert s.hippocampus == {**DEFAULTS, "tuning": 1.0, "tuned_fraction": 0.5}


def test_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match="unknown key 'exchnage'"):
        app_run_config(exchnage="step")
    rc = app_run_config()
    del rc["secure"]
    with pytest.raises(ConfigError, match="missing key 'secure'"):
        load_settings(rc)


def test_no_test_only_keys_ship_in_the_app_config():
    assert not [k for k in app_run_config() if k.startswith("test")]


def test_settings_for_an_in_process_run(tiny_polymnist, tiny_config):
    cfg = tiny_config(tiny_polymnist)
    s = settings_for(cfg, exchange="round", local_epochs=2)
    assert s.experiment is cfg and s.modalities == ["m0", "m1", "m2"]
    assert s.plan_args().plan(192)[0].epochs == (0, 1)


def test_site_dirs_are_joined_by_sample_id_under_their_common_parent():
    from mmvm.federation.site_dirs import joined_experiment

    rc = app_run_config(site_dirs=" /labs/rat1 , /labs/sub/rat2,", num_sites=2)
    s = load_settings(rc)
    assert s.site_dirs == ("/labs/rat1", "/labs/sub/rat2")
    assert s.experiment.data.folders == ()  # the sites train on their own; the server
    joined = joined_experiment(s.experiment, s.site_dirs)  # evaluates on them joined
    assert joined.data.root == "/labs" and joined.data.folders == ("rat1", "sub/rat2")
    assert load_settings(app_run_config()).site_dirs == ()  # the embedded look-alike
    # a deployment site reads its node config's data, never site-dirs, and a bad one
    # does not make it refuse the run
    assert load_settings({**rc, "site-dirs": "relative/x"}, app_only=True).site_dirs == ()


@pytest.mark.parametrize("word, flag", [("on", True), ("OFF", False), (" yes ", True),
                                        ("0", False), (True, True)])
def test_a_boolean_is_read_as_a_node_config_reads_it(word, flag):
    from mmvm.federation.node_config import load_policy

    assert load_settings(app_run_config(float16=word)).float16 is flag
    assert load_policy({"data": "/d", "pictures": word}, "a").pictures is flag
