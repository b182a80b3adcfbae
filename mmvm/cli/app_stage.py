"""The app's own files, staged in a directory of their own for ``flwr run`` to package.

``flwr run DIR`` builds the app's FAB by listing *every* file under DIR, resolving
each path, and only then filtering them (Flower 1.41: ``flwr.cli.utils.collect_files``
before ``filter_paths_for_publish``). With the virtual environment that the README
creates in the project (``.venv``: ~44,000 files with CPU torch, more with CUDA) the
listing costs ~8 s of CPU at the start of every run, before any site starts.

:func:`staged_app` links (or copies) the app into a temporary directory without the
directories that Flower would leave out anyway: those the app's ``.gitignore`` ignores,
and those Flower's own rules exclude (``.venv`` and ``.flwr`` at the top, ``__pycache__``
anywhere), and of the rest only the files Flower could pack (:func:`packable`). Flower
lists a few hundred files and applies its own rules to them, so the FAB is the one it
would have built from the app, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pathspec

# Flower 1.41 excludes ".venv/**", ".flwr/**" (at the top) and "**/__pycache__/**"
TOP_SKIP = frozenset({".venv", ".flwr"})
SKIP = frozenset({"__pycache__"})


@contextmanager
def staged_app(app: Path) -> Iterator[Path]:
    """A temporary copy of the app ``app`` without its ignored directories; removed
    when the block ends. Files are hard links where the file system allows, but
    ``pyproject.toml``, which ``flwr run`` may rewrite, is a copy."""
    app = Path(app).resolve()
    if not (app / "pyproject.toml").is_file():
        raise FileNotFoundError(f"no Flower app at {app}: it has no pyproject.toml")
    files = app_files(app)
    check_no_secrets(app, files)
    check_flower_home(app, packable(files))
    with tempfile.TemporaryDirectory(prefix="mmvm-app-") as tmp:
        stage = Path(tmp) / app.name
        for rel in packable(files):
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                _stage_file(app / rel, dest, copy=rel == "pyproject.toml")
            except FileNotFoundError:  # gone since the listing (an editor's temporary
                continue               # file): not part of the app any more
        yield stage


def _stage_file(src: Path, dest: Path, copy: bool) -> None:
    """A hard link where the file system allows; ``copy``: always a copy
    (``pyproject.toml``, which flwr may rewrite: its federations section)."""
    try:
        if copy:
            raise OSError
        os.link(src, dest)
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dest)


def packable(files: list[str]) -> list[str]:
    """The files Flower could pack (its built-in include patterns: ``*.py``,
    ``*.toml``, ``*.md``, ...), the app's ``pyproject.toml`` and every
    ``.gitignore`` (which Flower reads to leave files out): the rest of the app
    (``.git``, data, images) Flower drops anyway, and a file that vanishes while it is
    staged (``.git/index.lock`` while git runs in the checkout) failed the run."""
    from flwr.cli.utils import build_pathspec
    from flwr.common.constant import FAB_INCLUDE_PATTERNS

    spec = build_pathspec(FAB_INCLUDE_PATTERNS)
    return [f for f in files if f == "pyproject.toml" or f.rsplit("/", 1)[-1] ==
            ".gitignore" or spec.match_file(f)]


def app_files(app: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``app`` outside the directories
    Flower never packages (nor symlinks, which Flower leaves out too)."""
    ignored = _ignored_dir(app)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(app, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(app)
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in SKIP and not (d in TOP_SKIP and here == app)
            and not (here / d).is_symlink()
            and not ignored((rel_dir / d).as_posix() + "/"))
        files += [(rel_dir / f).as_posix() for f in sorted(filenames)
                  if not (here / f).is_symlink()]
    return files


def check_no_secrets(app: Path, files: list[str]) -> None:
    """Refuse an app whose bundle would carry a site's secrets (its private keys, or
    a secure run's session state when the state folder is in the app): the FAB goes to
    the SuperLink and every SuperNode, and Flower packs every ``*.json`` (``*.toml``,
    ``*.yaml``, ...) file its ``.gitignore`` does not ignore (a test bed's ``keys/``
    made in the project went with it). The files are those Flower's own rules keep."""
    import tomllib

    from flwr.cli.build import get_filtered_fab_paths
    from flwr.cli.utils import filter_paths_for_publish

    from mmvm.config import ConfigError

    try:
        config = tomllib.loads((app / "pyproject.toml").read_text())
        packed = get_filtered_fab_paths(filter_paths_for_publish(
            {f: app / f for f in files}), config)
    except (OSError, UnicodeDecodeError, ValueError):  # TOML's errors too: flwr says
        return                                         # what is wrong with the app
    leaked = [f for f in packed if _holds_secrets(app / f)]
    if leaked:
        raise ConfigError(f"{app / leaked[0]} holds a site's secrets (its private keys or "
                          f"secure session state), and flwr would "
                          f"pack it into the app bundle it sends to the SuperLink and "
                          f"every SuperNode" + f" ({len(leaked)} such files)" * (len(leaked) > 1)
                          + f"; move them out of {app}, or ignore their folder in its "
                            f".gitignore")


def flower_app_above(path: Path) -> Path | None:
    """The nearest folder holding ``path`` (or ``path`` itself) that is a Flower app
    (its pyproject.toml has ``[tool.flwr.app]``), or None: a site's keys or state
    there would go into that app's bundle with ``flwr run``."""
    import tomllib

    path = Path(path).expanduser().resolve()
    for folder in (path, *path.parents):
        try:
            with open(folder / "pyproject.toml", "rb") as fh:
                if "app" in tomllib.load(fh).get("tool", {}).get("flwr", {}):
                    return folder
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return None


# a site's secure session state (mmvm.secure.session, ``<site>.secure.json``): its
# group id key, its pseudonym contribution, its PSI scalar
SESSION_SECRETS = frozenset({"group_key", "contribution", "scalar"})
# the same secrets as text, in whatever file a copy went to (YAML, TOML, Markdown, a
# line of JSON Lines, Python): a field name, then ":", "=", "|" or ",", then a base64
# value of at least 32 bytes (keys and scalars are 32 bytes; 44 characters in base64)
_SECRET_TEXT = re.compile(
    rb"""(?:\b(?:x25519|ed25519)_private|\b(?:group_key|contribution|scalar))["'`]?"""
    rb"""\s*[:=|,]\s*[\[("'`]*\s*[A-Za-z0-9+/]{43}""")


def _holds_secrets(path: Path) -> bool:
    """Whether the file at ``path`` holds a site's secrets, whatever it is named: its
    private keys (``*_private`` fields, as ``site_keys.json``) or its secure session
    state; as JSON, or as a copy of their values in any text. Files over 16 MiB are
    not read (a FAB holds 10 MB at most)."""
    try:
        if path.stat().st_size > 16 << 20:
            return False
        raw = path.read_bytes()
    except OSError:
        return False
    if _SECRET_TEXT.search(raw):
        return True
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and (
        any(isinstance(k, str) and k.endswith("_private") for k in doc)
        or any(isinstance(doc.get(k), str) for k in SESSION_SECRETS))


def check_flower_home(app: Path, files: list[str]) -> None:
    """Refuse an app folder that holds Flower's own home (``FLWR_HOME``) unignored:
    flwr would pack its config and every app it installed into each run's bundle,
    which grows run by run until Flower refuses it ("exceeds the maximum directory
    depth of 10", the third run of a walkthrough)."""
    from mmvm.config import ConfigError

    home = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser()
    try:
        rel = home.resolve().relative_to(app).as_posix()
    except ValueError:
        return
    if rel == ".":
        raise ConfigError(f"FLWR_HOME={home} is the app folder {app}: flwr would pack "
                          f"Flower's own files into every run's bundle; set FLWR_HOME "
                          f"outside {app}")
    inside = [f for f in files if f == rel or f.startswith(rel + "/")]
    if inside:
        raise ConfigError(f"FLWR_HOME={home} is inside the app folder {app}: flwr would "
                          f"pack Flower's own files ({len(inside)}, its installed apps "
                          f"among them) into every run's bundle; set FLWR_HOME outside "
                          f"{app}, or add '/{rel}/' to its .gitignore")


def _gitignore(app: Path) -> list[str]:
    gitignore = app / ".gitignore"
    return gitignore.read_text().splitlines() if gitignore.is_file() else []


def _ignored_dir(app: Path) -> Callable[[str], bool]:
    """Whether the app's ``.gitignore`` ignores a directory (path ending in "/").
    With a negated pattern (``!...``) no directory is skipped: git could not bring a
    file back from an ignored directory, but a pattern matcher might."""
    lines = _gitignore(app)
    if any(line.strip().startswith("!") for line in lines):
        return lambda _path: False
    spec = pathspec.GitIgnoreSpec.from_lines(lines)
    return spec.match_file


def ignored_by_app(app: Path, path: Path) -> bool:
    """Whether the app's ``.gitignore`` keeps ``path`` (a file, or a folder and every
    file in it) out of the bundle ``flwr run`` builds: Flower's own matching
    (``flwr.cli.utils``, the rules its FAB builder applies)."""
    from flwr.cli.utils import build_pathspec, load_gitignore_patterns

    path = Path(path).expanduser().resolve()
    rel = path.relative_to(Path(app).resolve()).as_posix()
    spec = build_pathspec(load_gitignore_patterns(Path(app) / ".gitignore"))
    files = [rel] if not path.is_dir() else [f"{rel}/state.json"]  # what it would hold
    return all(spec.match_file(p) for p in files)
