"""Chance levels and untrustworthy coherence (mmvm.evaluation), judges' progress bars.

An accuracy is only a result above the majority-class rate of the test labels (always
answering the most frequent class), not above 1 / classes; a judge that labels every
generation of a source as one class gives that class's frequency as "coherence".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mmvm.chance import label_classes, labelled_rows
from mmvm.classifiers import (
    ClassifierConfig,
    TrainedClassifiers,
    train_classifier,
    training_steps,
)
from mmvm.cli.evaluate import chance_line, probe_rows
from mmvm.config import config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.evaluation import (
    chance_levels,
    coherence,
    evaluate_run,
    evaluation_warnings,
    summary_row,
)
from mmvm.progress import counting_bar
from tests.support.evaluation_data import ARGMAX, NAMES, digit_vectors, oracle_model

torch.set_num_threads(1)


def _skewed_dataset() -> MultimodalDataset:
    """100 one-hot samples, class 3 the most frequent (15), 10 classes, plus 5
    unlabelled rows (-1) that no chance level counts."""
    y = np.concatenate([np.full(15, 3), np.repeat([0, 1, 2, 4, 5, 6, 7, 8, 9], [10] * 8 + [5]),
                        np.full(5, -1)])
    x = np.eye(10, dtype=np.float32)[np.maximum(y, 0)]
    return MultimodalDataset([f"s{i}" for i in range(len(y))], {m: x for m in NAMES},
                             {m: 1.0 for m in NAMES}, np.ones((len(y), 3), bool), y)


class Always(nn.Module):
    """A judge that answers ``label`` whatever it is shown."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.label), 10).float()


def test_chance_is_the_majority_class_rate_not_one_over_classes():
    ds = _skewed_dataset()
    chance = chance_levels(ds.labels)
    assert chance == {"majority": 0.15, "majority_class": 3, "uniform": 0.1}
    assert chance_levels(np.array([1, 1, 0, -1])) == pytest.approx(
        {"majority": 2 / 3, "majority_class": 1, "uniform": 0.5})
    assert math.isnan(chance_levels(np.array([-1]))["majority"])
    assert "chance 0.150 (majority class 3" in chance_line(chance)
    # by its name where the files name the classes (a hospital read "class 3")
    names = [f"finding{k}" for k in range(10)]
    assert "(majority class 3 = 'finding3' of the test labels" in chance_line(chance, names)


def test_uniform_chance_counts_the_labels_classes_not_those_the_test_split_holds():
    """A binary label whose small test split holds one class: 1 / (classes present)
    said uniform chance was 1.000."""
    assert chance_levels(np.array([1, 1, 1]))["uniform"] == 1.0
    assert chance_levels(np.array([1, 1, 1]), classes=2)["uniform"] == 0.5
    assert chance_levels(np.array([0, 1, 2]), classes=2)["uniform"] == pytest.approx(1 / 3)
    ds = _skewed_dataset()
    assert labelled_rows(ds) == 100 and label_classes(ds) == 10
    one = ds.subset(np.arange(15))  # the fifteen 3s
    assert label_classes(one) == 1 and label_classes(one, ds) == 10
    assert labelled_rows(ds.subset(np.arange(100, 105))) == 0


def test_a_judge_answering_one_class_makes_coherence_degenerate_and_says_so():
    ds = _skewed_dataset()
    res = coherence(oracle_model(), ds, {m: Always(3) for m in NAMES}, "mmvm")
    assert all(v == pytest.approx(0.15) for v in res["pairs"].values())  # = chance
    assert res["degenerate"] == [f"{s}->{t}" for s in NAMES for t in NAMES]
    assert res["judged_class"]["m0->m2"] == 3
    lines = evaluation_warnings({"coherence": res})
    assert lines == ["every generation from m0, m1, m2 into m0, m1, m2 was judged class "
                     "3: the decoders have not learnt yet, or the judges are weak"]  # alike
    at_chance = evaluation_warnings({"coherence": res, "chance": chance_levels(ds.labels)})
    assert at_chance[1].startswith("coherence 0.150 is at chance (0.150, majority class)")
    per_target = {f"rat{s}->rat{t}": t for s in (1, 2) for t in (1, 3)}  # a walkthrough
    assert evaluation_warnings({"coherence": {"judged_class": per_target}}) == [
        "every generation from rat1, rat2 was judged one class per target modality (into "
        "rat1 class 1, into rat3 class 3): the decoders have not learnt yet, or the judges are weak"]
    one = evaluation_warnings({"coherence": {"judged_class": {"m0->m1": 2, "m1->m0": 3}}})
    assert one == [f"every generation from m{s} into m{t} was judged class {c}: the "
                   f"decoder has not learnt yet, or the judge is weak"
                   for s, t, c in ((0, 1, 2), (1, 0, 3))]
    # a judge that calls every real image the minority class: below, not "at" chance
    below = evaluation_warnings({"coherence": {"mean": 0.161}, "chance": {"majority": 0.839}})
    assert below == ["coherence 0.161 is below chance (0.839, majority class): the "
                     "generations do not carry their sample's label, or the judges do "
                     "not read it (see their accuracy)"]
    # only the judge of m1 is stuck: only the pairs into m1 are flagged
    mixed = coherence(oracle_model(), ds, {**ARGMAX, "m1": Always(7)}, "mmvm")
    assert mixed["degenerate"] == ["m0->m1", "m1->m1", "m2->m1"]
    assert coherence(oracle_model(), ds, ARGMAX, "mmvm")["degenerate"] == []


class Misreads(nn.Module):
    """A judge that reads one-hot inputs right but calls class ``lost`` class 0."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.argmax(1)
        return nn.functional.one_hot(torch.where(y == self.lost, 0, y), 10).float()


def test_a_class_never_generated_right_is_named_under_a_good_mean():
    """A hospital's four coherence cells were all 0.790: every nodule generation was
    wrong and every other right, and nothing said so."""
    ds = _skewed_dataset()  # class 7: 10 of the 100 labelled samples
    res = coherence(oracle_model(), ds, {m: Misreads(7) for m in NAMES}, "mmvm")
    per = res["per_class"]
    assert per["7"] == {"coherence": 0.0, "n": 10 * 6}  # 6 pairs m != m'
    assert per["3"] == {"coherence": 1.0, "n": 15 * 6}
    right = sum(c["coherence"] * c["n"] for c in per.values())
    assert right / sum(c["n"] for c in per.values()) == pytest.approx(res["mean"])
    names = [f"finding{k}" for k in range(10)]
    lines = evaluation_warnings({"coherence": res, "class_names": names})
    assert ("class 'finding7': coherence 0.00 over 60 cross-modal generations, against "
            "0.90 over all: its generations show another class") in lines[0]
    good = coherence(oracle_model(), ds, ARGMAX, "mmvm")
    assert not [w for w in evaluation_warnings({"coherence": good}) if "class" in w]


def test_evaluate_run_records_chance_and_warns_of_a_judge_near_chance():
    cfg = config_from_dict({"model": {"method": "mmvm", "latent_dim": 10, "modalities": {
        m: {"kind": "vector", "shape": [10], "likelihood": "gaussian", "width": 10,
            "layers": 1} for m in NAMES}}})
    ds = _skewed_dataset()
    judges = TrainedClassifiers(dict(ARGMAX), {"m0": 0.99, "m1": 0.2, "m2": 0.9})
    res = evaluate_run(cfg, oracle_model(), ds, ds, judges)
    assert res["chance"]["majority"] == 0.15 and res["chance"]["uniform"] == 0.1
    assert res["coherence"]["degenerate"] == []
    assert res["warnings"] == [
        "the m1 judge scores 0.200 on real test data, near chance (0.150, majority "
        "class): coherence through it is meaningless. A judge of few epochs may read "
        "more with more (eval.classifier_epochs: a few hundred images need tens); if "
        "more do not help, the label is barely readable from m1 itself (check a probe "
        "of its raw data), and no judge of m1 can tell coherent generations from "
        "chance"]
    assert summary_row(res)["chance"] == 0.15
    # the 5 unlabelled rows are not probed: the title counts the labelled ones
    assert res["n_labelled"] == {"train": 100, "test": 100} and res["n_test"] == 105
    assert probe_rows(res) == "probe on 100 labelled of 105 train, 100 labelled of 105 test"
    assert probe_rows({"n_probe_train": 9, "n_test": 4}) == "probe on 9 train, 4 test"
    no_judges = evaluate_run(cfg, oracle_model(), ds, ds)
    assert "coherence" not in no_judges and no_judges["warnings"] == []


@pytest.mark.parametrize("majority,acc,warned", [
    (0.92, 0.995, False),  # an imbalanced test set: a near-perfect judge is fine
    (0.92, 0.925, True),   # within a tenth of the way from chance to 1
    (0.006, 0.10, False),  # 200 classes: weak, but 17x chance
    (0.15, 0.20, True), (0.15, 0.90, False)])
def test_a_judge_is_near_chance_relative_to_the_way_from_chance_to_one(majority, acc,
                                                                         warned):
    lines = evaluation_warnings({"chance": {"majority": majority},
                                 "classifier_accuracy": {"m0": acc}})
    assert bool(lines) == warned, lines


def test_one_label_for_every_generation_is_not_degenerate_when_every_one_is_right():
    """A source whose test rows are all of one class, perfectly generated."""
    one_class = MultimodalDataset([f"s{i}" for i in range(20)],
                                  {m: np.tile(np.eye(10, dtype=np.float32)[4], (20, 1))
                                   for m in NAMES}, {m: 1.0 for m in NAMES},
                                  np.ones((20, 3), bool), np.full(20, 4))
    res = coherence(oracle_model(), one_class, ARGMAX, "mmvm", sample=False)
    assert res["mean"] == 1.0 and res["degenerate"] == []


def test_judge_training_reports_every_batch_of_every_member():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(45, 8, generator=g), torch.randint(0, 3, (45,), generator=g)
    cfg = ClassifierConfig(epochs=2, batch_size=20, width=2, members=2)
    steps = []
    train_classifier(x, y, 3, cfg, on_step=lambda: steps.append(1))
    assert len(steps) == training_steps(45, cfg) == 12
    seen = []
    with counting_bar(3, lambda k: seen.append(k) or f"{k}", enabled=False) as step:
        for _ in range(3):
            step()
    assert seen == [0, 1, 2, 3]


def test_load_or_train_draws_a_bar_per_judge_trained(tmp_path, capsys):
    from mmvm.classifiers import load_or_train

    p = digit_vectors(tmp_path)
    recipe = ClassifierConfig(epochs=2)
    load_or_train(p["train"], p["test"], ["m0"], cfg=recipe, progress=True)
    assert "judge m0 epoch 2/2" in capsys.readouterr().out
    load_or_train(p["train"], p["test"], ["m1"], cfg=recipe, progress=False)
    assert "judge" not in capsys.readouterr().out


def test_generations_below_label_independent_ones_name_a_swapped_latent_or_decoder():
    """m1's decoder draws class c + 1 for a latent of class c. Alone, every generation
    into m1 is judged wrong (0.0), its own reconstructions too, where judgements
    independent of the labels, with the same uniform class frequencies, score
    sum_k p_k q_k = 1/10 (0 of 100: probability 0.9^100 = 3e-5): m1's decoder is
    named. With m1's encoder shifted back (c -> c - 1) m1 reconstructs itself, and its
    latent is the one arranged otherwise: named as a latent that shares no space."""
    from tests.support.evaluation_data import onehot_dataset

    model = oracle_model(perm_m1=True)
    coh = coherence(model, onehot_dataset(100), ARGMAX, "mmvm")
    assert coh["independent"]["m0->m1"] == pytest.approx(0.1)
    assert coh["n"] == dict.fromkeys(NAMES, 100)
    said = [w for w in evaluation_warnings({"coherence": coh}) if "independent" in w]
    assert said == ["coherence into m1 is below what generations independent of the "
                    "labels would score, from m0 0.000 (independent 0.100); m2 0.000 "
                    "(independent 0.100): m1's own reconstructions are judged below it "
                    "too, so its decoder or its judge maps the classes elsewhere"]
    with torch.no_grad():
        model.encoders["m1"].mu.weight.copy_(torch.eye(10).roll(-1, 0))
    coh = coherence(model, onehot_dataset(100), ARGMAX, "mmvm")
    result = {"method": "mmvm", "coherence": coh, "probe": {"all": 0.4}}
    said = [w for w in evaluation_warnings(result) if "independent" in w]
    into = {w.split()[2]: w for w in said}  # "coherence into m0 ..."
    assert sorted(into) == NAMES and all("(pooled probe 0.400)" in w for w in said)
    assert into["m0"].startswith("coherence into m0 is below what generations "
                                 "independent of the labels would score, from m1 0.000")
    assert "these latents arrange the classes otherwise than m0's (swapped or " \
        "mirrored)" in into["m0"], said
    assert not [w for w in evaluation_warnings({**result, "method": "independent"})
                if "independent" in w]  # unaligned latents: what that method is
    fair = {"pairs": {"a->b": 0.21, "b->a": 0.30}, "independent": {"a->b": 0.25,
            "b->a": 0.25}, "n": {"a": 400, "b": 400}}  # 0.04 below: within 0.05
    assert evaluation_warnings({"coherence": fair}) == []
    fair["pairs"]["a->b"], fair["n"]["a"] = 0.15, 20  # 3 of 20: p = 0.23 for chance
    assert evaluation_warnings({"coherence": fair}) == []


def test_an_imputation_worse_than_a_constant_or_running_off_is_warned_of():
    result = {"reconstruction": {"per_modality": {"a": 60.0, "b": 50.0, "c": 80.0},
                                 "baseline": {"a": 71.4, "b": 66.8, "c": 91.5}},
              "imputation": {"rest": {"a": 72.7, "b": 60.0, "c": float("nan")},
                             "pairs": {"b->a": 70.0, "b->c": 7_566_420_298.0,
                                       "a->c": 93.0}}}
    said = evaluation_warnings(result)
    assert any(w.startswith("a imputed from the other modalities scores 72.7, worse "
                            "than one constant output (71.4)") for w in said)
    assert not any(w.startswith(("b imputed", "c imputed")) for w in said)
    result["imputation"]["rest"]["b"] = 67.0  # two worse: one line naming both
    both = [w for w in evaluation_warnings(result) if "imputed" in w]
    assert both == ["imputed from the other modalities, a 72.7, b 67.0 each score worse "
                    "than one constant output (a 71.4, b 66.8): their latents tell the "
                    "decoders nothing they can use about the sample (they share only a "
                    "label, or training was short)"]
    wild = [w for w in said if w.startswith("imputation runs off")]
    assert wild == [w for w in wild if "b->c 7,566,420,298" in w and "a->c" not in w]
    assert len(wild) == 1
    # a constant near 0 (a Gaussian on standardized values) is no scale for "runs off"
    small = {"reconstruction": {"baseline": {"a": 0.8}},
             "imputation": {"rest": {"a": 0.5}, "pairs": {"b->a": 9.0}}}
    assert not [w for w in evaluation_warnings(small) if w.startswith("imputation runs")]


def test_coherence_above_the_judges_real_accuracy_says_what_it_measures():
    """Walkthrough: 0.968 from ratA into ratD, whose judge scores 0.463 on real
    counts; the judge reads the decoder's noise-free mean more easily than real data.
    Said per target, with its sources; a pair within the margin, or the modality
    into itself, is not."""
    from mmvm.chance import evaluation_warnings

    result = {"coherence": {"pairs": {"ratA->ratD": 0.968, "ratB->ratD": 0.49,
                                      "ratD->ratD": 0.9, "ratA->ratB": 0.7},
                            "mean": 0.7},
              "classifier_accuracy": {"ratD": 0.463, "ratB": 0.95},
              "chance": {"majority": 0.26}}
    said = [w for w in evaluation_warnings(result) if "above its judge" in w]
    assert said == ["coherence into ratD (ratA 0.968) is above its judge's accuracy on "
                    "real test data (0.463): the judge reads the decoder's mean output, "
                    "free of the noise real ratD data carry, more easily than real ratD; "
                    "it says that the generations carry the label, not that they look "
                    "like real ratD"]
