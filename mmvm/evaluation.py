"""Evaluation protocol of the paper (reference note, section 3): probes, coherence,
reconstruction error.

- **Latent probe**: a logistic regression per modality on the unimodal posterior
  means mu_m of (up to) ``probe_train`` training samples, scored on the test split;
  plus one classifier over all modalities' latents stacked as samples (the
  hippocampus protocol's shared-space probe).
- **Coherence**: encode modality m alone, decode every modality m' from that latent,
  classify the generation with a classifier trained on real m' data
  (:mod:`mmvm.classifiers`), compare with the sample's label. The latent is the
  method's own aggregation over the subset {m}: with only m present, AVG, PoE, MoE
  and MoPoE all reduce to q_m, and MMVM / independent read z_m ~ q_m; so every method
  uses q(z | x_m), by default its mean (``sample=True`` draws z instead).
- **Reconstruction error**: the loss's likelihood term on the test split,
  NLL = -sum_m w_m log p(x_m | z_m) per sample, with z drawn exactly as in training
  (the method's aggregation of all present modalities, one seeded reparametrised
  sample), reported per modality (mean over samples that have it) and in total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmvm.aggregation import get_method
from mmvm.model import MultimodalVAE


def _device(model: MultimodalVAE) -> torch.device:
    return next(model.parameters()).device


def _chunks(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield torch.arange(i, min(i + batch_size, n))


# ------------------------------------------------------------------ latents
@torch.no_grad()
def encode_dataset(model: MultimodalVAE, dataset, batch_size: int = 256,
                   device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """Unimodal posterior means mu_m [N_m, D] per modality, rows where m is present.

    Row order is the dataset's; :func:`present_labels` gives the matching labels.
    """
    device = torch.device(device) if device is not None else _device(model)
    model.eval()
    out: dict[str, list[np.ndarray]] = {n: [] for n in model.names}
    for rows in _chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        for j, name in enumerate(model.names):
            present = b["mask"][:, j]
            if name not in b["x"] or not bool(present.any()):
                continue
            mu, _ = model.encode_modality(name, b["x"][name][present].to(device))
            out[name].append(mu.cpu().numpy())
    return {n: np.concatenate(v) if v else np.zeros((0, model.latent_dim), np.float32)
            for n, v in out.items()}


def present_labels(dataset, names: list[str]) -> dict[str, np.ndarray]:
    """Labels of the rows :func:`encode_dataset` returns, per modality (-1 = unknown)."""
    if dataset.labels is None:
        raise ValueError("the dataset has no labels; probes and coherence need them")
    labels = dataset.labels.numpy()
    return {n: labels[dataset.mask[:, dataset.names.index(n)].numpy()] for n in names}


def fit_probe(x: np.ndarray, y: np.ndarray, standardize: bool = True):
    """Fit the project's one latent probe: a logistic regression of ``y`` on ``x``.

    scikit-learn defaults (lbfgs, C = 1, L2) with ``max_iter=10000``, as the reference.
    ``standardize`` puts a StandardScaler fitted on ``x`` in front.

    Parameters
    ----------
    x : [N, D] latents (e.g. posterior means).
    y : [N] integer labels, at least two classes.
    standardize : scale each latent dimension to zero mean, unit variance first.

    Returns
    -------
    The fitted scikit-learn estimator (``.score(x, y)``, ``.predict(x)``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(max_iter=10_000)
    model = make_pipeline(StandardScaler(), clf) if standardize else clf
    return model.fit(x, y)


def probe_accuracy(
    train_mu: Mapping[str, np.ndarray], train_y: Mapping[str, np.ndarray] | np.ndarray,
    test_mu: Mapping[str, np.ndarray], test_y: Mapping[str, np.ndarray] | np.ndarray,
    max_train: int = 10_000, standardize: bool = True,
) -> dict[str, float]:
    """Test accuracy of a logistic regression on latents, per modality and ``"all"``.

    Each probe is :func:`fit_probe`: scikit-learn defaults (lbfgs, C = 1, L2) with
    ``max_iter=10000``, as the reference. ``standardize`` (default) puts a StandardScaler fitted on the training latents in
    front: lbfgs then converges in far fewer iterations on latents whose scales differ
    by orders of magnitude; it changes the effective strength of the C = 1 penalty, so
    numbers may differ slightly from raw-mu probes. The first ``max_train`` training
    rows (0 = all) of each modality are used. Rows with label -1 are dropped.

    ``"all"`` is one classifier fitted on every modality's training latents stacked as
    samples and scored on every modality's test latents (a shared latent space scores
    high, modality-specific clusters low); ``"mean"`` is the mean over modalities.
    """
    def per(y, name):
        return np.asarray(y[name] if isinstance(y, Mapping) else y)

    acc: dict[str, float] = {}
    stack = {"xtr": [], "ytr": [], "xte": [], "yte": []}
    for name in train_mu:
        xtr, ytr = np.asarray(train_mu[name]), per(train_y, name)
        xte, yte = np.asarray(test_mu[name]), per(test_y, name)
        if len(xtr) != len(ytr) or len(xte) != len(yte):
            raise ValueError(f"modality {name!r}: latents and labels differ in length "
                             f"({len(xtr)} vs {len(ytr)}, {len(xte)} vs {len(yte)})")
        keep_tr, keep_te = ytr >= 0, yte >= 0
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
        if max_train:
            xtr, ytr = xtr[:max_train], ytr[:max_train]
        if len(np.unique(ytr)) < 2 or len(yte) == 0:
            raise ValueError(f"modality {name!r}: a probe needs at least two classes in "
                             f"train and some test rows (got {len(ytr)} / {len(yte)})")
        acc[name] = float(fit_probe(xtr, ytr, standardize).score(xte, yte))
        for k, v in zip(stack, (xtr, ytr, xte, yte), strict=True):
            stack[k].append(v)
    acc["mean"] = float(np.mean([acc[n] for n in train_mu]))
    if len(train_mu) > 1:
        xtr, ytr, xte, yte = (np.concatenate(stack[k]) for k in stack)
        acc["all"] = float(fit_probe(xtr, ytr, standardize).score(xte, yte))
    return acc


# ------------------------------------------------------------------ coherence
def conditional_latent(model: MultimodalVAE, method: str, name: str, x: Tensor,
                       eps: Tensor | None = None) -> Tensor:
    """The latent [B, D] the method decodes from modality ``name`` alone.

    The method's aggregation is applied with only ``name`` in the mask, and the latent
    of that slot is returned (for joint methods all slots hold the same joint z; for
    unimodal ones the slot is z_m). ``eps`` [B, D] None gives the mean.
    """
    mu_m, lv_m = model.encode_modality(name, x)
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
    z, _ = get_method(method)(mu, lv, mask, noise, 0.0)
    return z[:, j]


@torch.no_grad()
def coherence(model: MultimodalVAE, dataset, classifiers: Mapping, method: str,
              batch_size: int = 256, sample: bool = False, seed: int = 0) -> dict[str, Any]:
    """Cross-modal coherence: accuracy of classifier[m'] on decode_m'(z | x_m).

    Returns ``{"pairs": {"m->m'": acc}, "matrix": [[acc]] (rows source, cols target,
    NaN where no classifier), "mean": mean over pairs m != m', "self": mean over m = m}``.
    Only samples with a known label and the source modality present count.
    """
    if dataset.labels is None:
        raise ValueError("the dataset has no labels; coherence needs them")
    names = model.names
    targets = [n for n in names if n in classifiers]
    if not targets:
        raise ValueError(f"no classifier for any of the model's modalities {names}")
    device = _device(model)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    hits = {(s, t): 0 for s in names for t in targets}
    count = dict.fromkeys(names, 0)
    for rows in _chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        for j, src in enumerate(names):
            keep = b["mask"][:, j] & (b["label"] >= 0)
            if src not in b["x"] or not bool(keep.any()):
                continue
            x, y = b["x"][src][keep].to(device), b["label"][keep].to(device)
            eps = torch.randn(len(x), model.latent_dim, generator=gen) if sample else None
            z = conditional_latent(model, method, src, x, eps)
            for tgt in targets:
                pred = classifiers[tgt](model.decode(tgt, z)).argmax(1)
                hits[(src, tgt)] += int((pred == y).sum())
            count[src] += len(y)
    pairs = {f"{s}->{t}": hits[(s, t)] / count[s] if count[s] else math.nan
             for s in names for t in targets}
    matrix = [[pairs.get(f"{s}->{t}", math.nan) for t in names] for s in names]
    cross = [pairs[f"{s}->{t}"] for s in names for t in targets if s != t]
    own = [pairs[f"{s}->{s}"] for s in names if s in targets]
    return {"pairs": pairs, "matrix": matrix, "names": list(names),
            "mean": float(np.nanmean(cross)) if cross else math.nan,
            "self": float(np.nanmean(own)) if own else math.nan}


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
    device = _device(model)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    M, D = len(model.names), model.latent_dim
    w = model.likelihood_weights.to(device)
    sums, counts, total, n = torch.zeros(M), torch.zeros(M), 0.0, 0
    for rows in _chunks(len(dataset), batch_size):
        b = dataset.batch(rows)
        x = {k: v.to(device) for k, v in b["x"].items()}
        mask = b["mask"].to(device)
        mu, lv = model.encode(x, mask)
        eps = torch.randn(len(rows), M, D, generator=gen).to(device)
        z, _ = get_method(method)(mu, lv, mask, eps, 0.0)
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
                 classifiers: Mapping | None = None) -> dict[str, Any]:
    """Probe, coherence (when ``classifiers`` are given) and reconstruction of one run.

    ``cfg`` is the run's :class:`~mmvm.config.ExperimentConfig` (method, beta, eval
    sizes). ``classifiers``: a mapping modality -> classifier or a
    :class:`~mmvm.classifiers.TrainedClassifiers` (whose test accuracies are reported).
    The result holds only JSON types (NaN aside).
    """
    names, bs = model.names, cfg.eval.batch_size
    method = cfg.model.method
    probe_set = train_set
    if cfg.eval.probe_train and len(train_set) > cfg.eval.probe_train:
        probe_set = train_set.subset(range(cfg.eval.probe_train))
    train_mu = encode_dataset(model, probe_set, bs)
    test_mu = encode_dataset(model, test_set, bs)
    probe = probe_accuracy(train_mu, present_labels(probe_set, names), test_mu,
                           present_labels(test_set, names), cfg.eval.probe_train)
    result: dict[str, Any] = {
        "method": method, "beta": cfg.train.beta, "alpha": cfg.train.alpha,
        "latent_dim": model.latent_dim, "seed": cfg.train.seed,
        "n_probe_train": len(probe_set), "n_test": len(test_set),
        "probe": probe,
        "reconstruction": reconstruction_nll(model, test_set, method, bs, seed=cfg.train.seed),
    }
    if classifiers is not None:
        models = getattr(classifiers, "models", classifiers)
        result["coherence"] = coherence(model, test_set, models, method, bs)
        accs = getattr(classifiers, "test_accuracy", None)
        if accs is not None:
            result["classifier_accuracy"] = dict(accs)
    return result


def summary_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """The flat row plots and tables use: method, beta, recon_nll, probe, coherence."""
    coh = result.get("coherence", {})
    return {"method": result["method"], "beta": result["beta"],
            "recon_nll": result["reconstruction"]["total"],
            "probe": result["probe"]["mean"], "probe_all": result["probe"].get("all", math.nan),
            "coherence": coh.get("mean", math.nan)}
