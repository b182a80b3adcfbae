"""A site's answer to one message, in whichever process runs it.

The ClientApp (``client/app.py``) calls :func:`answer` in its own process, or, in a
simulation with site hosts, a host process that keeps the site in memory for the run
calls it (``client/hosts.py``). The site is identified by its node config in
deployment (``--node-config 'site="a" data="/dir" keys=... peers=...'``: its files,
its keys and its protection policy, ``mmvm.federation.policy``), or by its partition
id in simulation, where the embedded default data is made on first use and the run
config is the only config. The policy is enforced before anything leaves: a run that
asks for less protection than the node config requires fails here, naming it.

State on disk (``mmvm.federation.site_store``): a process that may not see the next
message writes the site's live state after every message; a resident one (a site
host) only when the server checkpoints. In secure mode a failure reaches the server
as an error code and a message that names no data; the details go to
``<state>/<site>.errors.log`` at the site.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, RecordDict

from client.site_journal import (
    EXPECTED,
    failure_text,
    journal,
    record_refusal,
    refuse_run,
    said,
)
from mmvm.config import ConfigError
from mmvm.data.default import ensure_default_sites
from mmvm.federation.channel import Channel, PlainChannel
from mmvm.federation.coordinator import FederationError
from mmvm.federation.endpoint import Endpoint
from mmvm.federation.node_config import (
    load_policy,
    missing_paths,
    site_name,
)
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.progress import Progress, ProtocolOrderError
from mmvm.federation.sealed_channel import SealedChannel
from mmvm.federation.sent_log import append_sent
from mmvm.federation.settings import FederationSettings, load_settings
from mmvm.federation.site import Site
from mmvm.federation.site_config import reading, site_experiment
from mmvm.federation.site_dirs import own_site_files
from mmvm.federation.site_limits import check_state_room
from mmvm.federation.site_store import SiteStore
from mmvm.federation.state_lock import state_lock
from mmvm.secure.session import SiteSecrets
from mmvm.training import count_parameters
from wire.records import request_from_record, to_record


@dataclass
class Node:
    """What this process keeps of one site within one run."""

    settings: FederationSettings
    policy: SitePolicy
    site: Site
    store: SiteStore  # the site's state file and snapshots


_NODES: dict[tuple[int, int], Node] = {}


def _site_files(nc, s: FederationSettings, run_id: int) -> tuple[str, str, str | None]:
    if "data" in nc:  # deployment: the site brings its own files
        data = Path(str(nc["data"])).expanduser()
        test = data / "test.parquet"
        return site_name(nc), str(data / "train.parquet"), \
            str(test) if test.exists() else None
    pid, num = int(nc["partition-id"]), int(nc["num-partitions"])
    if s.site_dirs:  # a simulation on the user's own site folders
        return own_site_files(s.site_dirs, pid, num)
    args = (s.data_dir, s.layout, s.shards, s.missing, s.n_train, s.n_test)
    kwargs = {"seed": s.experiment.train.seed, "modalities": tuple(s.modalities),
              "variant": s.data_variant, "hippocampus": s.hippocampus}
    key = (int(run_id), pid, num, args, repr(sorted(kwargs.items())))
    files = _SIM_FILES.get(key)
    if files is None:
        files = _simulation_files(pid, num, args, kwargs)
        for old in [k for k in _SIM_FILES if k[0] != key[0]]:
            del _SIM_FILES[old]  # another run's
        _SIM_FILES[key] = files
    return files


# A simulated site's files, made or found once per run and process: checking them
# takes a lock all sites share, and a site host answers every window (five sites
# queued on it every window, on a busy machine, cost milliseconds of each window).
_SIM_FILES: dict[tuple, tuple[str, str, str | None]] = {}


def _simulation_files(pid: int, num: int, args: tuple, kwargs: dict
                      ) -> tuple[str, str, str | None]:
    try:
        sites, files = ensure_default_sites(*args, **kwargs)
    except ValueError as err:
        raise ConfigError(f"simulation data: {err}") from None
    if num != len(sites):
        raise ConfigError(f"layout {args[1]!r} has {len(sites)} sites but the simulation "
                          f"runs {num} SuperNodes: set num-sites={len(sites)} (mmvm run "
                          f"starts that many) or --federation-config "
                          f"'num-supernodes={len(sites)}'")
    name = sites[pid].name
    return name, files[name]["train"], files[name].get("test")


_SETTINGS: dict[tuple, FederationSettings] = {}  # the last run config's, parsed


def run_settings(run_config, run_id: int, app_only: bool = False) -> FederationSettings:
    """The run's settings, parsed once per process, run and run config: a process
    that keeps its site (a site host) answers every window, and parsing the
    experiment config again costs ~3-8 ms of CPU per message. Another run is parsed
    afresh (its app may bring another experiment config under the same name)."""
    key = (int(run_id), app_only,
           *sorted((str(k), repr(v)) for k, v in run_config.items()))
    s = _SETTINGS.get(key)
    if s is None:
        s = load_settings(run_config, app_only)  # a bad config raises here, every time
        _SETTINGS.clear()
        _SETTINGS[key] = s
    return s


def settings_and_policy(context: Context) -> tuple[FederationSettings, SitePolicy, tuple]:
    """The run's settings and this site's policy, checked against each other before
    anything is read or sent. A deployment site (``data`` in its node config) reads
    only the app's own experiment configs."""
    deployment = "data" in context.node_config
    if not deployment:
        _require_simulation(context.node_config)
    s = run_settings(context.run_config, context.run_id, app_only=deployment)
    files = _site_files(context.node_config, s, context.run_id)
    policy = load_policy(context.node_config, files[0])
    missing = missing_paths(context.node_config) if deployment else []
    if missing:  # the paths to the site's log only: the server learns the keys
        journal(files[0], f"node config: {'; '.join(missing)}")
        raise ConfigError(f"node config of site {files[0]}: "
                          f"{', '.join(m.split('=', 1)[0] for m in missing)} name files "
                          f"that are not there (the site's log says which)")
    policy.check_run(files[0], s.secure, s.align)
    policy.check_experiment(files[0], s.experiment)
    return s, policy, files


def _pictures(node: Node, site: str) -> None:
    """The site's own pictures beside its state (its journal says where); a picture
    that cannot be drawn costs the run nothing."""
    from mmvm.federation.site_pictures import draw_site_pictures

    try:
        drawn = draw_site_pictures(node.site, node.store.path.parent)
    except Exception as err:  # noqa: BLE001 - matplotlib, a full disk: said, not fatal
        journal(site, f"no pictures of its own model: {type(err).__name__}: {err}")
        return
    for path in drawn.values():
        journal(site, f"pictures of its own model: {path}")


def _require_simulation(nc) -> None:
    """A node config without ``data`` is a simulation's: the run config then decides
    everything (data, keys and state folders, secure mode), a test bed run by one
    person. A deployment SuperNode started that way would hand all of that to
    whoever submits the run, so it is refused unless this process is one of the
    simulation's Ray workers."""
    ray = sys.modules.get("ray")  # imported in a simulation's workers; never here
    if {"partition-id", "num-partitions"} <= set(nc) and ray is not None \
            and ray.is_initialized():
        return
    typo = difflib.get_close_matches("data", [str(k) for k in nc], 1)
    raise ConfigError(
        f"node config (keys {sorted(nc)}) has no data=\"/path/to/site\""
        + "".join(f" (is {t!r} meant to be 'data'?)" for t in typo)
        + ": a deployment site names its data folder, keys and policy there "
          "(deploy/README.md section 3); partition-id / num-partitions alone belong to "
          "a simulation, and this ClientApp is not running in one")


def _node(context: Context, s: FederationSettings, policy: SitePolicy, files: tuple,
          root: Path) -> Node:
    """This site, its state (in folder ``root``) restored when another process moved
    it on."""
    key = (context.run_id, context.node_id)
    node = _NODES.get(key)
    if node is None:
        name, train, test = files
        store = SiteStore(root / f"{name}.pt",  # a secure site never goes back
                          fall_back=not (s.secure or policy.secure_site))
        cfg = site_experiment(policy, s.experiment, (train, test))
        site = Site(cfg, name, train, test,
                    admit=lambda names: policy.check_params(
                        name, count_parameters(s.experiment, names)))
        node = _NODES[key] = Node(s, policy, site, store)
    node.store.refresh(node.site)
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
                               state_dir=node.store.path.parent)
    return SealedChannel(secrets, policy, s.align, flower_run=str(context.run_id))


def answer(kind: str, content: RecordDict, context: Context, resident: bool = False
           ) -> RecordDict | str:
    """The site's reply to a ``kind`` message, or one line saying why it failed (no
    traceback reaches the server; in secure mode none of the site's data either).

    ``resident``: this process keeps the site for the whole run, so its state is
    written only when the server checkpoints (``WindowRequest.persist``)."""
    try:
        s, policy, files = settings_and_policy(context)
    except EXPECTED as err:  # settings or policy: nothing of the site was read yet
        return refuse_run(context, kind, err)
    node, request, root = None, None, _state_root(context, s, policy)
    if kind == "resume" and not root.is_dir():  # no state of this run: make none (its
        try:  # lock and error log went into a folder made for them)
            Progress().resume(files[0])
        except ProtocolOrderError as err:
            journal(files[0], f"resume refused: {err}")
            return said(files[0], err, context.node_config) \
                if not (s.secure or policy.secure_site) \
                else f"{type(err).__name__}: {err}"
    if not root.is_dir() or kind == "attach":  # a run that begins to keep state: room
        try:  # for it (any server may start runs; described ones are small until attach)
            check_state_room(files[0], policy, root.parent)
        except PolicyError as err:
            return refuse_run(context, kind, err)
    try:
        for folder in (root.parent, root):  # the site's model and ledger: its own
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # decoded first: a malformed message costs no read of the site's files
        request = request_from_record(kind, content)
        with state_lock(root / f"{files[0]}.lock"):  # one process answers at a time
            node = _node(context, s, policy, files, root)
            # a decoder half only where its step will run and the state is not
            # written after every window (secure runs: the save would wait for it),
            # unless the run says no
            node.site.overlap = resident and s.decode_ahead and not s.secure
            endpoint = Endpoint(node.site, _channel(context, node), policy, node.store,
                                resident, flower_run=str(context.run_id))
            # an evaluate asked again gets its kept reply: nothing new to draw
            drawn = node.site.progress.phase == "evaluated"
            reply = endpoint.handle(request)  # and writes the state as due
            if kind == "evaluate" and policy.pictures and not drawn:
                _pictures(node, files[0])
            if kind in ("describe", "resume") and not policy.test_bed:
                journal(files[0], f"trains on {node.site.device}; {reading(node.site.cfg)}")
            for note in [*node.store.notes, *endpoint.notes]:
                journal(files[0], note)
            node.store.notes.clear()
            disk = node.store.take()  # every message's: set-up writes are no window's
        if kind == "window":  # a wait for the decoder half at a checkpoint: training
            reply.metrics["disk_s"] = disk
            reply.metrics["train_s"] += node.site.take_waited()
        record = to_record(reply)
        # not recorded, not sent (the state is saved by now: a full disk fails the run)
        append_sent(root / f"{files[0]}.sent.jsonl", kind, reply, context.run_id)
    except Exception as err:
        if request is not None:  # one that did not decode changed nothing of the site
            _after_failure(context, node, kind, resident and not s.secure)
        cause = f" [{err.__cause__}]" if err.__cause__ is not None else ""  # what the
        text, logged = failure_text(files[0], root, kind, err,
                                     s.secure or policy.secure_site, policy.report_losses,
                                     context.node_config)
        where = f" (traceback: {root / files[0]}.errors.log)" if logged else ""
        journal(files[0], f"{kind} failed: {type(err).__name__}: {err}{cause}{where}")
        sent = record_refusal(root, f"{files[0]}.sent", kind,
                        text or f"{type(err)}:<'{err}'>", context.run_id)
        if text is None:  # a plaintext site's unexpected error: Flower sends its text,
            raise  # in the form just recorded
        return sent
    return record


def _after_failure(context: Context, node: Node | None, kind: str, keep: bool) -> None:
    """A failed message: the next one rereads the site from disk, except a window's
    in a process that keeps a plaintext site (``keep``): it writes at checkpoints
    only, so rereading would silently go back to the last one. (A secure site writes
    every window, and its session must be what is on disk.)"""
    if keep and kind == "window" and node is not None:
        try:
            node.site.abandon_window()
            return
        except Exception:  # noqa: BLE001  (then the disk is the one state to trust)
            pass
    _NODES.pop((context.run_id, context.node_id), None)


def _run_id(context: Context, s: FederationSettings) -> int:
    """The run this site's state belongs to: a resumed run continues the old one's
    state (forward only: the site's place in the run is kept with it)."""
    return int(s.first_run(context.run_id))


def _state_root(context: Context, s: FederationSettings, policy: SitePolicy) -> Path:
    root = Path(s.state_dir if policy.test_bed else policy.state)
    return root / f"run-{_run_id(context, s)}"
