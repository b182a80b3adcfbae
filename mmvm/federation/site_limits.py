"""What a site's node config (:class:`mmvm.federation.policy.SitePolicy`) allows of a
run it attaches to: the server's groups of holders, the plan's size, the tables the
plan makes it hold and, in a secure run, how few of its rows a window may train.

Checked at attach, and again (:func:`recheck`) at any later message once the node
config differs from the one they last passed under. An operator who turns
``allow-collect`` off, pins an ``experiment``, lists ``holders`` or raises
``min-rows`` after a run attached (and restarts the SuperNode) would otherwise see
that run, continued by its server or brought back with ``resume``, go on under the
policy it attached with: weights sent in clear every window, a mean of the server's
choosing loaded (security review of 2026-12-07). A loosened limit simply passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mmvm.config import TrainConfig
from mmvm.data.store import read_site_meta
from mmvm.federation.node_config import runs_bytes
from mmvm.federation.plan import PlanArgs
from mmvm.federation.policy import PolicyError, SitePolicy
from mmvm.federation.reply_cache import policy_digest
from mmvm.federation.site import Site
from mmvm.footprint import step_bytes, table_bytes


def check_request(site: str, policy: SitePolicy, shared: Mapping[str, Sequence[str]],
                  n: int, plan: PlanArgs, secure: bool,
                  estimate: Callable[[], int], train: TrainConfig) -> None:
    """Before the site builds anything: the server's groups (``shared``: modality ->
    its holders), the plan's size over ``n`` aligned samples (``estimate()``: the
    bytes of one step, :func:`mmvm.footprint.step_bytes`) and, at a site pinned to
    an experiment, that the plan is that experiment's (``train``: its settings)."""
    policy.check_sharing(site, shared, secure)
    if secure:
        check_groups(site, policy, shared)
    if policy.experiments:
        check_pinned_plan(site, plan, train)
    policy.check_size(site, n, plan.batch_size, plan.epochs)
    policy.check_step(site, plan.batch_size, estimate)


def check_pinned_plan(site: str, plan: PlanArgs, train: TrainConfig) -> None:
    """The server derives the plan's batch size, epochs and seed from the experiment
    config, but sends them apart from it: at a pinned site a plan of batch 1 and 500
    epochs would run under the digest of batch 128 and 10 (a review of 2026-12-07)."""
    differ = [f"{key} {getattr(plan, key)} (the experiment's: {getattr(train, key)})"
              for key in ("batch_size", "epochs", "seed")
              if getattr(plan, key) != getattr(train, key)]
    if differ:
        raise PolicyError(f"site {site}: the plan is not the pinned experiment's: "
                          f"{', '.join(differ)}")


def check_groups(site: str, policy: SitePolicy, shared: Mapping[str, Sequence[str]]
                 ) -> None:
    """A secure run's masking groups: >= 3 holders, 2 only with ``allow-pair-masking``
    (each of two then learns the other's weights from the mean)."""
    for m, holders in sorted(shared.items()):
        if len(holders) < 2 or (len(holders) == 2 and not policy.allow_pair_masking):
            raise PolicyError(f"site {site}: modality {m!r} would be averaged over "
                              f"{sorted(holders)}; masking groups need >= 3 sites (2 "
                              f"only with allow-pair-masking in every holder's node "
                              f"config)")


def check_tables(site: Site, policy: SitePolicy) -> None:
    """The posterior tables a window makes the site hold (its rows of the largest
    window, every modality of the run) and its final evaluation's latents (all its
    train and test rows, its own modalities), against ``max-step-gib``."""
    if policy.test_bed:
        return
    widest = int(site.own_rows()[:, 0].max(initial=0))
    if site.linked().delta_tol is not None:  # event-triggered: every row received
        widest = len(site.data)  # or sent stays cached, for every modality
    policy.check_held(site.name, f"a window's posteriors ({widest:,} rows x "
                      f"{len(site.global_names)} modalities)",
                      table_bytes(site.cfg, widest, len(site.global_names)))
    check_latents(site, policy)


def check_latents(site: Site, policy: SitePolicy) -> None:
    """The final evaluation's latents (all the site's train rows and its test rows
    rounded up to a power of two, its own modalities) against ``max-step-gib``."""
    test = site.test_path if site.test_path and os.path.isfile(site.test_path) else ""
    # its test rows rounded up to a power of two: the submitter sizes the latents, and
    # refusals at chosen sizes would read the count a site that withholds sizes keeps
    n_test = read_site_meta(test)["num_rows"] if test else 0
    rows = len(site.data) + (1 << max(n_test - 1, 0).bit_length() if n_test else 0)
    policy.check_held(site.name, "the final evaluation's latents (its train and "
                      "test rows)", table_bytes(site.cfg, rows, len(site.names)))


def check_rows(site: Site, policy: SitePolicy) -> None:
    """A secure run's plan against ``min-rows``: the refusal names windows and row
    counts, for the site's log only (callers tell the server less)."""
    shared = sorted(site.linked().shared)
    counts = site.own_rows(shared)
    policy.check_plan(site.name, counts[:, 0],
                      {m: counts[:, 1 + j] for j, m in enumerate(shared)})


def passed(site: Site, policy: SitePolicy) -> None:
    """Record, with the site's link (saved in its state), that the checks of attach
    passed under ``policy``: :func:`recheck` runs them again only when it changed."""
    site.linked().checked = policy_digest(policy)


def recheck(site: Site, policy: SitePolicy, secure: bool) -> None:
    """Every check of attach again, for a run this site attached to before, if the
    node config changed since they last passed (the module's docstring says why)."""
    link, name = site.linked(), site.name
    if link.checked == policy_digest(policy):
        return
    legacy = any(not hs for hs in link.holders.values())  # a state from before them
    if legacy and (secure or policy.holders is not None):
        raise PolicyError(f"site {name}: this run attached before sites recorded the "
                          f"groups they share weights with, so its node config cannot "
                          f"be checked against them; start a new run")
    later = ("; the run attached before the node config said so, and a site applies "
             "its node config as it is now to every run")
    try:
        check_request(name, policy, link.holders, link.n, link.plan_args, secure,
                      lambda: step_bytes(site.cfg, site.names, link.plan_args.batch_size),
                      site.cfg.train)
        check_tables(site, policy)
    except PolicyError as err:  # (its cause: what only the site's log gets)
        raise PolicyError(f"{err}{later}") from err.__cause__
    if secure:
        try:
            check_rows(site, policy)
        except PolicyError as err:  # counts stay in the site's log, as at attach
            raise PolicyError(f"site {name}: a window of this run's plan trains fewer "
                              f"of its rows than its min-rows = {policy.min_rows}, in all "
                              f"or with a modality it shares (the site's log says "
                              f"which){later}") from err
    passed(site, policy)


def check_state_room(site: str, policy: SitePolicy, state: Path) -> None:
    """Before a new run's folder is made, and at a run's attach (after which it keeps
    its state): the site's runs' folders under ``max-state-gib``.
    Each run keeps its state (weights, optimiser, caches: up to ``max-params`` x 16
    bytes and more), and any server may start runs: without a bound they fill the
    site's disk. How much they hold goes to the site's log only."""
    if policy.test_bed or not state.is_dir():
        return
    used = runs_bytes(state)
    if used > policy.max_state_gib * 2**30:
        raise PolicyError(f"site {site}: its earlier runs' state takes more than its node "
                          f"config allows, {policy.max_state_gib:,} GiB (max-state-gib): "
                          f"no run begins here (a new one, or an attach) until its "
                          f"operator removes old run-<id> folders; its log says how much") \
            from PolicyError(f"{used:,} bytes in {state}")
