"""The site: a Flower ClientApp over ``mmvm.federation`` (no training logic here).

A site is identified by ``--node-config 'site="..." data="/dir"'`` in deployment
(``data`` holds the site's ``train.parquet`` and ``test.parquet``), or by its
partition id in simulation, where the embedded default data is made on first use.
Model and optimizer live on disk under ``state-dir`` between messages (a SuperNode
starts a fresh process per message) and in memory while the process lives.

Secure mode (run config ``secure = true``, see ``mmvm.federation.sealed_channel``):
the site's keys come from ``--node-config 'keys="/path/site_keys.json"'`` (or the
directory holding it), the public key directory from
``directory="/path/public_keys.json"`` (default: next to the site keys); in
simulation from the run config ``keys-dir`` (a ``python -m deploy.make_keys --sites``
output). The group id key and the replay guard are kept next to the site's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from mmvm.data.default import ensure_default_sites
from mmvm.federation.channel import Channel, PlainChannel
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.federation.settings import FederationSettings, load_settings
from mmvm.federation.site import Site
from mmvm.secure.session import SiteSecrets
from wire.records import request_from_record, to_record

app = ClientApp()


@dataclass
class Node:
    """What this process keeps of one site within one run."""

    settings: FederationSettings
    site: Site
    state: Path  # the site's state file
    version: int = -1  # mtime of the state file this process last read or wrote


_NODES: dict[tuple[int, int], Node] = {}


def _site_files(nc, s: FederationSettings) -> tuple[str, str, str | None]:
    if "data" in nc:  # deployment: the site brings its own files
        data = Path(str(nc["data"])).expanduser()
        test = data / "test.parquet"
        return str(nc.get("site", data.name)), str(data / "train.parquet"), \
            str(test) if test.exists() else None
    pid, num = int(nc["partition-id"]), int(nc["num-partitions"])
    sites, files = ensure_default_sites(s.data_dir, s.layout, s.shards, s.missing,
                                        s.n_train, s.n_test, seed=s.experiment.train.seed,
                                        modalities=tuple(s.modalities))
    if num != len(sites):
        raise ValueError(f"layout {s.layout!r} has {len(sites)} sites but the simulation "
                         f"runs {num} SuperNodes; set num-supernodes={len(sites)}")
    name = sites[pid].name
    return name, files[name]["train"], files[name].get("test")


def _node(context: Context) -> Node:
    """This site, its state restored when another process moved it on."""
    key = (context.run_id, context.node_id)
    node = _NODES.get(key)
    if node is None:
        s = load_settings(context.run_config)
        name, train, test = _site_files(context.node_config, s)
        state = Path(s.state_dir) / f"run-{context.run_id}" / f"{name}.pt"
        node = _NODES[key] = Node(s, Site(s.experiment, name, train, test), state)
    on_disk = node.state.stat().st_mtime_ns if node.state.exists() else -1
    if on_disk not in (-1, node.version):
        node.site.restore(node.state)
        node.version = on_disk
    return node


def _channel(context: Context, node: Node) -> Channel:
    s, nc = node.settings, context.node_config
    if not s.secure:
        return PlainChannel()
    if "keys" in nc:
        keys, directory = str(nc["keys"]), nc.get("directory")
    elif s.keys_dir:
        keys = str(Path(s.keys_dir) / "sites" / node.site.name / "site_keys.json")
        directory = nc.get("directory", str(Path(s.keys_dir) / "public_keys.json"))
    else:
        raise ValueError(f"site {node.site.name}: secure = true needs the site's keys: "
                         f"--node-config 'keys=\"/path/site_keys.json\"' or run config "
                         f"keys-dir")
    return SealedChannel(SiteSecrets.load(keys, directory and str(directory),
                                          run_id=context.run_id, state_dir=node.state.parent))


def _answer(msg: Message, context: Context, kind: str, save: bool) -> Message:
    node = _node(context)
    try:
        request = request_from_record(kind, msg.content)
        reply = Endpoint(node.site, _channel(context, node)).handle(request)
        if save:
            node.site.save(node.state)
            node.version = node.state.stat().st_mtime_ns
    except BaseException:  # the site in memory may be half-way: reread it next time
        _NODES.pop((context.run_id, context.node_id), None)
        raise
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
