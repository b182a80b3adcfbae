"""A site's node config, checked as its ClientApp will read it, before the SuperNode
starts.

The ClientApp reads the node config at every message (``client/site_node.py``). A
typo there surfaces at the first run's first message, mid-federation, and the server
learns only which key was wrong. This runs the same readers on the site's machine,
all of them, so the administrator sees every problem at once and the protection the
site will enforce: the policy (``mmvm.federation.policy``), the data files (every
row, as ``mmvm data check``), the site's keys and the public key directory with the
pinned peers (what ``SealedChannel`` accepts), the state folder, and, given the
agreed experiment config, the site built as the first message builds it and its
test split read as the final evaluation reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path

from mmvm.cli.run_config import APP_DIR
from mmvm.cli.site_findings import ERROR, OK, WARNING, NodeCheck
from mmvm.cli.site_holders import check_holder_groups, check_holders_data, summary
from mmvm.cli.site_keys_check import check_keys
from mmvm.cli.site_reading import check_reading
from mmvm.config import ExperimentConfig
from mmvm.federation.node_config import (
    SECURE_ONLY,
    SECURE_PEERS,
    load_policy,
    policy_problems,
    runs_bytes,
    site_name,
)
from mmvm.federation.policy import KEYS, SitePolicy

PATH_KEYS = ("data", "keys", "directory", "state")


def check_node_config(nc: Mapping, cfg: ExperimentConfig | None = None,
                      app: Path = APP_DIR) -> NodeCheck:
    """Every finding about node config ``nc`` (as ``flower-supernode --node-config``
    parses it); with ``cfg``, also whether the site's data trains that experiment and
    is one of ``app``'s configs (the app the run will ship)."""
    if "data" not in nc:
        check = NodeCheck(str(nc.get("site", "?")))
        typo = _unknown_keys(nc)
        check.add("data", ERROR, "no data=\"/path/to/site\": a deployment site names its "
                  "data folder (train.parquet, test.parquet) in its node config"
                  + f"; {typo}" * bool(typo))
        return check
    data = Path(str(nc["data"])).expanduser()
    check = NodeCheck(site_name(nc))
    _site_name(check, nc, data)
    _paths(check, nc)
    problems = policy_problems(nc, check.site)
    for _, message in problems:
        check.add("policy", ERROR, message)
    bad = {key for key, _ in problems}
    policy = _usable_part(nc, "site" if "site" in bad else check.site, bad)
    train, test = _data(check, data)
    if cfg is not None:
        _experiment(check, cfg, train, test, policy, app)
    _policy(check, policy, nc, partial=bool(problems))
    check.add("policy", OK, summary(policy))
    if train is not None and policy.holders is not None:
        check_holders_data(check, policy.holders, train)
    if policy.holders is not None:
        check_holder_groups(check, policy)
    if train is not None and policy.secure_site:
        _min_rows(check, policy, train, test)
    if train is not None:
        _eval_labels(check, policy, train)
        check_reading(check, policy, train, test)
    if policy.secure_site:
        check_keys(check, policy, pinned="peers" in nc and "peers" not in bad,
              unpinned="peers" not in nc)
    if "site" not in bad:  # else the state's default folder is not the site's
        _state(check, Path(policy.state), policy.max_state_gib)
    return check


def _site_name(check: NodeCheck, nc: Mapping, data: Path) -> None:
    """A ``site`` that names neither the keys' site nor the data folder, which name
    the same site: said first, as the likely cause of the holders, keys and
    directory errors that name it (an administrator's walkthrough read those first)."""
    if "site" not in nc or "keys" not in nc:
        return
    from mmvm.secure.keys import SiteKeys

    keys = Path(str(nc["keys"])).expanduser()
    try:
        owner = SiteKeys.load(keys / "site_keys.json" if keys.is_dir() else keys).site
    except (OSError, ValueError, KeyError, TypeError):
        return  # the keys' own finding says why
    if owner != check.site and data.name == owner:
        check.add("site", ERROR, f"site = {check.site!r}, but the keys are those of {owner!r} and "
                  f"the data folder is named {owner!r}: site= is likely meant to be "
                  f"{owner!r} (the errors below that name {check.site!r} follow from it)")


def _unknown_keys(nc: Mapping) -> str:
    """The keys that are none of the node config's, each with the nearest valid one
    (``dta``: did you mean ``data``?); '' if all are known."""
    valid = (*KEYS, "data", "site")
    unknown = [k for k in nc if k not in valid]
    near = {k: difflib.get_close_matches(k, valid, 1) for k in unknown}
    return ", ".join(f"unknown key {k!r}" + "".join(f" (did you mean {c!r}?)" for c in m)
                     for k, m in near.items())


def _paths(check: NodeCheck, nc: Mapping) -> None:
    from mmvm.cli.app_stage import flower_app_above, ignored_by_app

    for key in ("keys", "directory", "state"):  # JSON files flwr would pack
        app = flower_app_above(Path(str(nc[key]))) if nc.get(key) else None
        if app is not None and not ignored_by_app(app, Path(str(nc[key]))):
            check.add("paths", WARNING, f"{key}={nc[key]} is inside the Flower app {app} "
                      f"and not in its .gitignore: `flwr run` there packs its JSON files "
                      f"into the bundle the SuperLink and every SuperNode get")
    for key in PATH_KEYS:
        if nc.get(key) and not Path(str(nc[key])).expanduser().is_absolute():
            check.add("paths", WARNING, f"{key}={nc[key]} is relative: the SuperNode "
                      f"resolves it against its own working directory (here: "
                      f"{Path(str(nc[key])).resolve()}); give absolute paths")


def _usable_part(nc: Mapping, site: str, bad: set[str]) -> SitePolicy:
    """The policy of the keys that parse (to check the rest as well)."""
    known = {k: v for k, v in nc.items() if k in (*KEYS, "data", "site") and k not in bad}
    if known.get("keys") and "peers" not in known:
        known["peers"] = "*"  # reported above; the directory is still checked
    if not known.get("keys"):  # a secure site's keys without keys: reported above
        for key in (*SECURE_PEERS, "require-secure"):
            known.pop(key, None)
    return load_policy(known, site)


def _data(check: NodeCheck, data: Path) -> tuple[Path | None, Path | None]:
    from mmvm.cli.data_check import check_problem

    train, test = data / "train.parquet", data / "test.parquet"
    if not train.is_file():
        check.add("data", ERROR, f"data={data}: " + ("no train.parquet there"
                  if data.is_dir() else "no such folder (it names the site's folder "
                  "of train.parquet and test.parquet)"))
        return None, None
    summary, problem = check_problem(str(train))
    if problem:
        check.add("data", ERROR, problem)
        return None, None
    mods = ", ".join(f"{n} {'x'.join(map(str, t['shape']))}"
                     for n, t in summary["tensors"].items())
    check.add("data", OK, f"{train}: {summary['rows']:,} rows; {mods}"
              + (f"; labels {', '.join(summary['labels'])}" * bool(summary["labels"])))
    if not test.exists():
        check.add("data", WARNING, f"no {test}: the site's own evaluation (probes, "
                  f"reconstruction on its test split) is skipped")
        return train, None
    tested, problem = check_problem(str(test))
    if problem:
        check.add("data", ERROR, problem)
        return train, None
    differ = [f"{n} {t['shape']} {t['dtype']}" for n, t in summary["tensors"].items()
              if tested["tensors"].get(n) != t]
    if differ:
        check.add("data", ERROR, f"{test} does not hold train.parquet's modalities as "
                  f"they are there ({'; '.join(differ)}; it has "
                  f"{', '.join(tested['tensors']) or 'none'}): the final evaluation "
                  f"would fail")
        return train, None
    check.add("data", OK, f"{test}: {tested['rows']:,} rows")
    return train, test


def _experiment(check: NodeCheck, cfg: ExperimentConfig, train: Path | None,
                test: Path | None, policy: SitePolicy, app: Path) -> None:
    """Build the site as a run's first message does (modalities, shapes, tokens,
    device, method, the model's size against max-params), read its test split as the
    final evaluation does, and check the plan's size on the site's own rows alone
    (a run's aligned samples are usually as many or more)."""
    from mmvm.config import config_digest
    from mmvm.data import open_dataset
    from mmvm.data.value_ranges import range_warnings
    from mmvm.federation.policy import PolicyError
    from mmvm.federation.site import Site
    from mmvm.federation.site_config import site_experiment
    from mmvm.federation.site_limits import check_latents
    from mmvm.footprint import step_bytes
    from mmvm.training import count_parameters

    if train is None:
        check.add("experiment", WARNING, f"{cfg.source}: not checked (no valid "
                  f"train.parquet)")
        return
    try:  # a model beyond max-params is not built, so the limits below wait for it
        # on the site's own device, reading as it will (a check writes no decoded copy)
        cfg = site_experiment(policy, cfg, [p for p in (train, test) if p])
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, decoded_dir=""))
        site = Site(cfg, check.site, train, test, admit=lambda names: policy.check_params(
            check.site, count_parameters(cfg, names)))
        if test is not None:
            open_dataset(test, site.names, cfg.data)
        step = step_bytes(cfg, site.names, cfg.train.batch_size)
    except Exception as err:  # noqa: BLE001 - reported, as the ClientApp would
        check.add("experiment", ERROR, f"{cfg.source}: {type(err).__name__}: {err}")
        return
    t = cfg.train
    for line in range_warnings([s for s in cfg.model.modalities if s.name in site.names],
                               [p for p in (train, test) if p is not None], t.amp):
        check.add("data", WARNING, line)  # values the model would read wrongly
    for limit in (lambda: policy.check_size(check.site, len(site.data), t.batch_size,
                                            t.epochs),
                  lambda: policy.check_step(check.site, t.batch_size, lambda: step),
                  lambda: check_latents(site, policy)):  # (a window's tables: the plan's)
        try:  # each limit the experiment breaks, not only the first
            limit()
        except PolicyError as err:
            check.add("experiment", ERROR, f"{cfg.source}: {err}")
    if not policy.label_allowed(cfg.data.label):
        check.add("experiment", WARNING, f"{cfg.source}: data.label = "
                  f"{cfg.data.label!r} is not in this site's eval-labels: its final "
                  f"evaluation reports no probe (reconstruction only)")
    n, digest = sum(p.numel() for p in site.model.parameters()), config_digest(cfg)
    check.add("experiment", OK, f"{cfg.source}: trains {', '.join(site.names)} "
              f"({n:,} parameters, about {step / 2**30:.2f} GiB a step at batch "
              f"{cfg.train.batch_size:,}, method {cfg.model.method}, device "
              f"{site.device}); "
              f"the run's config must be this file of the app, with the same `set`; "
              f"digest {digest}")
    if not policy.allows(digest):  # as check_experiment, said as a check's finding
        check.add("experiment", ERROR, f"{cfg.source}: its digest {digest[:16]}... is "
                  f"none the node config pins (experiment=" + ",".join(
                      d[:16] + "..." for d in policy.experiments) + "): a run of it "
                  "would be refused; if this is the agreed config, pin its digest above")
    configs = Path(app).resolve() / "configs"
    if configs.is_dir() and not Path(cfg.source).resolve().is_relative_to(configs):
        check.add("experiment", WARNING, f"{cfg.source} is not under the app's {configs} "
                  f"(--app DIR, default this checkout): a deployed run names "
                  f"configs/<file> of the app bundle it ships, so copy it there before "
                  f"the run is submitted, or give --app the folder of the app it ships")


def _min_rows(check: NodeCheck, p: SitePolicy, train: Path, test: Path | None) -> None:
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(train).metadata.num_rows
    if p.min_rows > rows:  # with require-secure no run at all
        check.add("policy", ERROR if p.require_secure else WARNING,
                  f"min-rows {p.min_rows:,} is more than this site's {rows:,} train "
                  f"rows: every secure run's plan will be refused"
                  + " (and require-secure refuses the others)" * p.require_secure)
    tests = pq.ParquetFile(test).metadata.num_rows if test is not None else 0
    if 0 < tests < p.min_rows and p.share_test:
        check.add("policy", WARNING, f"min-rows {p.min_rows:,} is more than this site's "
                  f"{tests:,} test rows: every cross-site score of its test rows is "
                  f"withheld (each is over fewer rows than min-rows)")


def _eval_labels(check: NodeCheck, p: SitePolicy, train: Path) -> None:
    """An eval-labels pattern that matches none of the site's label columns is a
    typo or a column the data does not have: the probe it meant is withheld."""
    import pyarrow.parquet as pq

    columns = [c for c in pq.read_schema(train).names if c.split(".")[0] == "label"]
    idle = [q for q in p.eval_labels
            if q != "*" and not any(fnmatch.fnmatchcase(c, q) for c in columns)]
    if idle:
        check.add("policy", WARNING, f"eval-labels {', '.join(idle)} match no label "
                  f"column of {train} (it has {', '.join(columns) or 'none'})")


def _policy(check: NodeCheck, p: SitePolicy, nc: Mapping, partial: bool) -> None:
    on = {True: "on", False: "off"}
    check.add("policy", OK, "the values that parse: " * partial + f"require-secure "
              f"{on[p.require_secure]}, allow-collect {on[p.allow_collect]}, "
              f"allow-pair-masking {on[p.allow_pair_masking]}, require-psi "
              f"{on[p.require_psi]}, min-rows {p.min_rows}; max-steps {p.max_steps:,}, "
              f"max-visits {p.max_visits:,}, max-batch {p.max_batch:,}, max-params "
              f"{p.max_params:,}, max-step-gib {p.max_step_gib:,}, max-align-rows "
              f"{p.max_align_rows:,}, max-state-gib {p.max_state_gib:,}; eval-labels "
              f"{','.join(p.eval_labels) or 'none'}; "
              f"device {p.device}{' (a GPU when the host has one)' * (p.device == 'auto')}"
              "; streaming " + (
                  "by the files' size" if p.streaming is None else
                  "on (a decoded copy in <state>/decoded)" if p.streaming else "off")
              + f"; allow-compile {on[p.allow_compile]}"
              f", report-losses {on[p.report_losses]}, pictures {on[p.pictures]}, "
              f"share-test {on[p.share_test]}; "
              f"holders " + ("; ".join(f"{m}={','.join(sorted(s))}"
                                       for m, s in sorted(p.holders.items()))
                             if p.holders else "as the server says")
              + "; experiment " + (", ".join(d[:16] + "..." for d in p.experiments)
                                    if p.experiments else "any"))
    if not p.experiments:
        check.add("policy", WARNING, "no experiment: whoever submits a run chooses the "
                  "model this site trains and whose posteriors it sends; encoders chosen "
                  "to be inverted (as wide as the input, a learning rate of ~0) send its "
                  "samples themselves (deploy/README.md section 7): list the configs it "
                  "may run (experiment=\"<digest>\", which --config FILE prints)")
    if p.min_rows > 1 and p.share_test and not (p.require_secure or p.require_psi):
        check.add("policy", WARNING, f"min-rows {p.min_rows:,}: plaintext runs score no "
                  f"cross-site evaluation here (its test posteriors are still sent; the "
                  f"server chooses the values it would score)" + (
                      "; their probes are scored, with the encoders the server averages "
                      "for shared modalities: eval-labels = \"\" keeps test labels "
                      "unread there" if p.eval_labels else ""))
    if not p.secure_site:
        idle = [k for k in SECURE_ONLY if k in nc]
        if idle:
            check.add("policy", WARNING, f"{', '.join(idle)} without keys: no effect "
                      f"(they protect secure runs, which need keys=)")
        if p.plain_sharing_refused:  # a choice, said; not a weakness
            check.add("policy", OK, p.plain_sharing_refused + " without keys: this site "
                      "refuses plaintext runs in which another site holds one of its "
                      "modalities (horizontal and hybrid layouts): " + (
                          "they send its weights in clear" if not p.allow_collect else
                          "the server alone would choose the mean its encoders load"))
        check.add("policy", ERROR if p.require_secure else WARNING,
                  "require-secure without keys: this site refuses plaintext runs and "
                  "cannot take part in secure ones" if p.require_secure else
                  "no keys: a plaintext site (secure = false runs only); the server "
                  "sees what the site sends (its sample ids, latent posteriors and "
                  "weights) unencrypted" + (", and its final weights when a run asks "
                  "(allow-collect on)") * p.allow_collect + " (deploy/README.md section "
                  "7; `mmvm site keys --site NAME --out DIR` makes its keys, section 1)")
        return
    if p.allow_collect:
        check.add("policy", WARNING, "allow-collect on: the server receives this site's "
                  "final weights when a run asks (collect-model)")
    if p.holders is None:
        check.add("policy", WARNING, "no holders: the server alone says which sites share "
                  "a modality with this one; one that puts it in a group of itself and "
                  "colluding sites unmasks its weights: list each modality's holders "
                  "(holders=\"frontal=hospital-a,hospital-c\")")
    if not p.require_psi:
        check.add("policy", WARNING, "require-psi off: runs may align by keyed pseudonyms, "
                  "with which a server colluding with any one site can test any number "
                  "of guesses of this site's ids offline (MRNs, study numbers are "
                  "guessable); set require-psi=true unless the ids are random (a peer "
                  "alone can test up to max-align-rows guesses a run either way: lower "
                  "it towards the peers' cohort sizes)")
    if p.allow_pair_masking:
        check.add("policy", WARNING, "allow-pair-masking on: when only two sites share "
                  "a modality's weights, each learns the other's from their average")
    if not p.require_secure:
        check.add("policy", WARNING, "require-secure off: plaintext runs are accepted"
                  + (" (but none that average a modality's weights: allow-collect is "
                     "off, and they send the weights in clear)") * (not p.allow_collect)
                  + (" (but none that average a modality's weights: experiment is "
                     "pinned, and the server alone would choose their mean)")
                  * (p.allow_collect and bool(p.experiments))
                  + (f"; min-rows {p.min_rows:,} does not bound them: their windows "
                     f"report the losses of whatever batch the plan says, one row too, "
                     f"beside the ids and posteriors they send in clear")
                  * (p.min_rows > 1))


def _state(check: NodeCheck, state: Path, max_gib: int) -> None:
    if state.is_symlink() or state.exists() and state.stat().st_uid != os.geteuid():
        check.add("state", ERROR, f"state={state} is a link or belongs to another user: "
                  f"whoever owns it can read and change the site's model and keys' state; "
                  f"use a folder this user made")
        return
    if state.exists():
        mode = state.stat().st_mode & 0o777
        if not state.is_dir():
            check.add("state", ERROR, f"state={state} is not a folder")
        elif not os.access(state, os.W_OK | os.X_OK):
            check.add("state", ERROR, f"{state}: not writable by this user (run the "
                      f"check as the user that runs flower-supernode)")
        elif mode & 0o077:
            check.add("state", WARNING, f"{state}: open to group/others (mode {mode:o}); "
                      f"each run's folder in it is made 700, chmod 700 it too")
        else:
            check.add("state", OK, f"{state} (writable, mode {mode:o})")
        if used := state.is_dir() and os.access(state, os.R_OK | os.X_OK) and \
                runs_bytes(state):
            full = used > max_gib * 2**30
            check.add("state", WARNING if full else OK, f"its runs' folders hold "
                      f"{used / 2**30:,.1f} GiB of max-state-gib {max_gib:,}" + (
                          "; new runs are refused until old run-<id> folders are "
                          "removed" if full else ""))
        return
    parent = next(p for p in state.resolve().parents if p.exists())
    if os.access(parent, os.W_OK | os.X_OK) and parent.stat().st_mode & 0o002:
        check.add("state", WARNING, f"{state} does not exist yet and {parent} is writable "
                  f"by every user: another one could make it first; make it now "
                  f"(mkdir -p, then chmod 700) or choose a folder of your own")
    elif os.access(parent, os.W_OK | os.X_OK):
        check.add("state", OK, f"{state} (made at the first run, under {parent}; each "
                  f"run's folder mode 700)")
    else:
        check.add("state", ERROR, f"{state} does not exist and {parent} is not writable "
                  f"by this user")
