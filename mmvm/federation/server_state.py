"""The server's checkpoint: what a restarted server needs to continue a run.

Written atomically after attach and after every window to
``<out-dir>/run-<id>/server_state.pt`` (tensors, strings and numbers only: it loads
with ``torch.load(weights_only=True)``): the last completed window, the sites (their
node keys, names, modalities and identifiers, from which the row order and the plan
are rebuilt exactly), the averaged shared weights, what the routing builds the next
requests from (posterior table, caches, or sealed envelopes), who missed which
window, the history so far, and a fingerprint of the settings that must not change.
A run started with ``resume = <id>`` reads it and continues from the next window;
the sites continue their own state of that run (``mmvm.federation.reply_cache``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mmvm.checkpoint import load_torch, write_torch
from mmvm.config import ConfigError, shared_settings
from mmvm.federation.coordinator import Coordinator, FederationError, SiteInfo
from mmvm.federation.settings import FederationSettings

VERSION = 1
STATE_FILE = "server_state.pt"  # in the run's folder, from attach on


def fingerprint(s: FederationSettings) -> dict:
    """The settings a resumed run must share with the run it continues: the plan, the
    protocol, the experiment the sites train (they would refuse another, naming no
    key), and what a simulation's sites hold (other samples misalign every row)."""
    return {"plan": s.plan_args().to_dict(), "modalities": s.modalities,
            "secure": s.secure, "align": s.align, "float16": s.float16,
            "delta_tol": s.delta_tol, "latent_dim": s.experiment.model.latent_dim,
            "method": s.experiment.model.method,
            "experiment": shared_settings(s.experiment),
            "simulation": {"num-sites": s.num_sites, "layout": s.layout,
                           "shards": s.shards, "missing": s.missing,
                           "n-train": s.n_train, "n-test": s.n_test,
                           "hippocampus": s.hippocampus, "site-dirs": list(s.site_dirs)}}


def changes(was: Mapping, now: Mapping, prefix: str = "") -> list[str]:
    """``key: old -> new`` for each leaf that differs (nested keys dotted); keys
    ``was`` lacks are not compared (a state written before they were recorded)."""
    out = []
    for k in now:
        if k not in was or was[k] == now[k]:
            continue
        if isinstance(was[k], Mapping) and isinstance(now[k], Mapping):
            out += changes(was[k], now[k], f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}: {was[k]!r} -> {now[k]!r}")
    return out


@dataclass
class ServerState:
    window: int  # last completed window (-1: attached, no window yet)
    sites: list[SiteInfo]
    averaged: dict
    routing: dict
    missed: dict[str, list[int]]
    absent: list[str]
    history: list[dict]
    bytes_total: int
    seconds: float
    alignment: dict


def save_server_state(path: str | Path, s: FederationSettings, state: ServerState) -> None:
    doc = {"version": VERSION, "fingerprint": json.dumps(fingerprint(s), sort_keys=True),
           "window": state.window,
           "sites": [{"key": i.key, "name": i.name, "modalities": list(i.modalities),
                      "identifiers": list(i.identifiers)} for i in state.sites],
           "averaged": {m: {p: torch.from_numpy(a.copy()) for p, a in arrays.items()}
                        for m, arrays in state.averaged.items()},
           "routing": state.routing, "missed": state.missed, "absent": state.absent,
           "history": json.dumps(state.history), "bytes_total": state.bytes_total,
           "seconds": state.seconds, "alignment": json.dumps(state.alignment)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_torch(path, doc)


def load_server_state(path: str | Path, s: FederationSettings) -> ServerState:
    """The checkpoint at ``path``, refused if it was written under other settings."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"resume = {s.resume}: no server state at {path} (the server "
                          f"writes it once the sites attached; is out-dir the one that "
                          f"run used?)")
    try:
        doc = load_torch(path)  # its bytes checked against their CRCs
    except Exception as err:  # truncated, damaged, not a torch file, or refused
        raise ConfigError(f"resume = {s.resume}: {path} is not a readable server state "
                          f"({type(err).__name__}: {str(err).replace(f'{path}: ', '')}"
                          f"); the server writes "
                          f"it atomically, so it was damaged or replaced after the run. "
                          f"The sites' states are of the same window: a copy of the run "
                          f"folder from a backup resumes; else start the run again"
                          ) from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a server state (a {type(doc).__name__})")
    if doc.get("version") != VERSION:
        raise ConfigError(f"{path}: server state version {doc.get('version')}, this "
                          f"mmvm reads version {VERSION}")
    now = json.loads(json.dumps(fingerprint(s), sort_keys=True))  # as it was stored
    changed = changes(json.loads(doc["fingerprint"]), now)
    if changed:
        raise ConfigError(f"resume = {s.resume}: the run was started with other "
                          f"settings ({'; '.join(changed)}); a resumed run must train "
                          f"the same plan on the same data: give the run config it "
                          f"started with (the left-hand values), or start a new run "
                          f"without resume")
    try:
        return _state_of(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{path}: server state incomplete or malformed "
                          f"({type(err).__name__}: {err})") from None


def _state_of(doc: dict) -> ServerState:
    return ServerState(
        window=int(doc["window"]),
        sites=[SiteInfo(d["key"], d["name"], list(d["modalities"]), list(d["identifiers"]))
               for d in doc["sites"]],
        averaged={m: {p: t.numpy() for p, t in arrays.items()}
                  for m, arrays in doc["averaged"].items()},
        routing=doc["routing"], missed={k: list(v) for k, v in doc["missed"].items()},
        absent=list(doc["absent"]), history=json.loads(doc["history"]),
        bytes_total=int(doc["bytes_total"]), seconds=float(doc["seconds"]),
        alignment=json.loads(doc["alignment"]))


def rekey(state: ServerState, new: dict[str, str]) -> ServerState:
    """``state`` with site keys (node ids) replaced by ``new[old]`` where given: a
    SuperNode may come back with another node id. Routing state keyed by site
    (``forwarded`` caches, the sealed ``inbox`` and sketch ``keys``) is rekeyed too."""
    key = lambda k: new.get(k, k)  # noqa: E731
    routing = {name: ({key(k): v for k, v in part.items()}
                      if name in ("forwarded", "inbox", "keys") else part)
               for name, part in state.routing.items()}
    sites = [SiteInfo(key(i.key), i.name, list(i.modalities), list(i.identifiers))
             for i in state.sites]
    keys = [i.key for i in sites]
    if len(set(keys)) != len(keys):  # a node would be two sites at once
        raise FederationError(f"resume: after matching sites to nodes, one node would "
                              f"be several sites ({sorted(i.name for i in sites)})")
    return dataclasses.replace(state, sites=sites, routing=routing,
                               absent=[key(k) for k in state.absent])


def rebuild(state: ServerState, s: FederationSettings) -> Coordinator:
    """The coordinator of the saved run: same sites, same row order, same plan."""
    return Coordinator(state.sites, s.modalities, s.plan_args())
