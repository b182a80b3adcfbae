"""Per-label probes at a site: the run's ``eval.labels`` (the paper's MIMIC-CXR
protocol: one probe per finding, scored by ``eval.metric``, AUROC there), as
:func:`mmvm.evaluation.evaluate_run` computes them centrally, on the site's own
train and test files.

A deployed site reports a column only where its node config's ``eval-labels``
allows it (each column on its own: a run config may name any column of the site's
files). What the server receives per modality m: ``probe/<m>`` the mean of the
metric over the labels it could score, ``probe_label/<m>/<column>`` each of them,
``probe_labels/<m>`` how many, ``chance/<m>`` the mean of the metric's chance over
them (AUROC 0.5; AP the positives' share), and ``probe_metric/<metric>`` = 1.
"""

from __future__ import annotations

import fnmatch
import math

import numpy as np

from mmvm.data.labels import all_label_columns
from mmvm.encoding import encode_dataset, present_label_columns
from mmvm.federation.policy import SitePolicy
from mmvm.federation.site import Site
from mmvm.probes import label_scores


def allowed_label_columns(site: Site, policy: SitePolicy | None) -> list[str]:
    """The site's label columns that the run's ``eval.labels`` names (names or shell
    patterns; one the site's files lack is skipped) and its ``policy`` lets it report
    on; every named one without a policy (a simulation)."""
    patterns = site.cfg.eval.labels
    named = [c for c in all_label_columns([site.train_path])
             if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return [c for c in named if policy is None or policy.label_allowed(c)]


def label_probes(site: Site, test, max_train: int, columns: list[str]) -> dict[str, float]:
    """The per-label probes of ``columns`` on the site's latents (see the module
    docstring); ``{}`` without columns."""
    if not columns or not site.test_path:
        return {}
    cfg, size = site.cfg, site.pass_rows
    train_mu = encode_dataset(site.model, site.data, size, device=site.device)
    test_mu = encode_dataset(site.model, test, size, device=site.device)
    scores = label_scores(
        train_mu, present_label_columns(site.data, site.names, [site.train_path], columns),
        test_mu, present_label_columns(test, site.names, [site.test_path], columns),
        cfg.eval.metric, max_train, cfg.eval.probe_standardize)
    metric, out = scores["metric"], {f"probe_metric/{scores['metric']}": 1.0}
    for m, per in scores["labels"].items():
        scored = {c: s for c, s in per.items() if not math.isnan(s[metric])}
        if not scored:  # no label with both classes in m's train and test rows
            continue
        out[f"probe/{m}"] = float(scores["per_modality"][m])  # the scored labels' mean
        out[f"probe_labels/{m}"] = float(len(scored))
        out[f"chance/{m}"] = float(np.mean([s["chance"] for s in scored.values()]))
        out.update({f"probe_label/{m}/{c}": float(s[metric]) for c, s in scored.items()})
    return out
