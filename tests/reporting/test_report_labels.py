"""``mmvm report`` with per-label probes (``eval.labels``: MIMIC-CXR's findings): a
table of each label's score per modality, mean ± standard error over seeds, and the
labels that could not be scored said so, not averaged in."""

from __future__ import annotations

import math

from tests.reporting.pages import eval_result, fake_run, mean_se, write_report

AUROC = {"label.edema": [0.70, 0.74, 0.78], "label.fracture": [0.55, 0.50, 0.60]}


def test_a_table_of_each_labels_probe(tmp_path):
    folders = []
    for seed in range(3):
        result = eval_result("mmvm", seed, 0.65, 100.0, 0.4)
        labels = {c: {"auroc": v[seed], "accuracy": 0.8} for c, v in AUROC.items()}
        labels["label.pleural_other"] = {"auroc": math.nan, "accuracy": 0.99}
        result.update(probe_metric="auroc", probe_labels={
            "metric": "auroc", "labels": {m: labels for m in ("m0", "m1")}})
        folders.append(fake_run(tmp_path / f"mmvm-seed{seed}", result))
    text, page = write_report(tmp_path, *folders)
    table = next(t for t in page.tables if t[0][:2] == ["group", "label"])
    assert table[0] == ["group", "label", "m0", "m1"]
    rows = {r[1]: r[2:] for r in table[1:]}
    for label, values in AUROC.items():
        assert rows[label] == [mean_se(values)] * 2
    assert rows["label.pleural_other"] == ["not evaluated"] * 2  # one class: no AUROC
    assert "latent probe (auroc) per modality" in text
