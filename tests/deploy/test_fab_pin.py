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


def test_pin_refuses_at_install_so_nothing_of_the_bundle_is_installed():
    installed = []
    fab = SimpleNamespace(hash_str=hashlib.sha256(b"evil").hexdigest(), content=b"evil")
    runner = SimpleNamespace(pull_task_input=lambda client: ("msg", "ctx", "run", fab),
                             install_from_fab=lambda content, **kw: installed.append(
                                 content))
    pin(runner, frozenset({hashlib.sha256(b"good").hexdigest()}))
    assert runner.pull_task_input("client")[3] is fab
    with pytest.raises(FabRefused):
        runner.install_from_fab(fab.content, skip_prompt=True)
    assert installed == []
    fab.hash_str, fab.content = hashlib.sha256(b"good").hexdigest(), b"good"
    runner.pull_task_input("client")
    runner.install_from_fab(b"good", skip_prompt=True)
    assert installed == [b"good"]


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
