"""The latent probes of one run (docs/protocol.md): a logistic regression per
modality on its posterior means, and the aggregated probe on what each decoder reads
after the method's aggregation (the authors' ``lr_aggregated``); with ``eval.labels``
one probe per (modality, label column) scored by ``eval.metric``, for both."""

from __future__ import annotations

from typing import Any

import numpy as np

from mmvm.data.labels import NO_LABELS, label_columns
from mmvm.encoding import (
    encode_aggregated,
    encode_dataset,
    present_label_columns,
    present_labels,
)
from mmvm.model import MultimodalVAE
from mmvm.probes import label_scores, labelled_modalities, probe_accuracy


def run_probes(cfg, model: MultimodalVAE, probe_set, test_set
               ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(probe, extra, notes)``: ``evaluate_run``'s ``probe``; in ``extra`` its
    ``probe_aggregated`` (and, with ``eval.labels``, ``probe_labels``: every label's
    scores); ``notes``: what was left out, for its warnings."""
    names, bs = model.names, cfg.eval.batch_size
    train_mu, test_mu = encode_dataset(model, probe_set, bs), encode_dataset(model, test_set, bs)
    if cfg.eval.labels:
        cols = label_columns(cfg.data.files("train"), cfg.eval.labels)
        ytr = present_label_columns(probe_set, names, cfg.data.files("train"), cols)
        yte = present_label_columns(test_set, names, cfg.data.files("test"), cols)

        def scored(tr: dict, te: dict) -> tuple[dict, dict]:
            s = label_scores(tr, ytr, te, yte, cfg.eval.metric, cfg.eval.probe_train,
                             cfg.eval.probe_standardize)
            return {**s["per_modality"], "mean": s["mean"]}, s

        probe, scores = scored(train_mu, test_mu)
        agg = _aggregated(cfg, model, probe_set, test_set, names, train_mu, test_mu)
        aggregated = dict(probe) if agg is None else scored(*agg)[0]
        return probe, {"probe_labels": scores, "probe_aggregated": aggregated}, []
    if probe_set.labels is None and test_set.labels is None:  # reconstruction only
        return {}, {}, [NO_LABELS]
    ytr, yte = present_labels(probe_set, names), present_labels(test_set, names)
    probed, notes = labelled_modalities(names, ytr, yte)
    train_mu, test_mu = _only(train_mu, probed), _only(test_mu, probed)
    std = cfg.eval.probe_standardize
    probe = probe_accuracy(train_mu, ytr, test_mu, yte, cfg.eval.probe_train, std)
    agg = _aggregated(cfg, model, probe_set, test_set, probed, train_mu, test_mu)
    aggregated = dict(probe) if agg is None else probe_accuracy(
        agg[0], ytr, agg[1], yte, cfg.eval.probe_train, std)
    return probe, {"probe_aggregated": aggregated}, notes


def _aggregated(cfg, model: MultimodalVAE, probe_set, test_set, names: list[str],
                train_mu: dict, test_mu: dict) -> tuple[dict, dict] | None:
    """The aggregated latents of ``names`` (train, test), or None where they are the
    unimodal means: methods that decode z_m (MMVM, independent VAEs) aggregate
    nothing, so their aggregated probe is their probe."""
    bs, method = cfg.eval.batch_size, cfg.model.method
    agg_tr = _only(encode_aggregated(model, probe_set, method, bs), names)
    agg_te = _only(encode_aggregated(model, test_set, method, bs), names)
    same = all(np.array_equal(agg_tr[m], train_mu[m]) and
               np.array_equal(agg_te[m], test_mu[m]) for m in names)
    return None if same else (agg_tr, agg_te)


def _only(latents: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    return {m: latents[m] for m in names}
