"""A site pins the app bundles it runs (``deploy.fab_pin``): the hash, the check, the
wrapping of Flower's ClientApp runner. The real refusal, with a SuperLink, a
SuperNode and the site's fork-server SuperExec: tests/deploy/test_deployment.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.fab_pin import FabRefused, allowed_hashes, check_fab, fab_sha256, pin

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_the_hash_is_that_of_the_fab_flwr_build_writes(tmp_path):
    """What a site computes from the reviewed source is what ``flwr run`` uploads:
    Flower's build of the same folder, byte for byte."""
    res = subprocess.run([str(BIN / "flwr"), "build", "--app", str(ROOT)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (fab,) = tmp_path.glob("*.fab")
    assert fab_sha256(ROOT) == hashlib.sha256(fab.read_bytes()).hexdigest()
    assert fab.name.split(".")[-2] in fab_sha256(ROOT)  # Flower names it by its hash


def test_only_an_allowed_bundle_labelled_as_itself_passes():
    good, evil = b"reviewed release", b"release with two lines deleted"
    allowed = frozenset({hashlib.sha256(good).hexdigest()})
    assert check_fab(good, hashlib.sha256(good).hexdigest(), allowed) in allowed
    with pytest.raises(FabRefused, match=r"runs only the app bundles it reviewed "
                                         r"\(--allow-fab [0-9a-f]{16}\); the run's is "
                                         r"[0-9a-f]{16}: refused before any of its code"):
        check_fab(evil, hashlib.sha256(evil).hexdigest(), allowed)
    # the reviewed bytes under another bundle's name: Flower would load the app from
    # the folder that name points to (an earlier run's, installed before the pin)
    with pytest.raises(FabRefused, match=r"came labelled"):
        check_fab(good, hashlib.sha256(evil).hexdigest(), allowed)


def _runner(fab, version: str = "0.1.0"):
    """Flower's ClientApp runner module, its pull stubbed to hand out ``fab`` (the
    install and the loader are Flower's own)."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn

    run = SimpleNamespace(fab_id="mmvm/mmvm", fab_version=version)
    return run, SimpleNamespace(pull_task_input=lambda client: ("msg", "ctx", run, fab),
                                install_from_fab=install_from_fab,
                                get_load_client_app_fn=get_load_client_app_fn)


def _fab(tmp_path, clientapp: str) -> bytes:
    """A built app bundle whose ClientApp module prints ``clientapp`` when imported."""
    from flwr.cli.build import build_fab_from_disk

    app = tmp_path / f"app-{abs(hash(clientapp))}"
    (app / "pinned_pkg").mkdir(parents=True)
    (app / "pinned_pkg" / "__init__.py").write_text("")
    (app / "pinned_pkg" / "app.py").write_text(
        f"from flwr.clientapp import ClientApp\nprint({clientapp!r})\napp = ClientApp()\n")
    (app / "pyproject.toml").write_text(
        '[project]\nname = "mmvm"\nversion = "0.1.0"\n[tool.flwr.app]\npublisher = "mmvm"\n'
        '[tool.flwr.app.components]\nserverapp = "pinned_pkg.app:app"\n'
        'clientapp = "pinned_pkg.app:app"\n[tool.flwr.app.config]\n')
    return build_fab_from_disk(app)


def test_pin_refuses_before_install_and_loads_only_what_it_checked(tmp_path, monkeypatch,
                                                                   capfd):
    """The check runs at install (nothing of a refused bundle is extracted); the
    checked bytes go into a new private folder, and the ClientApp is loaded from it
    alone: a server-chosen version naming another folder (``/../``) is refused, and
    a folder of the bundle's name planted in Flower's apps folder is never read."""
    import sys as _sys

    from flwr.supercore.fab import Fab

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the private copies go
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    good, evil = _fab(tmp_path, "GOOD app"), _fab(tmp_path, "EVIL app")
    h = hashlib.sha256(good).hexdigest()
    allowed = frozenset({h})
    run, runner = _runner(Fab(hashlib.sha256(evil).hexdigest(), evil, {}))
    pin(runner, allowed)
    runner.pull_task_input("client")
    with pytest.raises(FabRefused):
        runner.install_from_fab(evil, skip_prompt=True)
    with pytest.raises(FabRefused, match="no checked app bundle"):
        runner.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    # Flower's own install of the evil bytes under the good bundle's folder name
    from flwr.cli.install import install_from_fab

    planted = tmp_path / "flwr-home" / "apps" / f"mmvm.mmvm.0.1.0.{h[:8]}"
    install_from_fab(evil, install_dir=planted, skip_prompt=True)
    for version in ("0.1.0", f"0.1.0.{h[:8]}/../../../elsewhere/x"):
        _sys.modules.pop("pinned_pkg.app", None), _sys.modules.pop("pinned_pkg", None)
        run, runner = _runner(Fab(h, good, {}), version)
        removes = [pin(runner, allowed)]
        _, _, run, fab = runner.pull_task_input("client")
        where = runner.install_from_fab(fab.content, skip_prompt=True)
        assert where.is_dir() and not str(where).startswith(str(tmp_path / "flwr-home"))
        load = runner.get_load_client_app_fn(default_app_ref="", app_path=None,
                                             multi_app=True)
        if version == "0.1.0":
            load(run.fab_id, run.fab_version, fab.hash_str)
            assert "GOOD app" in capfd.readouterr().out
        else:
            from flwr.clientapp.client_app import LoadClientAppError

            with pytest.raises(LoadClientAppError, match="version mismatch"):
                load(run.fab_id, run.fab_version, fab.hash_str)
        assert list((tmp_path / "tmp").iterdir())  # the task's private copy ...
        removes[0]()
        assert not list((tmp_path / "tmp").iterdir())  # ... gone when it ends
    assert "EVIL app" not in capfd.readouterr().out


@pytest.mark.parametrize("value", ["xyz", "ab" * 31, "g" * 64])
def test_a_value_that_is_no_sha256_is_refused(value):
    with pytest.raises(ValueError, match=r"not a SHA-256 \(64 hex digits"):
        allowed_hashes([value])
    assert allowed_hashes(["AB" * 32]) == {"ab" * 32}


def test_the_superexec_exits_on_a_bad_allow_fab_before_it_starts():
    res = subprocess.run([sys.executable, "-m", "deploy.superexec_fork", "--insecure",
                          "--allow-fab", "xyz"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    assert "superexec_fork: --allow-fab 'xyz': not a SHA-256" in res.stderr, res.stderr


def test_the_command_line_prints_the_hash_of_each_app(tmp_path, capsys):
    from deploy.fab_pin import main

    assert main([str(ROOT)]) == 0
    assert capsys.readouterr().out == f"{fab_sha256(ROOT)}  {ROOT}\n"
    assert main([str(tmp_path)]) == 2
    assert "no pyproject.toml (not an app folder)" in capsys.readouterr().err
    # a folder whose bundle would carry a site's private keys is no release to pin
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "keys.json").write_text('{"x25519_private": "' + "A" * 43 + '="}')
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"deploy.fab_pin: {tmp_path}: ") and "secrets" in err, err
