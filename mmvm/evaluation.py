"""Evaluation protocol of the paper (docs/protocol.md): probes, coherence,
reconstruction error.

- **Latent probe** (:mod:`mmvm.probes`): a logistic regression per modality on the
  raw unimodal posterior means mu_m of (up to) ``probe_train`` training samples,
  scored on the test split; plus one classifier over all modalities' latents stacked
  as samples (the hippocampus protocol's shared-space probe). The **aggregated
  probe** (the authors' ``lr_aggregated``) fits the same probes on what each
  modality's decoder reads once all modalities are aggregated: the joint posterior
  mean for AVG / PoE / MoE / MoPoE, the unimodal mean for MMVM and independent VAEs. With ``eval.labels``, one
  probe per (modality, label column) scored by ``eval.metric`` (MIMIC-CXR: AUROC per
  CheXpert finding and view; CelebA: average precision per attribute).
- **Coherence**: encode modality m alone, decode every modality m' from that latent,
  take the likelihood's mean as the generation (:meth:`MultimodalVAE.generate`: the
  image, or the most likely token per position for captions), classify it with a
  classifier trained on real m' data (:mod:`mmvm.classifiers`), compare with the
  sample's label. The latent is the method's own aggregation over the subset {m}:
  with only m present, AVG, PoE, MoE and MoPoE all reduce to q_m, and MMVM /
  independent read z_m ~ q_m; so every method uses q(z | x_m) (MMVAE+ its shared
  part, with the target's private part drawn from p(w) = N(0, I)). As the
  authors' code, each generation decodes its own sample z ~ q(z | x_m)
  (``sample=True``, ``eval.coherence_sample``); ``sample=False`` the posterior mean.
- **Reconstruction error**: the loss's likelihood term on the test split,
  NLL = -sum_m w_m log p(x_m | z_m) per sample, with z drawn exactly as in training
  (the method's aggregation of all present modalities, one seeded reparametrised
  sample), reported per modality (mean over samples that have it) and in total, and
  beside it the NLL of one constant reconstruction (:mod:`mmvm.recon_baseline`).
- **Missing-modality imputation** (:mod:`mmvm.imputation`): each modality left out,
  decoded from the sample's other modalities (and from each one alone), its NLL on
  the real data; read between the constant's NLL and its own reconstruction's."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmvm.aggregation import aggregate, has_private_latent
from mmvm.chance import (
    add_class_counts,
    chance_levels,
    class_rates,
    evaluation_warnings,
    independent_accuracy,
    label_classes,
    labelled_rows,
)
from mmvm.data.label_names import class_names
from mmvm.encoding import (
    encode_aggregated,
    encode_dataset,
    model_device,
    present_label_columns,
    present_labels,
    row_chunks,
    unimodal_posteriors,
)
from mmvm.imputation import imputation_nll
from mmvm.latent_probes import run_probes
from mmvm.model import MultimodalVAE
from mmvm.probes import fit_probe, label_scores, labelled_modalities, probe_accuracy
from mmvm.provenance import environment, weights_digest
from mmvm.recon_baseline import baseline_nll
from mmvm.subsample import keep_rows

__all__ = ["chance_levels", "coherence", "conditional_latent", "encode_aggregated",
           "encode_dataset", "evaluate_run", "evaluation_warnings", "imputation_nll",
           "fit_probe", "label_scores", "labelled_modalities", "present_label_columns",
           "present_labels",
           "probe_accuracy", "reconstruction_nll", "summary_row", "unimodal_posteriors"]


# ------------------------------------------------------------------ coherence
def conditional_latent(model: MultimodalVAE, method: str, name: str, x: Tensor,
                       eps: Tensor | None = None,
                       posterior: tuple[Tensor, Tensor] | None = None,
                       target: str | None = None) -> Tensor:
    """The latent [B, D] the method decodes ``target`` (default ``name``) from modality
    ``name`` alone.

    The method's aggregation is applied with only ``name`` in the mask. For joint
    methods all slots hold the same joint z, for unimodal ones the decoded slot is
    z_name; MMVAE+ decodes the target's slot: [shared z of x_name, w ~ p(w) = N(0, I)],
    as both authors' codes generate at test time (epalu/mmvaeplus, thomassutter/mmvmvae;
    training's cross-reconstructions use the auxiliary prior r_target instead,
    :mod:`mmvm.mmvaeplus`); ``eps``'s private part is that noise. Never the source's
    private sample w_name; that is ``target = name``'s own [z, w]. ``eps`` [B, D] None gives the means.
    ``posterior`` (mu_m, logvar_m) of ``x``, when already encoded, saves encoding it.
    """
    mu_m, lv_m = posterior if posterior is not None else model.encode_modality(name, x)
    B, D = mu_m.shape
    M, j = len(model.names), model.names.index(name)
    mu = mu_m.new_zeros(B, M, D)
    lv = mu_m.new_zeros(B, M, D)
    mu[:, j], lv[:, j] = mu_m, lv_m
    mask = torch.zeros(B, M, dtype=torch.bool, device=mu.device)
    mask[:, j] = True
    noise = mu.new_zeros(B, M, D)
    if eps is not None:
        noise[:, :] = eps.to(mu).unsqueeze(1)
    split = has_private_latent(method)
    z, _ = aggregate(method, mu, lv, mask, noise, 0.0, model.private_dim)  # w ~ N(0, I)
    return z[:, model.names.index(target) if split and target is not None else j]


@torch.no_grad()
def coherence(model: MultimodalVAE, dataset, classifiers: Mapping, method: str,
              batch_size: int = 256, sample: bool = True, seed: int = 0) -> dict[str, Any]:
    """Cross-modal coherence: accuracy of classifier[m'] on decode_m'(z | x_m).

    ``sample`` (default, as the authors): every target m' decodes its own seeded draw
    z ~ q(z | x_m) (MMVAE+: with w ~ p(w) = N(0, I), as the authors generate);
    otherwise the means (MMVAE+: w = 0).

    Returns ``{"pairs": {"m->m'": acc}, "matrix": [[acc]] (rows source, cols target,
    NaN where no classifier), "mean": mean over pairs m != m', "self": mean over m = m,
    "degenerate": [pairs whose every generation (two or more) got one label],
    "per_class": {class id: {"coherence", "n"}} over the pairs m != m' by true class,
    "judged_class": {degenerate pair: that label}, "independent": {"m->m'": the
    accuracy generations with the same class frequencies would score were they
    independent of the labels, sum_k p(label k) p(judged k)}, "n": {m: samples}}``
    (a degenerate pair scores that class's frequency whatever the model does; a pair
    well below its "independent" arranges the classes otherwise than its source, a
    swapped or mirrored latent). Only samples with a known label and the source
    modality present count.
    """
    if dataset.labels is None:
        raise ValueError("the dataset has no labels; coherence needs them")
    names = model.names
    targets = [n for n in names if n in classifiers]
    if not targets:
        raise ValueError(f"no classifier for any of the model's modalities {names}")
    device = model_device(model)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    hits = {(s, t): 0 for s in names for t in targets}
    seen: dict[tuple[str, str], set[int]] = {(s, t): set() for s in names for t in targets}
    judged = {(s, t): torch.zeros(0) for s in names for t in targets}  # per class
    truth = {s: torch.zeros(0) for s in names}
    by_class = (torch.zeros(0), torch.zeros(0))  # cross pairs' (right, all) per class
    count = dict.fromkeys(names, 0)
    for rows in row_chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        for j, src in enumerate(names):
            keep = b["mask"][:, j] & (b["label"] >= 0)
            if src not in b["x"] or not bool(keep.any()):
                continue
            x, y = b["x"][src][keep].to(device), b["label"][keep].to(device)
            post = model.encode_modality(src, x)
            for tgt in targets:
                eps = torch.randn(len(x), model.code_dim, generator=gen) if sample else None
                z = conditional_latent(model, method, src, x, eps, post, target=tgt)
                pred = classifiers[tgt](model.generate(tgt, z)).argmax(1)
                hits[(src, tgt)] += int((pred == y).sum())
                seen[(src, tgt)].update(pred.unique().tolist())
                judged[(src, tgt)] = add_class_counts(judged[(src, tgt)], pred)
                if tgt != src:
                    by_class = (add_class_counts(by_class[0], y[pred == y]),
                                add_class_counts(by_class[1], y))
            truth[src] = add_class_counts(truth[src], y)
            count[src] += len(y)
    pairs = {f"{s}->{t}": hits[(s, t)] / count[s] if count[s] else math.nan
             for s in names for t in targets}
    matrix = [[pairs.get(f"{s}->{t}", math.nan) for t in names] for s in names]
    scored = {k: v for k, v in pairs.items() if not math.isnan(v)}  # NaN: no source row
    cross = [scored[f"{s}->{t}"] for s in names for t in targets if s != t
             and f"{s}->{t}" in scored]
    own = [scored[f"{s}->{s}"] for s in names if f"{s}->{s}" in scored]
    # one label for every generation, and not because every one was right
    one = {f"{s}->{t}": int(next(iter(c))) for (s, t), c in seen.items()
           if len(c) == 1 and count[s] > 1 and hits[(s, t)] < count[s]}
    independent = {f"{s}->{t}": independent_accuracy(truth[s], judged[(s, t)])
                   for s in names for t in targets if count[s]}
    return {"pairs": pairs, "matrix": matrix, "names": list(names),
            "mean": float(np.mean(cross)) if cross else math.nan,
            "self": float(np.mean(own)) if own else math.nan,
            "degenerate": list(one), "judged_class": one, "independent": independent,
            "n": {s: count[s] for s in names if count[s]},
            "per_class": class_rates(*by_class)}


# ------------------------------------------------------------------ reconstruction
@torch.no_grad()
def reconstruction_nll(model: MultimodalVAE, dataset, method: str, batch_size: int = 256,
                       seed: int = 0) -> dict[str, Any]:
    """Weighted test NLL -sum_m w_m log p(x_m | z_m), z as in training (seeded sample).

    Returns ``{"per_modality": {m: mean of -w_m log p over samples having m},
    "total": mean over samples of the sum over their modalities}``. For MoE / MoPoE
    the component a sample uses depends on its position in the batch (the reference's
    slice rule), so the number depends on ``batch_size`` like the training loss does.
    """
    device = model_device(model)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    M, D = len(model.names), model.code_dim
    w = model.likelihood_weights.to(device)
    sums, counts, total, n = torch.zeros(M), torch.zeros(M), 0.0, 0
    for rows in row_chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        x = {k: v.to(device) for k, v in b["x"].items()}
        mask = b["mask"].to(device)
        mu, lv = model.encode(x, mask)
        eps = torch.randn(len(rows), M, D, generator=gen).to(device)
        z, _ = aggregate(method, mu, lv, mask, eps, 0.0, model.private_dim)
        nll = -model.reconstruction_ll(x, z, mask) * w  # [B, M], 0 where absent
        sums += nll.sum(0).cpu()
        counts += mask.sum(0).cpu().float()
        total += float(nll.sum())
        n += len(rows)
    per = {name: float(sums[j] / counts[j]) if counts[j] else math.nan
           for j, name in enumerate(model.names)}
    return {"per_modality": per, "total": total / max(n, 1)}


# ------------------------------------------------------------------ everything
def evaluate_run(cfg, model: MultimodalVAE, train_set, test_set,
                 classifiers: Mapping | None = None,
                 imputation_draws: int = 1) -> dict[str, Any]:
    """Probe, coherence (when ``classifiers`` are given) and reconstruction of one run.

    ``cfg`` is the run's :class:`~mmvm.config.ExperimentConfig` (method, beta, eval
    sizes). ``classifiers``: a mapping modality -> classifier or a
    :class:`~mmvm.classifiers.TrainedClassifiers` (whose test accuracies are reported,
    and its modalities without a judge as warnings; none at all: no coherence).
    With ``cfg.eval.labels`` the probes are :func:`~mmvm.probes.label_scores` over
    those columns, read from ``cfg.data``'s files by sample id; ``result["probe"]``
    then holds each modality's mean ``cfg.eval.metric`` and ``result["probe_labels"]``
    the per-label scores; without labels it is empty. ``imputation_draws`` > 1: the
    imputation's predictive reading (:func:`~mmvm.imputation.imputation_nll`). JSON
    types only (NaN aside)."""
    bs = cfg.eval.batch_size
    method = cfg.model.method
    probe_set = train_set
    if cfg.eval.probe_train and len(train_set) > cfg.eval.probe_train:
        probe_set = train_set.subset(keep_rows(len(train_set), cfg.eval.probe_train))
    probe, extra, notes = run_probes(cfg, model, probe_set, test_set)
    result: dict[str, Any] = {
        "method": method, "beta": cfg.train.beta, "alpha": cfg.train.alpha,
        "latent_dim": model.latent_dim, "seed": cfg.train.seed,
        "n_probe_train": len(probe_set), "n_test": len(test_set), "probe": probe,
        "reconstruction": {**reconstruction_nll(model, test_set, method, bs, seed=cfg.train.seed),
                           "baseline": baseline_nll(model, probe_set, test_set, bs)},
        "imputation": imputation_nll(model, test_set, method, bs, seed=cfg.train.seed,
                                     draws=imputation_draws),
        "probe_metric": cfg.eval.metric, "probe_standardized": cfg.eval.probe_standardize,
        "coherence_sampled": cfg.eval.coherence_sample, **extra,
        # what computed these numbers, from which weights (mmvm.provenance)
        "environment": environment(next(model.parameters()).device),
        "weights_sha256": weights_digest(model.state_dict()),
    }
    models = getattr(classifiers, "models", classifiers)
    if models:
        result["coherence"] = coherence(model, test_set, models, method, bs,
                                        sample=cfg.eval.coherence_sample,
                                        seed=cfg.train.seed)
        accs = getattr(classifiers, "test_accuracy", None)
        if accs is not None:
            result["classifier_accuracy"] = dict(accs)
    if test_set.labels is not None:
        result["chance"] = chance_levels(test_set.labels, label_classes(probe_set, test_set))
        result["n_labelled"] = {"train": labelled_rows(probe_set),
                                "test": labelled_rows(test_set)}
        result["class_names"] = class_names(cfg.data.files("test"), cfg.data.label)
    result["warnings"] = evaluation_warnings(result) + notes + list(
        getattr(classifiers, "skipped", {}).values())
    return result


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """The flat row plots and tables use: method, beta, recon_nll, probe, coherence."""
    coh = result.get("coherence", {})
    return {"method": result["method"], "beta": result["beta"],
            "recon_nll": result["reconstruction"]["total"],
            "probe": result["probe"]["mean"], "probe_all": result["probe"].get("all", math.nan),
            "probe_agg": result.get("probe_aggregated", {}).get("mean", math.nan),
            "coherence": coh.get("mean", math.nan),
            "imputation_nll": result.get("imputation", {}).get("total", math.nan),
            "chance": result.get("chance", {}).get("majority")}  # None: no labels
