"""Latent probes (docs/protocol.md): the project's one probe and its scores.

- :func:`fit_probe`: a logistic regression (scikit-learn defaults, ``max_iter=10000``)
  of a label on latents, the one probe every score here uses;
- :func:`probe_accuracy`: one probe per modality on one label column (PolyMNIST
  digits, hippocampus odors), scored by accuracy, plus the probe over all modalities'
  latents stacked;
- :func:`label_scores`: one probe per (modality, label column) for multi-label data,
  scored from ``predict_proba`` by AUROC (MIMIC-CXR's 14 CheXpert findings, per view)
  or average precision (CelebA's 40 attributes), accuracy alongside; rows whose label
  is -1 (unknown) are dropped per label.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mmvm.subsample import keep_rows

METRICS = ("accuracy", "auroc", "ap")


def fit_probe(x: np.ndarray, y: np.ndarray, standardize: bool = False):
    """Fit the project's one latent probe: a logistic regression of ``y`` on ``x``.

    scikit-learn defaults (lbfgs, C = 1, L2) with ``max_iter=10000`` on the raw
    latents, as the authors' code (``train_clf_lr_PM``). ``standardize`` puts a
    StandardScaler fitted on ``x`` in front (not the paper's protocol: it changes the
    effective strength of the C = 1 penalty; ``eval.probe_standardize``).

    Parameters
    ----------
    x : [N, D] latents (e.g. posterior means).
    y : [N] integer labels, at least two classes.
    standardize : scale each latent dimension to zero mean, unit variance first
        (default off, as the paper).

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
    max_train: int = 10_000, standardize: bool = False,
) -> dict[str, float]:
    """Test accuracy of a logistic regression on latents, per modality and ``"all"``.

    Each probe is :func:`fit_probe`: scikit-learn defaults (lbfgs, C = 1, L2) with
    ``max_iter=10000`` on the raw latents, as the reference. ``standardize`` puts a
    StandardScaler fitted on the training latents in front (off by default: it changes
    the effective strength of the C = 1 penalty, so numbers differ from the paper's).
    ``max_train`` training rows (0 = all) of each modality are used, drawn at random
    reproducibly (:func:`mmvm.subsample.keep_rows`). Rows
    with label -1 are dropped.

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
        keep = keep_rows(len(ytr), max_train)
        xtr, ytr = xtr[keep], ytr[keep]
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


def _score(metric: str, probe, x: np.ndarray, y: np.ndarray) -> float:
    """``metric`` of a fitted probe on (x, y); NaN when y has a single class."""
    if metric == "accuracy":
        return float(probe.score(x, y))
    if len(np.unique(y)) < 2:
        return math.nan  # AUROC / AP are undefined without both classes
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.preprocessing import label_binarize

    proba = probe.predict_proba(x)
    classes = probe.classes_
    if len(classes) == 2:  # the larger class is the positive one (ids 1/2 as 0/1)
        p, positive = proba[:, 1], y == classes[1]
        return float(roc_auc_score(positive, p) if metric == "auroc"
                     else average_precision_score(positive, p))
    if metric == "auroc":  # several classes: one-vs-rest, macro average
        return float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    return float(average_precision_score(label_binarize(y, classes=classes), proba))


def label_scores(
    train_mu: Mapping[str, np.ndarray], train_labels: Mapping[str, Mapping[str, np.ndarray]],
    test_mu: Mapping[str, np.ndarray], test_labels: Mapping[str, Mapping[str, np.ndarray]],
    metric: str = "auroc", max_train: int = 10_000, standardize: bool = False,
) -> dict:
    """Per-label probes: for every modality m and label column c, :func:`fit_probe` of
    c on m's latents, scored on the test latents by ``metric`` and by accuracy.

    Parameters
    ----------
    train_mu, test_mu : modality -> latents ``[N_m, D]``.
    train_labels, test_labels : modality -> {column -> ``int [N_m]``}, rows aligned
        with the latents; -1 = unknown, dropped for that column only.
    metric : ``"auroc"`` or ``"ap"`` (from ``predict_proba``), or ``"accuracy"``.
    max_train : use ``max_train`` labelled training rows drawn at random, reproducibly
        (0 = all; :func:`mmvm.subsample.keep_rows`).

    Returns
    -------
    ``{"metric", "per_modality": {m: mean over labels}, "mean": mean over modalities,
    "mean_accuracy", "labels": {m: {c: {metric: v, "accuracy": v, "n_train": n,
    "n_test": n, "chance": metric's chance, "majority": accuracy's}}}}``
    (:func:`chance_score` on the test labels). A label whose training rows hold one class only (no probe can
    be fitted) or whose test rows do not hold both classes (no AUROC / AP) scores NaN
    and is left out of the means.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown probe metric {metric!r}; choose one of {list(METRICS)}")
    out: dict = {"metric": metric, "per_modality": {}, "labels": {}}
    accs = []
    for m in train_mu:
        xtr_all, xte_all = np.asarray(train_mu[m]), np.asarray(test_mu[m])
        per: dict[str, dict] = {}
        for col, ytr_all in train_labels[m].items():
            ytr_all, yte_all = np.asarray(ytr_all), np.asarray(test_labels[m][col])
            if len(ytr_all) != len(xtr_all) or len(yte_all) != len(xte_all):
                raise ValueError(f"modality {m!r}, {col!r}: latents and labels differ in "
                                 f"length ({len(xtr_all)} vs {len(ytr_all)}, "
                                 f"{len(xte_all)} vs {len(yte_all)})")
            keep_tr, keep_te = ytr_all >= 0, yte_all >= 0
            xtr, ytr = xtr_all[keep_tr], ytr_all[keep_tr]
            xte, yte = xte_all[keep_te], yte_all[keep_te]
            keep = keep_rows(len(ytr), max_train)
            xtr, ytr = xtr[keep], ytr[keep]
            row = {metric: math.nan, "accuracy": math.nan, "n_train": len(ytr),
                   "n_test": len(yte), "chance": chance_score(metric, yte, np.unique(ytr)),
                   "majority": chance_score("accuracy", yte)}
            if len(np.unique(ytr)) >= 2 and len(yte):
                probe = fit_probe(xtr, ytr, standardize)
                row["accuracy"] = _score("accuracy", probe, xte, yte)
                row[metric] = _score(metric, probe, xte, yte)
            per[col] = row
        out["labels"][m] = per
        out["per_modality"][m] = _nanmean([r[metric] for r in per.values()])
        accs.append(_nanmean([r["accuracy"] for r in per.values()]))
    out["mean"] = _nanmean(list(out["per_modality"].values()))
    out["mean_accuracy"] = _nanmean(accs)
    return out


def chance_score(metric: str, y: np.ndarray, classes: np.ndarray | None = None) -> float:
    """What ``metric`` scores without information on test labels ``y``: accuracy of
    always the commonest class; AUROC 0.5; AP the share of the positive class (the
    larger of two, as :func:`_score` takes it) or, for several ``classes`` (the
    probe's; default: those in ``y``), the mean share over them (one-vs-rest, macro)."""
    y = np.asarray(y)
    if not len(y):
        return math.nan
    values, counts = np.unique(y, return_counts=True)
    if metric == "accuracy":
        return float(counts.max() / len(y))
    if len(values) < 2:
        return math.nan  # as the score itself: undefined with one class
    if metric == "auroc":
        return 0.5
    classes = values if classes is None else np.asarray(classes)
    shares = [float(np.mean(y == c)) for c in classes]
    return shares[1] if len(classes) == 2 else float(np.mean(shares))


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def labelled_modalities(names: list[str], train_y: Mapping[str, np.ndarray],
                        test_y: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """The modalities whose train and test rows have some known label (all of them
    when none has: the probe then says what is missing), and a warning per other."""
    def known(y: Mapping[str, np.ndarray], m: str) -> bool:
        return bool((np.asarray(y[m]) >= 0).any())

    probed = [m for m in names if known(train_y, m) and known(test_y, m)]
    if not probed:
        return list(names), []
    return probed, [f"no probe of {m}: none of its "
                    f"{'test' if known(train_y, m) else 'train'} samples has a label "
                    f"(joined by sample id across the data files)"
                    for m in names if m not in probed]
