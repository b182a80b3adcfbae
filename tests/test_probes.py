"""mmvm.probes.label_scores: per-label probes scored by AUROC / average precision.

Oracles on hand-made latents: a label that is a linear function of the latent scores
AUROC = AP = 1; a label independent of it scores AUROC near 1/2 and AP near its
prevalence; unknown labels (-1) are dropped for that label only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmvm.probes import METRICS, label_scores


def _data(n, rng):
    z = rng.normal(size=(n, 4))
    labels = {"label.sep": (z[:, 0] > 0).astype(np.int64),  # readable from the latent
              "label.rand": rng.integers(0, 2, n)}  # independent of it
    return z, labels


@pytest.mark.parametrize("metric", ["auroc", "ap"])
def test_readable_label_scores_one_and_random_label_chance(metric):
    rng = np.random.default_rng(0)
    (ztr, ytr), (zte, yte) = _data(400, rng), _data(2000, rng)
    s = label_scores({"v": ztr}, {"v": ytr}, {"v": zte}, {"v": yte}, metric)
    per = s["labels"]["v"]
    assert per["label.sep"][metric] > 0.99 and per["label.sep"]["accuracy"] > 0.97
    chance = 0.5 if metric == "auroc" else yte["label.rand"].mean()
    assert abs(per["label.rand"][metric] - chance) < 0.05
    # each label carries its chance: what a random label scores, and the majority rate
    assert per["label.rand"]["chance"] == pytest.approx(chance)
    assert per["label.sep"]["majority"] == pytest.approx(
        max(yte["label.sep"].mean(), 1 - yte["label.sep"].mean()))
    assert s["per_modality"]["v"] == pytest.approx(
        (per["label.sep"][metric] + per["label.rand"][metric]) / 2)
    assert s["mean"] == s["per_modality"]["v"] and s["metric"] == metric


def test_unknown_labels_are_dropped_per_label_and_single_class_is_nan():
    rng = np.random.default_rng(1)
    (ztr, ytr), (zte, yte) = _data(300, rng), _data(300, rng)
    ytr["label.sep"][:100] = -1  # unknown for this label only
    ytr["label.one"] = np.zeros(300, np.int64)  # a single class: no probe
    yte["label.one"] = np.zeros(300, np.int64)
    yte["label.rand"][:50] = -1
    s = label_scores({"a": ztr, "b": ztr}, {"a": ytr, "b": ytr}, {"a": zte, "b": zte},
                     {"a": yte, "b": yte}, "auroc", max_train=150)
    per = s["labels"]["a"]
    assert per["label.sep"]["n_train"] == 150 and per["label.rand"]["n_train"] == 150
    assert per["label.sep"]["n_test"] == 300 and per["label.rand"]["n_test"] == 250
    assert math.isnan(per["label.one"]["auroc"]) and math.isnan(per["label.one"]["accuracy"])
    finite = [per["label.sep"]["auroc"], per["label.rand"]["auroc"]]
    assert s["per_modality"]["a"] == pytest.approx(np.mean(finite))  # NaN left out
    assert s["mean"] == pytest.approx(s["per_modality"]["b"])


def test_accuracy_metric_and_errors():
    rng = np.random.default_rng(2)
    (ztr, ytr), (zte, yte) = _data(200, rng), _data(200, rng)
    s = label_scores({"v": ztr}, {"v": ytr}, {"v": zte}, {"v": yte}, "accuracy")
    assert set(s["labels"]["v"]["label.sep"]) == {"accuracy", "n_train", "n_test", "chance",
                                                  "majority"}
    assert s["mean"] == pytest.approx(s["mean_accuracy"])
    assert METRICS == ("accuracy", "auroc", "ap")
    with pytest.raises(ValueError, match=r"unknown probe metric 'f1'"):
        label_scores({"v": ztr}, {"v": ytr}, {"v": zte}, {"v": yte}, "f1")
    with pytest.raises(ValueError, match=r"modality 'v', 'label.sep': latents and labels "
                                         r"differ in length"):
        label_scores({"v": ztr[:10]}, {"v": ytr}, {"v": zte}, {"v": yte})


def test_several_classes_use_one_vs_rest():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(600, 3))
    y = np.digitize(z[:, 0], [-0.5, 0.5])  # three classes along one latent axis
    s = label_scores({"v": z[:300]}, {"v": {"c": y[:300]}}, {"v": z[300:]},
                     {"v": {"c": y[300:]}}, "auroc")
    assert s["labels"]["v"]["c"]["auroc"] > 0.95
    s = label_scores({"v": z[:300]}, {"v": {"c": y[:300]}}, {"v": z[300:]},
                     {"v": {"c": y[300:]}}, "ap")
    assert 0.8 < s["labels"]["v"]["c"]["ap"] <= 1.0


def test_chance_scores_of_each_metric():
    """Closed forms: accuracy of the commonest class, AUROC 0.5, AP the positive share
    (binary) or 1/K (K classes, macro); one class: undefined but for accuracy."""
    from mmvm.probes import chance_score

    y = np.array([0, 0, 0, 1])
    assert chance_score("accuracy", y) == 0.75 and chance_score("ap", y) == 0.25
    assert chance_score("auroc", y) == 0.5
    assert chance_score("ap", np.array([0, 1, 2, 2])) == pytest.approx(1 / 3)
    assert chance_score("accuracy", np.zeros(3)) == 1.0
    assert np.isnan(chance_score("auroc", np.zeros(3)))
    assert np.isnan(chance_score("accuracy", np.zeros(0)))
    # a probe of random scores on many rows lands on the AP chance
    rng = np.random.default_rng(0)
    yy = (rng.random(20000) < 0.3).astype(int)
    from sklearn.metrics import average_precision_score

    assert average_precision_score(yy, rng.random(20000)) == pytest.approx(
        chance_score("ap", yy), abs=0.01)


def test_ap_of_labels_coded_1_and_2_takes_the_larger_as_positive():
    """Clinical labels coded 1/2: AP scored class 1 (sklearn's default pos_label)
    with the probability of class 2, so a good probe read 0.60 and its chance 0.20."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3000, 2))
    y = np.where(z[:, 0] > 0.85, 2, 1)  # ~20% class 2, readable from the latent
    s = label_scores({"v": z[:1000]}, {"v": {"c": y[:1000]}}, {"v": z[1000:]},
                     {"v": {"c": y[1000:]}}, "ap")
    row = s["labels"]["v"]["c"]
    assert row["ap"] > 0.9 and row["chance"] == pytest.approx(np.mean(y[1000:] == 2))
    noise = label_scores({"v": rng.normal(size=(1000, 2))}, {"v": {"c": y[:1000]}},
                         {"v": rng.normal(size=(2000, 2))}, {"v": {"c": y[1000:]}}, "ap")
    assert noise["labels"]["v"]["c"]["ap"] == pytest.approx(row["chance"], abs=0.05)
