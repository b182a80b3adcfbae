"""`mmvm run` hands Flower a staged copy of the app: Flower's own FAB of the copy is the
FAB of the app, byte for byte, while the directories Flower never packages (the
project's .venv, what .gitignore ignores) are not listed at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from mmvm.cli import main
from mmvm.cli.app_stage import app_files, staged_app

ROOT = Path(__file__).resolve().parents[2]
PRUNED = (".venv/", "data/", "runs/", "pkg/__pycache__/")


def _app(tmp_path: Path, gitignore: str | None = None) -> Path:
    """An app with this project's pyproject, its source, and the clutter of a
    working project: a virtual environment, git, data, runs, byte code, links."""
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "pyproject.toml", app)
    (app / ".gitignore").write_text(gitignore or (ROOT / ".gitignore").read_text())
    files = {"pkg/mod.py": "x = 1\n", "pkg/conf.toml": "a = 1\n", "README.md": "# app\n",
             "pkg/picture.png": "not packaged\n",
             ".venv/lib/site.py": "venv\n", ".venv/lib/meta.json": "{}\n",
             ".git/info.json": "{}\n", "sub/.venv/kept.py": "Flower packages it\n",
             "data/secret.json": "{}\n",
             "runs/r1/metrics.json": "{}\n", "pkg/__pycache__/mod.py": "cache\n",
             "deep/er/still/mod.py": "y = 2\n"}
    for rel, text in files.items():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        (app / rel).write_text(text)
    (app / "link.py").symlink_to(app / "pkg/mod.py")
    (app / "linked_dir").symlink_to(app / "pkg", target_is_directory=True)
    return app


def test_flowers_fab_of_the_staged_app_is_the_fab_of_the_app(tmp_path):
    app = _app(tmp_path)
    with staged_app(app) as stage:
        assert stage != app and (stage / "pyproject.toml").is_file()
        staged = build_fab_from_disk(stage)
    assert staged == build_fab_from_disk(app)
    assert not (stage.parent).exists()  # removed when the block ends


def test_ignored_directories_and_links_are_not_listed(tmp_path):
    files = app_files(_app(tmp_path))
    assert {"pyproject.toml", ".gitignore", "pkg/mod.py", "pkg/picture.png",
            "deep/er/still/mod.py"} <= set(files)
    assert not [f for f in files if f.startswith(PRUNED)], files
    assert ".git/info.json" in files  # Flower packages it: so does the copy
    assert "link.py" not in files and not [f for f in files if f.startswith("linked_dir")]


def test_a_negated_pattern_keeps_every_directory_and_the_same_fab(tmp_path):
    """git cannot bring a file back from an ignored directory, a pattern matcher can:
    with a '!' pattern nothing is pruned by .gitignore, and the FAB stays Flower's."""
    app = _app(tmp_path, gitignore="/data/\n!/data/secret.json\n")
    files = app_files(app)
    assert "data/secret.json" in files and "runs/r1/metrics.json" in files
    assert not [f for f in files if f.startswith(".venv/")]  # Flower's rule: the top's
    assert "sub/.venv/kept.py" in files  # ... and only the top's
    with staged_app(app) as stage:
        assert build_fab_from_disk(stage) == build_fab_from_disk(app)


def test_files_flower_never_packs_are_not_staged_and_a_vanished_one_is_no_error(
        tmp_path, monkeypatch):
    """While git ran in the checkout, `.git/index.lock` was listed, then gone when it
    was linked: mmvm run failed (5 of 15 times with git busy). Only what Flower could
    pack is staged now, and a file gone since the listing is left out."""
    import mmvm.cli.app_stage as app_stage

    app = _app(tmp_path)
    (app / ".git").mkdir(exist_ok=True)
    (app / ".git" / "index.lock").write_bytes(b"lock")
    listed = app_stage.app_files(app)
    assert ".git/index.lock" in listed and "pkg/picture.png" in listed
    monkeypatch.setattr(app_stage, "app_files", lambda a: listed + ["pkg/gone.py"])
    with staged_app(app) as stage:
        assert not (stage / ".git" / "index.lock").exists()
        assert not (stage / "pkg" / "picture.png").exists()
        assert (stage / ".gitignore").is_file() and (stage / "pkg" / "mod.py").is_file()
        assert build_fab_from_disk(stage) == build_fab_from_disk(app)


def test_this_project_stages_its_app_without_its_environment():
    files = set(app_files(ROOT))
    assert {"pyproject.toml", "client/app.py", "server/app.py", "mmvm/model.py",
            "configs/hippocampus.toml"} <= files
    assert not [f for f in files if f.startswith(PRUNED)]


def test_mmvm_run_without_an_app_says_so_and_starts_nothing(tmp_path, capsys):
    assert main(["run", "--app", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no Flower app" in err and str(tmp_path) in err


@pytest.mark.parametrize("pyproject, said", [
    ('[project]\nname = "other"\n', "has no [tool.flwr.app.config] table: --app"),
    ('[tool.flwr.app.config]\nrounds = 3\n', "the app's run config has no num-sites"),
    ("[tool.flwr\nbroken", "pyproject.toml: not valid TOML"),
])
def test_an_app_that_is_not_mmvm_is_one_line_not_a_traceback(tmp_path, capsys, pyproject,
                                                              said):
    (tmp_path / "pyproject.toml").write_text(pyproject)
    assert main(["run", "--app", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1 and "Traceback" not in err


def test_the_staged_app_is_a_copy_not_the_app(tmp_path):
    """The stage is a directory of its own: replacing a file there (as an editor or a
    tool that writes a new file and renames it does) leaves the app's file as it was,
    and the stage is gone afterwards. (A write into a hard-linked file in place would
    reach the app's file, as it does when Flower is given the app itself.)"""
    app = _app(tmp_path)
    before = (app / "pyproject.toml").read_bytes()
    with staged_app(app) as stage:
        (stage / "pyproject.toml").unlink()  # a hard link: the original stays
        (stage / "pyproject.toml").write_text("changed\n")
    assert (app / "pyproject.toml").read_bytes() == before
    assert not stage.exists()


def test_an_app_whose_bundle_would_carry_a_sites_private_keys_is_refused(tmp_path):
    """Flower packs every *.json file .gitignore does not ignore into the FAB that
    the SuperLink and every SuperNode receive: a test bed's keys made in the project
    (make_keys --out keys) went with it. This project's .gitignore ignores keys/; a
    private key file elsewhere, whatever its name, stops the run before Flower."""
    from mmvm.config import ConfigError
    from mmvm.secure.keys import SiteKeys

    app = _app(tmp_path)
    SiteKeys.generate("a").save(app / "keys" / "sites" / "a" / "site_keys.json")
    (app / "keys" / "public_keys.json").write_text("{}\n")
    with staged_app(app) as stage:  # keys/ is ignored: not in the bundle
        assert not (stage / "keys").exists()
    SiteKeys.generate("b").save(app / "secrets" / "hospital-b.json")
    with pytest.raises(ConfigError, match=r"secrets/hospital-b.json holds a site's secrets "
                                          r"\(its private keys or secure session state\), "
                                          r"and flwr would pack it"):
        with staged_app(app):
            pass
    (app / ".gitignore").write_text((app / ".gitignore").read_text() + "secrets/\n")
    with staged_app(app) as stage:
        assert stage.is_dir()
    # what Flower packs is Flower's to say: its own matcher keeps this file, where
    # git's reading of the same .gitignore would ignore it
    (app / ".gitignore").write_text("*.json\n!sites/\nsecrets/\n")
    with pytest.raises(ConfigError, match=r"keys/sites/a/site_keys.json holds"):
        with staged_app(app):
            pass
    (app / ".gitignore").write_text("keys/\nsecrets/\n")
    # a secure run's session state, its state folder made in the project: the group
    # id key, the PSI scalar; and a key file padded past any size a check might skip
    state = app / "st" / "site-a" / "run-7" / "site-a.secure.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"mode": "psi", "scalar": "u2JZ", "order": [0, 1]}')
    with pytest.raises(ConfigError, match=r"st/site-a/run-7/site-a.secure.json holds"):
        with staged_app(app):
            pass
    state.unlink()
    padded = app / "backup.json"
    key = SiteKeys.generate("c").to_dict()
    padded.write_text(json.dumps({**key, "note": "x" * 100_000}))
    with pytest.raises(ConfigError, match=r"backup.json holds"):
        with staged_app(app):
            pass


@pytest.mark.parametrize("name, text", [
    ("notes/keys.yaml", "x25519_private: {kx}\nsite: b\n"),
    ("notes/setup.md", "| field | value |\n|---|---|\n| `ed25519_private` | `{sign}` |\n"),
    ("conf/site.toml", 'x25519_private = "{kx}"\n'),
    ("log/session.jsonl", '{{"run": 1}}\n{{"mode": "psi", "scalar": "{kx}"}}\n'),
    ("pkg/constants.py", 'GROUP = dict(group_key="{kx}")\n'),
])
def test_a_secret_copied_into_any_packed_text_file_is_refused(tmp_path, name, text):
    """Flower packs *.py, *.toml, *.md, *.yaml, *.yml, *.json and *.jsonl: a private
    key or session secret pasted into any of them goes to every SuperNode."""
    from mmvm.config import ConfigError
    from mmvm.secure.keys import SiteKeys

    app = _app(tmp_path)
    key = SiteKeys.generate("b").to_dict()
    (app / name).parent.mkdir(parents=True, exist_ok=True)
    (app / name).write_text(text.format(kx=key["x25519_private"],
                                        sign=key["ed25519_private"]))
    with pytest.raises(ConfigError, match=f"{name} holds a site's secrets"):
        with staged_app(app):
            pass


def test_the_names_of_secrets_in_code_and_docs_are_not_secrets(tmp_path):
    """This project's own source and docs name every secret field; a value of a key's
    length must follow the name for a file to be refused."""
    app = _app(tmp_path)
    (app / "pkg/keys.py").write_text('d = {"x25519_private": _b64(kx), "scalar": s}\n')
    (app / "doc.md").write_text("`group_key`: the run's group id key (32 bytes)\n")
    with staged_app(app) as stage:
        assert (stage / "pkg/keys.py").is_file() and (stage / "doc.md").is_file()


def test_a_flower_home_inside_the_app_is_refused_before_it_is_packed(tmp_path,
                                                                     monkeypatch):
    """FLWR_HOME in the app folder: each run's bundle carried Flower's config and
    every app it had installed, until Flower refused the third ('maximum directory
    depth of 10')."""
    from mmvm.config import ConfigError

    app = _app(tmp_path)
    home = app / "flwrhome"
    (home / "apps" / "x").mkdir(parents=True)
    (home / "config.toml").write_text("[superlink]\n")
    (home / "apps" / "x" / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setenv("FLWR_HOME", str(home))
    with pytest.raises(ConfigError, match=r"FLWR_HOME=.*flwrhome is inside the app folder"
                                          r".*add '/flwrhome/' to its .gitignore"):
        with staged_app(app):
            pass
    (app / ".gitignore").write_text((app / ".gitignore").read_text() + "/flwrhome/\n")
    with staged_app(app) as stage:
        assert not (stage / "flwrhome").exists()
    monkeypatch.setenv("FLWR_HOME", str(app))  # the app folder itself
    with pytest.raises(ConfigError, match=r"FLWR_HOME=.* is the app folder"):
        with staged_app(app):
            pass
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "elsewhere"))
    with staged_app(app) as stage:
        assert stage.is_dir()
