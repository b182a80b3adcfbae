"""The site: a Flower ClientApp over ``mmvm.federation`` (no training logic here).

A site is identified by ``--node-config 'site="..." data="/dir"'`` in deployment
(``data`` holds the site's ``train.parquet`` and ``test.parquet``), or by its
partition id in simulation, where the embedded default data is made on first use.
Model and optimizer live on disk under ``state-dir`` between messages (a SuperNode
starts a fresh process per message) and in memory while the process lives.

Secure mode (run config ``secure = true``, see ``mmvm.federation.sealed``): the site's
mmvm keys come from ``--node-config 'keys="/path/site_keys.json"'`` (or the directory
holding it), the public key directory from ``directory="/path/public_keys.json"``
(default: ``public_keys.json`` next to the site keys); in simulation from the run
config ``keys-dir`` (a ``python -m deploy.make_keys --sites`` output:
``<keys-dir>/sites/<site>/site_keys.json`` and ``<keys-dir>/public_keys.json``).
The group id key and the replay guard are kept next to the site's state file.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.wire import from_record, to_record
from mmvm.data.default import ensure_default_sites
from mmvm.federation import endpoint, sealed
from mmvm.federation.settings import load_settings
from mmvm.federation.site import Site

app = ClientApp()
_SITES: dict[tuple[int, int], tuple[Site, int]] = {}  # site and its state file's version


def _site_files(context: Context, s) -> tuple[str, str, str | None]:
    nc = context.node_config
    if "data" in nc:  # deployment: the site brings its own files
        data = Path(str(nc["data"])).expanduser()
        test = data / "test.parquet"
        return str(nc.get("site", data.name)), str(data / "train.parquet"), \
            str(test) if test.exists() else None
    pid, num = int(nc["partition-id"]), int(nc["num-partitions"])
    sites, files = ensure_default_sites(
        s.data_dir, s.layout, s.shards, s.missing, s.n_train, s.n_test,
        seed=s.experiment.train.seed,
        modalities=tuple(m.name for m in s.experiment.model.modalities))
    if num != len(sites):
        raise ValueError(f"layout {s.layout!r} has {len(sites)} sites but the simulation "
                         f"runs {num} SuperNodes; set num-supernodes={len(sites)}")
    name = sites[pid].name
    return name, files[name]["train"], files[name].get("test")


def _state_path(context: Context, s, name: str) -> Path:
    return Path(s.state_dir) / f"run-{context.run_id}" / f"{name}.pt"


def _get_site(context: Context) -> tuple[Site, Path]:
    s = load_settings(context.run_config)
    name, train, test = _site_files(context, s)
    path = _state_path(context, s, name)
    key = (context.run_id, context.node_id)
    site, version = _SITES.get(key, (None, -1))
    if site is None:
        site = Site(s.experiment, name, train, test)
    on_disk = path.stat().st_mtime_ns if path.exists() else -1
    if on_disk != version and on_disk != -1:
        # another process (a fresh SuperNode process, another Ray actor) moved on
        site.restore(path)
    _SITES[key] = (site, on_disk)
    return site, path


def _secrets(context: Context, site: Site, path: Path) -> sealed.SiteSecrets | None:
    sec = sealed.secure_settings(context.run_config)
    if not sec.secure:
        return None
    nc = context.node_config
    if "keys" in nc:
        keys, directory = str(nc["keys"]), nc.get("directory")
    elif sec.keys_dir:
        keys = str(Path(sec.keys_dir) / "sites" / site.name / "site_keys.json")
        directory = nc.get("directory", str(Path(sec.keys_dir) / "public_keys.json"))
    else:
        raise ValueError(f"site {site.name}: secure = true needs the site's keys: "
                         f"--node-config 'keys=\"/path/site_keys.json\"' or run config "
                         f"keys-dir")
    return sealed.SiteSecrets.load(keys, directory and str(directory),
                                   run_id=context.run_id, state_dir=path.parent)


def _answer(msg: Message, context: Context, name: str, save: bool) -> Message:
    site, path = _get_site(context)
    req = from_record(msg.content)
    secrets = _secrets(context, site, path)
    if secrets is not None:
        reply = getattr(sealed, name)(site, secrets, req)
    elif name == "describe":
        reply = endpoint.describe(site)
    elif name == "align":
        raise ValueError("align is a secure-mode message; this run has secure = false")
    else:
        reply = getattr(endpoint, name)(site, req)
    if save:
        site.save(path)
        _SITES[(context.run_id, context.node_id)] = (site, path.stat().st_mtime_ns)
    return Message(to_record(reply), reply_to=msg)


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "describe", save=False)


@app.train("align")
def align(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "align", save=False)


@app.train("attach")
def attach(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "attach", save=True)


@app.train("window")
def window(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "window", save=True)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "evaluate", save=False)
