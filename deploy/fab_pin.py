"""A site runs only the app bundle it reviewed: the FAB's SHA-256, checked at the site.

A SuperNode runs the ClientApp of the run's app bundle (FAB), which whoever submits
the run chooses; the code that reads the site's node config is part of it, so a
bundle with those lines deleted would ignore ``require-secure``, ``experiment`` and
every other key (deploy/README.md section 3). Flower 1.41 verifies bundles only
through Flower Hub signatures. A site that runs its own SuperExec
(``deploy.superexec_fork --allow-fab SHA256``) pins the bundles it accepts instead:
in the forked child, after Flower pulled the task and before it installs the bundle
or imports any of its code, the bundle's bytes are hashed here and refused unless
the hash is one the site allowed. The refusal is an ordinary ClientApp error, so the
server hears why at once (no reply timeout), and the site's log says it.

The hash to allow is that of the FAB ``flwr run APP`` uploads: Flower builds it
deterministically (fixed zip dates, its own file filter), so each site computes it
from the reviewed source (``python -m deploy.fab_pin APP``), a clean checkout of the
agreed release: any other file in the folder that Flower ships (an untracked
``*.json``, say) changes it.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

SHA256 = re.compile(r"[0-9a-f]{64}")


class FabRefused(PermissionError):
    """The run's app bundle is not one this site allowed."""


def fab_sha256(app: str | Path) -> str:
    """The SHA-256 of the FAB that ``flwr run APP`` uploads for the app folder.

    Built from the app's staged copy (:func:`mmvm.cli.app_stage.staged_app`, what
    ``mmvm run`` submits): the same bytes as Flower's build of the folder itself
    (tests/deploy/test_fab_pin.py), without Flower first listing every file of a
    ``.venv`` inside it (7 s of a 1 s hash in a checkout with CPU torch). Refuses, as
    ``mmvm run`` does, a folder whose bundle would carry a site's secrets."""
    from flwr.cli.build import build_fab_from_disk

    from mmvm.cli.app_stage import staged_app

    with staged_app(Path(app)) as stage:
        return hashlib.sha256(build_fab_from_disk(stage)).hexdigest()


def allowed_hashes(values: Iterable[str]) -> frozenset[str]:
    """``--allow-fab`` values as hashes (lower case); ValueError naming a bad one."""
    out = set()
    for v in values:
        h = v.strip().lower()
        if not SHA256.fullmatch(h):
            raise ValueError(f"--allow-fab {v!r}: not a SHA-256 (64 hex digits; "
                             f"python -m deploy.fab_pin APP prints an app's)")
        out.add(h)
    return frozenset(out)


def check_fab(content: bytes, said: str | None, allowed: frozenset[str]) -> str:
    """The bundle's hash if ``allowed`` holds it and the hash the task came with
    (``said``: Flower's ``Fab.hash_str``, which names the folder the app is loaded
    from) is the bundle's own; FabRefused otherwise."""
    got = hashlib.sha256(content).hexdigest()
    if got not in allowed:
        raise FabRefused(f"this site runs only the app bundles it reviewed (--allow-fab "
                         f"{', '.join(h[:16] for h in sorted(allowed))}); the run's is "
                         f"{got[:16]}: refused before any of its code ran")
    if said is not None and said != got:
        raise FabRefused(f"the run's app bundle is {got[:16]} but came labelled "
                         f"{said[:16]}: refused before any of its code ran")
    return got


def pin(module, allowed: frozenset[str]) -> Callable[[], None]:
    """Make Flower's ClientApp runner (``module``:
    ``flwr.supernode.runtime.run_clientapp``) run only a bundle of ``allowed``, in
    this process only (a forked task):

    * the pull is wrapped to remember the hash the bundle came labelled with;
    * the install checks the bytes (a refusal then, when the reply can carry it) and
      extracts them into a new private folder, never one that exists already (Flower
      skips extraction where its apps folder has the name, and names it by 8 hex
      digits of the hash: an earlier or planted folder of that name would run);
    * the loader loads the ClientApp from that folder only, where Flower refuses a
      run whose app id or version differ from its ``pyproject.toml`` (they come from
      the SuperLink, and name the folder the stock loader reads: a version with
      ``/../`` in it pointed at any folder of the right suffix).

    Returns what removes the private folders: call it when the task ends (a forked
    child ends with ``os._exit``, which runs no ``atexit`` handler).
    """
    said: list[str | None] = [None]
    installed: list[Path] = []
    private: list[Path] = []
    pull: Callable = module.pull_task_input
    install: Callable = module.install_from_fab
    loader: Callable = module.get_load_client_app_fn

    def pull_task_input(*args, **kwargs):
        message, context, run, fab = pull(*args, **kwargs)
        said[0] = fab.hash_str
        return message, context, run, fab

    def install_from_fab(content: bytes, *args, **kwargs):
        check_fab(content, said[0], allowed)
        private.append(Path(tempfile.mkdtemp(prefix="mmvm-fab-")))  # 0700, new
        installed.append(install(content, install_dir=private[-1], skip_prompt=True))
        return installed[-1]

    def get_load_client_app_fn(*args, **kwargs):
        if not installed:
            raise FabRefused("no checked app bundle was installed for this task")
        return loader(default_app_ref="", app_path=str(installed[-1]), multi_app=True)

    def remove() -> None:
        for folder in private:
            shutil.rmtree(folder, ignore_errors=True)

    module.pull_task_input = pull_task_input
    module.install_from_fab = install_from_fab
    module.get_load_client_app_fn = get_load_client_app_fn
    return remove


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m deploy.fab_pin",
        description="Print the SHA-256 of the app bundle (FAB) flwr run uploads for an "
                    "app folder: the value a site gives deploy.superexec_fork "
                    "--allow-fab. Compute it from a clean checkout of the reviewed "
                    "release.")
    p.add_argument("app", nargs="+", help="app folder(s) (with pyproject.toml)")
    args = p.parse_args(argv)
    for app in args.app:
        if not (Path(app) / "pyproject.toml").is_file():
            print(f"deploy.fab_pin: {app}: no pyproject.toml (not an app folder)",
                  file=sys.stderr)
            return 2
        try:
            print(f"{fab_sha256(app)}  {app}")
        except (ValueError, OSError) as err:  # (ConfigError is a ValueError)
            print(f"deploy.fab_pin: {app}: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
