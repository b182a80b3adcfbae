"""`mmvm run` checks the run config before Flower starts (mmvm/cli/run_config.py): an
unknown key, a value the app refuses, or an eval-data folder that is not there fails
at once with the key named, and no SuperLink or Ray is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmvm.cli.run_config import (
    app_defaults,
    check_run_config,
    is_mmvm_app,
    parse_overrides,
    with_site_count,
)
from mmvm.config import ConfigError
from mmvm.federation.eval_data import eval_data_problem
from mmvm.federation.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text", [
    "num-sites=4 exchange='step' float16=false", "set=\"train.epochs=2;train.lr=0.01\"",
    "delta-tol=0.5 n-train=300", "a.b=1 c='x y'", "eval-data='' resume=''",
])
def test_overrides_equal_flwrs_own_reading(text):
    from flwr.common.config import parse_config_args

    assert parse_overrides(text) == parse_config_args([text])


def test_overrides_are_read_as_flwr_reads_them(tmp_path):
    got = parse_overrides("num-sites=4 exchange='step' float16=false "
                          "set=\"train.epochs=2;train.lr=0.01\" delta-tol=0.5")
    assert got == {"num-sites": 4, "exchange": "step", "float16": False,
                   "set": "train.epochs=2;train.lr=0.01", "delta-tol": 0.5}
    (tmp_path / "rc.toml").write_text("num-sites = 5\nlayout = 'hybrid'\n")
    assert parse_overrides(str(tmp_path / "rc.toml")) == {"num-sites": 5, "layout": "hybrid"}
    assert parse_overrides("  ") == {}


@pytest.mark.parametrize("text, match", [
    ("num-site=3", r"unknown key 'num-site'; did you mean 'num-sites'\?"),
    ("exchang='step'", r"unknown key 'exchang'; did you mean 'exchange'\?"),
    ("zzz=1", r"unknown key 'zzz' \(the keys are those of \[tool.flwr.app.config\]"),
    # every typo at once, not one per try
    ("num-site=3 exchang='step' zzz=1", r"3 unknown keys: 'num-site'; did you mean "
     r"'num-sites'\? \| 'exchang'; did you mean 'exchange'\? \| 'zzz' \(the keys"),
    ("exchange=step", r"exchange=step: exchange takes a string in quotes, e.g. "
                      r"exchange='round' \(the app's default\)"),
    # the hint to quote a value was wrong for a number (a walkthrough)
    ("n-train=abc", r"n-train=abc: n-train takes a whole number, e.g. n-train=3000 "
                    r"\(the app's default\)$"),  # one example, not two
    ("secure=yes", r"secure=yes: secure takes true or false, e.g. secure=false "),
    ("num-sites=3 exchange=step", r": exchange=step: exchange takes a string"),  # its word
    ("a..b=1", r"a..b=1: 'a..b' is not a key"),
    ("num-sites=3 num-sites=4", r"num-sites is given 2 times; give each key once"),
    ("num-sites=3 oops", r"'oops' is not key=value"),
    ("num-sites = 3", r"'num-sites' is not key=value; write key=value without spaces "),
    ("exchange='stp'", r"exchange = 'stp'; choose one of"),
    ("set='train.epoch=1'", r"override 'train.epoch=1': unknown key 'train.epoch'; did "
                            r"you mean 'train.epochs'\?"),
    ("config='configs/polymnist-cpu.toml'", r"polymnist-cpu.toml does not exist"),
    ("eval-data='/nowhere'", r"eval-data = '/nowhere': no /nowhere/train.parquet"),
    ("num-sites=2", r"layout = 'vertical' of the config's 3 modalities has 3 sites but "
                    r"num-sites = 2: set num-sites=3"),
    ("layout='horizontal' shards=1", r"layout = 'horizontal' needs shards >= 2"),
    # Flower started and every site failed describe with a traceback (a walkthrough)
    ("set='model.method=poe'", r"polymnist_cpu.toml: model.method = 'poe' cannot "
                               r"train federated: .*use one of \['independent', 'mmvm'\] "
                               r"\(the aggregated baselines train centrally"),
    ("n-train=-5", r"n-train = -5 and n-test = 1000 \(the simulation's default data\) "
                   r"must be >= 1"),
    ("n-train=900000000000", r"run config: PolyMNIST look-alike \(train\): "
                             r"900,000,000,000 samples needs .* TiB of memory, more than"),
    # a simulation makes only the look-alikes' files; other sites are SuperNodes
    ("config='configs/cub.toml'", r"no embedded default data for modalities \['image', "
                                  r"'text'\].*site-dirs=.*deploy/README.md section 5"),
    # or the user's own site folders, each with the files a preparer writes
    ("num-sites=1 site-dirs='/nowhere/site-a'", r"site-dirs: /nowhere/site-a does not "
                                                r"exist \(a site folder holds"),
    # the local SuperLink's folder is not the user's: results would land elsewhere
    ("out-dir='rel/out'", r"out-dir = 'rel/out' is relative, and the local SuperLink "
                          r"reads it from the folder it was started in.*e.g. /"),
    ("state-dir='st'", r"state-dir = 'st' is relative"),
    # and an empty or blank one is no folder at all (Path('') is the current one)
    ("state-dir=''", r"^run config: state-dir = '' names no folder: the sites' model and "
                     r"optimizer state would be written into the current folder"),
    ("data-dir='  '", r"^run config: data-dir = '  ' names no folder"),
    ("keys-dir=' '", r"^run config: keys-dir = ' ' is blank; give a folder, or '' for "
                     r"no keys"),
])
def test_a_bad_run_config_is_named_before_anything_starts(text, match):
    with pytest.raises(ConfigError, match=match):
        check_run_config(ROOT, text, local=True)


def test_a_good_run_config_is_the_apps_defaults_with_the_overrides():
    rc = check_run_config(ROOT, "num-sites=3 exchange='step'", local=True)
    assert rc == {**app_defaults(ROOT), "num-sites": 3, "exchange": "step"}
    # a simulation SuperLink elsewhere reads its config files and eval-data on its
    # own machine
    check_run_config(ROOT, "eval-data='/nowhere' config='/srv/x.toml'", local=False)
    with pytest.raises(ConfigError, match="unknown key 'a.b'"):  # keys are checked there too
        check_run_config(ROOT, "a.b=1", local=False)


@pytest.mark.parametrize("text, match", [
    # every deployed site refused it at the first message, after the run was submitted
    (f"config='{ROOT / 'configs/hippocampus.toml'}'",
     r"a site reads only the app's own config files \(a path inside the app"),
    ("config='configs/hipocampus.toml'", "is not a file of the app"),
    ("secure=true quantize='int8'", "quantize"),
    ("set='train.epochs=zero'", "epochs"),
    ("exchange='sometimes'", "exchange"),
    ("set='model.method=mopoe'", "'mopoe' cannot train federated"),
])
def test_a_deployments_run_config_values_are_checked_before_it_is_submitted(text, match):
    with pytest.raises(ConfigError, match=match):
        check_run_config(ROOT, text, local=False, deployment=True)
    check_run_config(ROOT, "config='configs/hippocampus.toml' exchange='step'", local=False,
                     deployment=True)


def test_a_deployments_config_outside_the_app_is_refused_as_the_sites_would(tmp_path):
    """A deployed site reads only files inside the app: `../x.toml` is a file next to
    the app here, and every site refused it at the first message."""
    from mmvm.cli.run_values import check_remote_values

    (tmp_path / "app").mkdir()
    (tmp_path / "x.toml").write_text((ROOT / "configs/hippocampus.toml").read_text())
    rc = {**app_defaults(ROOT), "config": "../x.toml"}
    with pytest.raises(ConfigError, match="a site reads only the app's own config files"):
        check_remote_values(tmp_path / "app", rc, deployment=True)
    check_remote_values(tmp_path / "app", rc, deployment=False)  # a simulation's may


def test_eval_data_needs_the_configs_train_and_test_files(tiny_polymnist, tmp_path):
    cfg = load_settings({**app_defaults(ROOT), "config": "configs/polymnist_cpu.toml"}
                        ).experiment
    assert eval_data_problem(cfg, tiny_polymnist) is None
    (tmp_path / "train.parquet").write_bytes((tiny_polymnist / "train.parquet").read_bytes())
    assert "no " + str(tmp_path / "test.parquet") in eval_data_problem(cfg, tmp_path)


def test_mmvm_run_exits_2_with_one_line_and_starts_no_flower(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--run-config",
                          "num-site=3"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"mmvm run: --run-config: unknown key 'num-site'; did you mean 'num-sites'? (the "
        f"keys are those of [tool.flwr.app.config] in {ROOT / 'pyproject.toml'})"]
    assert "flwr" not in res.stdout.lower()


def test_every_run_config_flag_counts_as_flwr_runs_do(tmp_path):
    """``--run-config`` twice: argparse kept the last one and the first was dropped
    without a word (a `config=` then `num-sites=5` ran PolyMNIST)."""
    for flags in (["num-site=3", "exchange='step'"], ["exchange='step'", "num-site=3"]):
        res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run",
                              *[a for f in flags for a in ("--run-config", f)]],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "unknown key 'num-site'" in res.stderr, res.stderr
    from mmvm.cli.run import one_run_config

    assert one_run_config(["a=1", "b='x y'"]) == "a=1 b='x y'"
    with pytest.raises(ConfigError, match="a .toml run config is given alone"):
        one_run_config(["run.toml", "a=1"])


def test_mmvm_run_refuses_an_empty_out_dir_before_flower_and_writes_nothing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--run-config",
                          "out-dir=''"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "mmvm run: run config: out-dir = '' names no folder: results "
        "(<out-dir>/run-<id>/) would be written into the current folder of whichever "
        "process runs; give a folder, e.g. out-dir='~/.mmvm/runs'"]
    assert list(tmp_path.iterdir()) == []


def test_a_copy_of_the_app_is_checked_with_its_own_files(tmp_path, monkeypatch):
    """``mmvm run --app COPY``: a copy of this app (same ServerApp and ClientApp) gets
    the same checks, its relative config read from the copy, as its ServerApp will."""
    app = tmp_path / "app"
    (app / "configs").mkdir(parents=True)
    (app / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    (app / "configs" / "mine.toml").write_bytes(
        (ROOT / "configs" / "polymnist_cpu.toml").read_bytes())  # only in the copy
    check_run_config(app, "config='configs/mine.toml'", local=True)
    with pytest.raises(ConfigError, match="has 3 sites but num-sites = 2"):
        check_run_config(app, "config='configs/mine.toml' num-sites=2", local=True)
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--app", str(app),
                          "--run-config", "num-site=3"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "did you mean 'num-sites'?" in res.stderr, res.stderr
    assert str(app / "pyproject.toml") in res.stderr
    other = tmp_path / "other"  # another Flower app: its own keys, not checked here
    other.mkdir()
    (other / "pyproject.toml").write_text(
        '[tool.flwr.app.components]\nserverapp = "x:app"\nclientapp = "y:app"\n')
    assert is_mmvm_app(app) and not is_mmvm_app(other) and is_mmvm_app(ROOT)
    # without --app, in the copy: the copy, as `flwr run .` takes it (a hospital ran
    # mmvm run in its own copy and got the installed checkout's configs)
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--run-config",
                          "num-site=3"], cwd=app, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and str(app / "pyproject.toml") in res.stderr, res.stderr
    from mmvm.cli.run_config import default_app

    for where, want in ((app, app), (other, ROOT), (tmp_path, ROOT)):
        monkeypatch.chdir(where)
        assert default_app().resolve() == want.resolve()


def test_without_connection_it_is_a_local_simulation_never_a_superlink(tmp_path,
                                                                      monkeypatch):
    """flwr's default connection may be a real federation (deploy/README section 2
    sets one): `mmvm run` without --connection must not send a run there."""
    from mmvm.cli.run import local_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    assert local_connection() is None  # no config yet: flwr's own default is local
    conf = tmp_path / "config.toml"
    link = '[superlink.mmvm]\naddress = "127.0.0.1:9093"\n'
    conf.write_text('[superlink]\ndefault = "local"\n[superlink.local]\n'
                    'address = ":local:"\n' + link)
    assert local_connection() is None
    conf.write_text('[superlink]\ndefault = "mmvm"\n[superlink.sim]\n'
                    'address = ":local:"\n' + link)
    assert local_connection() == "sim"
    conf.write_text('[superlink]\ndefault = "mmvm"\n' + link)
    with pytest.raises(ConfigError, match=r"default connection 'mmvm' .* is the SuperLink "
                                          r"at 127.0.0.1:9093, not a local simulation: "
                                          r"to run there, say so \(--connection mmvm, "
                                          r"and --deployment if its SuperNodes are real "
                                          r"sites"):
        local_connection()
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FLWR_HOME": str(tmp_path)})
    assert res.returncode == 2 and "not a local simulation" in res.stderr, res.stderr
    assert "Using SuperLink" not in res.stdout + res.stderr


def test_local_connection_knows_flwrs_local_forms(tmp_path, monkeypatch):
    from mmvm.cli.run import _no_federations, local_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    conf = tmp_path / "config.toml"
    conf.write_text('[superlink]\ndefault = "mem"\n[superlink.mem]\n'
                    'address = ":local-in-memory:"\n')
    assert local_connection() is None
    conf.write_text('[superlink]\ndefault = "old"\n[superlink.old]\n'
                    'options.num-supernodes = 3\n')
    assert local_connection() is None  # the older form: options, no address
    conf.write_text('[superlink]\ndefault = "gone"\n')
    with pytest.raises(ConfigError, match="'gone' is not defined"):
        local_connection()
    app = tmp_path / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text('[tool.flwr.federations]\ndefault = "remote"\n')
    with pytest.raises(ConfigError, match=r"\[tool.flwr.federations\] section"):
        _no_federations(app)
    _no_federations(ROOT)  # this app has none


def test_a_named_local_connection_gets_a_simulations_checks(tmp_path, monkeypatch):
    """`--connection local` is the simulation that `mmvm run` alone starts: its
    relative out-dir is refused before Flower starts, and --deployment on it is a
    contradiction, not a run with Flower's default number of SuperNodes."""
    from mmvm.cli.run import named_is_simulation

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n[superlink.local]\naddress = ":local:"\n'
        '[superlink.remote]\naddress = "10.0.0.1:9093"\n')
    assert named_is_simulation("local", deployment=False)
    assert not named_is_simulation("remote", deployment=True)
    assert not named_is_simulation("undefined", deployment=False)  # flwr says so
    with pytest.raises(ConfigError, match="--connection local is a local simulation"):
        named_is_simulation("local", deployment=True)
    env = {**os.environ, "FLWR_HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "mmvm.cli", "run", "--connection", "local",
                          "--run-config", "out-dir='rel/out'"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "out-dir = 'rel/out' is relative" in res.stderr, \
        res.stderr
    assert not (tmp_path / "rel").exists()


def test_num_sites_follows_the_configs_layout_unless_given(capsys):
    """A walkthrough's `config='configs/hippocampus.toml'` was refused for num-sites=3
    (the app's default) beside the rats' 5 sites: mmvm run now counts the layout's
    sites, says so, and keeps a num-sites given (checked as before)."""

    defaults, hc = app_defaults(ROOT), "config='configs/hippocampus.toml'"
    assert with_site_count(hc, defaults, ROOT) == hc + " num-sites=5"
    assert "mmvm run: num-sites=5, the sites of its layout" in capsys.readouterr().err
    check_run_config(ROOT, hc + " num-sites=5", local=True)  # what it then checks
    assert with_site_count(hc + " num-sites=2", defaults, ROOT) == hc + " num-sites=2"
    hybrid = "layout='hybrid' shards=2"  # the app's PolyMNIST in 2 shards: 4 sites
    assert with_site_count(hybrid, defaults, ROOT) == hybrid + " num-sites=4"
    assert with_site_count("exchange='step'", defaults, ROOT) == "exchange='step'"
    assert capsys.readouterr().err.count("mmvm run: num-sites=") == 1  # the hybrid's
    gone = "config='configs/nowhere.toml'"  # the checks say what is wrong with it
    assert with_site_count(gone, defaults, ROOT) == gone
