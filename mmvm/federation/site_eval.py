"""What a site can measure on its own data, at the end of a federated run.

Per own modality: a latent probe (the project's one probe,
:func:`mmvm.evaluation.probe_accuracy`: train rows -> test rows) and the test
reconstruction NLL as `mmvm evaluate` reports it
(:func:`mmvm.evaluation.reconstruction_nll`: z drawn from q(z | x_m) as in training). Needs the site's test file; probes
need labels with at least two classes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mmvm.data import open_dataset
from mmvm.data.groups import group_count, read_groups
from mmvm.evaluation import (
    chance_levels,
    encode_dataset,
    present_labels,
    probe_accuracy,
    reconstruction_nll,
)
from mmvm.federation.policy import SitePolicy
from mmvm.federation.site import Site
from mmvm.federation.site_cross_eval import (
    cross_values,
    floored_means,
    judges_too_large,
    received,
)
from mmvm.federation.site_label_probes import allowed_label_columns, label_probes
from mmvm.recon_baseline import baseline_nll


@torch.no_grad()
def evaluate_site(site: Site, max_probe_train: int | None = None, probes: bool = True,
                  cross: bytes | None = None, draw: bool = True,
                  log=None, policy: SitePolicy | None = None) -> dict[str, float]:
    """``probe/<m>``, ``classes/<m>``, ``majority/<m>`` (the probe's chance: the share
    of m's commonest test label; none of the three unless ``probes``; ``unlabelled``
    when the site's files lack ``data.label``; with ``eval.labels`` the per-label
    probes of :mod:`mmvm.federation.site_label_probes` instead),
    ``recon_nll/<m>`` and ``n_test``; empty without a test file. ``cross``: the other
    modalities' test posteriors (the server's table): imputation and, with
    ``probes``, coherence of the site's own modalities from them
    (:func:`mmvm.federation.site_cross_eval.cross_scores`; ``draw``: from one draw of
    z, else the means; ``log``: told where its judges are loaded from or trained to;
    ``policy``: a deployed site's limits on its judges and its scores, see
    :func:`_cross`)."""
    if not site.test_path:
        return {}
    if max_probe_train is None:  # as the central evaluation: the run's eval.probe_train
        max_probe_train = site.cfg.eval.probe_train
    test = open_dataset(site.test_path, site.names, site.cfg.data)
    out = _cross(site, test, cross, probes, draw, log or (lambda _: None), policy) \
        if cross is not None else {}
    # the estimator `mmvm evaluate` reports (z drawn as in training, seeded), in
    # passes of the size the site's limits admitted
    rec = reconstruction_nll(site.model, test, site.cfg.model.method,
                             batch_size=site.pass_rows, seed=site.cfg.train.seed)
    out.update({f"recon_nll/{m}": v for m, v in rec["per_modality"].items()
                if not math.isnan(v)})  # NaN: no test row holds m here
    # one constant output's NLL: what a decoder or an imputation must beat
    out.update({f"constant_nll/{m}": v for m, v in baseline_nll(
        site.model, site.data, test, site.pass_rows).items() if not math.isnan(v)})
    if probes and site.cfg.eval.labels:  # one probe per label column, as allowed
        out.update(label_probes(site, test, max_probe_train,
                                allowed_label_columns(site, policy)))
    elif probes and site.data.labels is not None and test.labels is not None:
        out.update(_probes(site, test, max_probe_train))
    elif probes:  # the summary says why its probe column is empty
        out["unlabelled"] = 1.0
    out["n_test"] = float(len(test))
    return out


def _cross(site: Site, test, blob: bytes, probes: bool, draw: bool, log,
           policy: SitePolicy | None) -> dict[str, float]:
    """The cross-site scores; judges only where the site may report on its labels
    and, at a deployed site, within its ``max-params``, ``max-steps`` and
    ``max-visits`` (the run config's ``[eval]`` sizes them), kept under its node
    config's ``state`` folder (``classifiers/``; a simulation's beside the data). A
    deployed site reports no score over fewer than a quarter of its test rows: the
    server chooses which rows its table holds, and a score over one row would be
    that sample's. Its node config's ``min-rows`` also leaves out the rows that a
    combination of the scores would single out
    (:func:`mmvm.federation.site_cross_eval.floored_means`)."""
    from mmvm.classifiers import (  # only in a message that needs them
        load_or_train,
        recipe_for,
        vocabularies,
    )

    others = received(site, blob, len(test), log)
    if others is None:
        return {"cross_refused": 1.0}
    judges, cfg = None, site.cfg
    deployed = policy is not None and not policy.test_bed
    # the judges learn, and coherence scores, the run config's data.label: a column
    # its eval-labels must allow even where eval.labels names allowed ones
    judged = probes and (policy is None or policy.label_allowed(cfg.data.label))
    if probes and not judged:
        log(f"the evaluation: no coherence: data.label {cfg.data.label!r} is not in "
            f"the node config's eval-labels")
    if judged and site.data.labels is not None and test.labels is not None:
        too_large = judges_too_large(site, recipe_for(cfg), policy) if deployed else None
        if too_large:
            log(f"the evaluation: no coherence: {too_large}")
        else:
            # a deployed site keeps them in its state folder, not its data's
            keep = Path(policy.state) / "classifiers" if deployed and policy.state \
                else None
            with torch.enable_grad():  # (evaluate_site runs without it) a judge trains
                judges = load_or_train(
                    site.train_path, site.test_path, site.names, label=cfg.data.label,
                    cfg=recipe_for(cfg), device=site.device, log=log, cache_dir=keep,
                    tokens=vocabularies(cfg),  # a streaming site's from its copy
                    decoded_dir=cfg.data.decoded_dir * cfg.data.streaming)
    accuracy = {f"judge_accuracy/{m}": a for m, a in
                getattr(judges, "test_accuracy", {}).items() if not math.isnan(a)}
    values = cross_values(site, test, others, judges, sample=draw,
                          coherence_sample=draw and cfg.eval.coherence_sample)
    if deployed and not policy.report_losses:  # not sent: they split no cell
        values = {k: v for k, v in values.items() if not k.startswith("impute")}
    # a node config's min-rows: no reported sum, nor combination of sums, over fewer
    # rows (a secure run's; a plaintext one with min-rows above 1 scored nothing)
    means, left_out = floored_means(values, site.names,
                                    policy.min_rows if deployed else 1, log)
    scores = accuracy | means
    floor = math.ceil(len(test) / 4) if deployed else 1
    few = sorted(k[:-2] for k, n in scores.items() if k.endswith("_n") and n < floor)
    if few:
        log(f"the evaluation: scores over fewer than {floor} test rows not reported: "
            f"{', '.join(few)}")
    kept = {k: v for k, v in scores.items() if k.removesuffix("_n") not in few}
    # the server says so
    return kept | ({"cross_floored": 1.0} if few else {}) | \
        ({"cross_rows_left_out": 1.0} if left_out else {})


def _probes(site: Site, test, max_train: int) -> dict[str, float]:
    size = site.pass_rows
    train_mu = encode_dataset(site.model, site.data, size, device=site.device)
    test_mu = encode_dataset(site.model, test, size, device=site.device)
    train_y = present_labels(site.data, site.names)
    test_y = present_labels(test, site.names)
    groups = read_groups([site.test_path], test.sample_ids)  # trials, patients
    out = {}
    for m in site.names:
        ytr, yte = train_y[m], test_y[m]
        if len(np.unique(ytr[ytr >= 0])) < 2 or not (yte >= 0).any():
            continue
        acc = probe_accuracy({m: train_mu[m]}, {m: ytr}, {m: test_mu[m]}, {m: yte},
                             max_train=max_train,
                             standardize=site.cfg.eval.probe_standardize)
        out[f"probe/{m}"] = acc[m]
        out[f"probe_n/{m}"] = float((yte >= 0).sum())  # the test rows it scored
        held = np.flatnonzero(test.mask[:, test.names.index(m)].numpy())[yte >= 0]
        if (n := group_count(groups, held)) is not None:  # how sure the score is
            out[f"probe_groups/{m}"] = float(n)
        out[f"classes/{m}"] = float(len(np.unique(ytr[ytr >= 0])))
        # the floor of the probe: always answering the test labels' commonest class
        out[f"majority/{m}"] = chance_levels(yte)["majority"]
    return out
