"""The site: a Flower ClientApp over ``mmvm.federation`` (no training logic here).

A site is identified by its node config in deployment (``--node-config 'site="a"
data="/dir" keys=... peers=...'``: its files, its keys and its protection policy,
``mmvm.federation.policy``), or by its partition id in simulation, where the
embedded default data is made on first use and the run config is the only config.
The site's policy is enforced before anything leaves: a run that asks for less
protection than the node config requires fails here, naming the policy.

Model, optimizer and the site's place in the run live on disk between messages (a
SuperNode may start a fresh process per message) and in memory while the process
lives. In secure mode a failure reaches the server as an error code and a message
that names no data; the details go to ``<state>/<site>.errors.log`` at the site.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from mmvm.config import ConfigError
from mmvm.data.default import ensure_default_sites
from mmvm.data.store import DataError
from mmvm.federation.channel import Channel, PlainChannel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.messages import MessageError
from mmvm.federation.policy import SitePolicy, load_policy
from mmvm.federation.posteriors import PosteriorError
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.federation.settings import FederationSettings, load_settings
from mmvm.federation.site import Site
from mmvm.federation.site_errors import public_error
from mmvm.secure.errors import SecurityError
from mmvm.secure.session import SiteSecrets
from mmvm.training import TrainingDivergedError
from wire.records import request_from_record, to_record

app = ClientApp()
# failures a site explains in one line (configuration, data, protocol, policy)
EXPECTED = (ConfigError, DataError, SecurityError, FederationError, MessageError,
            PosteriorError, TrainingDivergedError)


@dataclass
class Node:
    """What this process keeps of one site within one run."""

    settings: FederationSettings
    policy: SitePolicy
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
    try:
        sites, files = ensure_default_sites(s.data_dir, s.layout, s.shards, s.missing,
                                            s.n_train, s.n_test,
                                            seed=s.experiment.train.seed,
                                            modalities=tuple(s.modalities),
                                            variant=s.data_variant,
                                            hippocampus=s.hippocampus)
    except ValueError as err:
        raise ConfigError(f"simulation data: {err}") from None
    if num != len(sites):
        raise ConfigError(f"layout {s.layout!r} has {len(sites)} sites but the simulation "
                          f"runs {num} SuperNodes: set num-sites={len(sites)} (mmvm run "
                          f"starts that many) or --federation-config "
                          f"'num-supernodes={len(sites)}'")
    name = sites[pid].name
    return name, files[name]["train"], files[name].get("test")


def _policy(context: Context) -> tuple[FederationSettings, SitePolicy, tuple]:
    """The run's settings and this site's policy, checked against each other before
    anything is read or sent."""
    s = load_settings(context.run_config)
    files = _site_files(context.node_config, s)
    policy = load_policy(context.node_config, files[0])
    policy.check_run(files[0], s.secure, s.align)
    return s, policy, files


def _node(context: Context, s: FederationSettings, policy: SitePolicy, files: tuple
          ) -> Node:
    """This site, its state restored when another process moved it on."""
    key = (context.run_id, context.node_id)
    node = _NODES.get(key)
    if node is None:
        name, train, test = files
        state = _state_root(context, s, policy) / f"{name}.pt"
        node = _NODES[key] = Node(s, policy, Site(s.experiment, name, train, test), state)
    on_disk = node.state.stat().st_mtime_ns if node.state.exists() else -1
    if on_disk not in (-1, node.version):
        node.site.restore(node.state)
        node.version = on_disk
    return node


def _channel(context: Context, node: Node) -> Channel:
    s, policy, name = node.settings, node.policy, node.site.name
    if not s.secure:
        return PlainChannel()
    if policy.secure_site:  # deployment: keys and directory from the node config
        keys, directory = policy.keys, policy.directory or None
    elif policy.test_bed and s.keys_dir:
        keys = str(Path(s.keys_dir) / "sites" / name / "site_keys.json")
        directory = str(Path(s.keys_dir) / "public_keys.json")
    else:
        raise FederationError(f"site {name}: secure = true needs the site's keys in its "
                              f"node config (keys=\"/path/site_keys.json\")")
    secrets = SiteSecrets.load(keys, directory, run_id=_run_id(context, s),
                               state_dir=node.state.parent)
    return SealedChannel(secrets, policy, s.align)


def _answer(msg: Message, context: Context, kind: str) -> Message:
    """The site's reply; a failure the site can explain is an error reply of one line
    (no traceback reaches the server; in secure mode none of the site's data either)."""
    try:
        s, policy, files = _policy(context)
    except EXPECTED as err:  # settings or policy: nothing of the site was read yet
        return _error(msg, f"{type(err).__name__}: {err}")
    try:
        node = _node(context, s, policy, files)
        request = request_from_record(kind, msg.content)
        reply = Endpoint(node.site, _channel(context, node), policy).handle(request)
        node.site.save(node.state)  # model and place in the run, in one atomic file
        node.version = node.state.stat().st_mtime_ns
    except Exception as err:
        _NODES.pop((context.run_id, context.node_id), None)  # reread from disk next time
        if s.secure or policy.secure_site:
            log = _state_root(context, s, policy) / f"{files[0]}.errors.log"
            return _error(msg, str(public_error(files[0], log, kind, err)))
        if isinstance(err, EXPECTED):
            return _error(msg, f"{type(err).__name__}: {err}")
        raise
    return Message(to_record(reply), reply_to=msg)


def _error(msg: Message, text: str) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=text),
                   reply_to=msg)


def _run_id(context: Context, s: FederationSettings) -> int:
    """The run this site's state belongs to: a resumed run continues the old one's
    state (forward only: the site's place in the run is kept with it)."""
    return int(s.resume) if s.resume else context.run_id


def _state_root(context: Context, s: FederationSettings, policy: SitePolicy) -> Path:
    root = Path(s.state_dir if policy.test_bed else policy.state)
    return root / f"run-{_run_id(context, s)}"


@app.query("describe")
def describe(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "describe")


@app.train("align")
def align(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "align")


@app.train("attach")
def attach(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "attach")


@app.train("window")
def window(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "window")


@app.train("unmask")
def unmask(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "unmask")


@app.query("resume")
def resume(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "resume")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _answer(msg, context, "evaluate")
