"""``mmvm report``: the settings column says what each evaluation used, and groups by data."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reporting.pages import eval_result, fake_run, summary_row, write_report


def test_evaluate_records_the_settings_it_used(real_run, tiny_polymnist):
    used = json.loads((real_run / "eval.json").read_text())["settings"]
    assert used["data"] == {"root": str(tiny_polymnist), "folders": [],
                            "train": "train.parquet", "test": "test.parquet",
                            "label": "label", "max_train": 0, "max_test": 32}
    assert used["dataset"]["variant"] == "translated"
    assert (used["dataset"]["train_samples"], used["dataset"]["test_samples"]) == (192, 32)
    assert used["eval"]["classifier_members"] >= 1 and "probe_train" in used["eval"]


def _run_evaluated_with(folder: Path, seed: int, used: dict, trained: dict | None = None,
                        data_root: str = "/data/polymnist") -> Path:
    """A fake run whose config.json holds ``trained`` as its [eval] section, evaluated
    (eval.json "settings", as mmvm evaluate records them) with ``used``."""
    probe = 0.5 + sum(map(ord, folder.name)) % 97 / 1000  # not one run given twice
    result = eval_result("mmvm", seed, probe, 100.0, 0.4)
    result["settings"] = {"eval": used.get("eval", {}),
                          "data": {"root": data_root, **used.get("data", {})},
                          "dataset": used.get("dataset", {})}
    fake_run(folder, result)
    config = json.loads((folder / "config.json").read_text())
    config["eval"] = trained or {"classifier_epochs": 40, "classifier_members": 3}
    config["data"] = {"root": "/elsewhere/polymnist", "max_train": 0}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_settings_are_the_ones_the_evaluation_used(tmp_path):
    """config.json's [eval] (the trainer's) is not what `mmvm evaluate --set ...` used:
    the report shows eval.json's "settings"."""
    used = {1: {"classifier_epochs": 1, "classifier_members": 1},
            2: {"classifier_epochs": 2, "classifier_members": 1}}
    runs = [_run_evaluated_with(tmp_path / f"e{e}-s{s}", s, {"eval": used[e]})
            for e in used for s in (0, 1)]
    text, page = write_report(tmp_path, *runs)
    assert summary_row(page, "mmvm", "2 ")["settings"] in (
        "eval.classifier_epochs=1", "eval.classifier_epochs=2")
    settings = {r[2] for r in page.tables[0][1:]}
    assert settings == {"eval.classifier_epochs=1", "eval.classifier_epochs=2"}
    # neither the trainer's 40 / 3 nor a data folder (the same data on every run)
    assert "classifier_members" not in text and "=40" not in text
    assert "data.root" not in text


def test_groups_on_other_data_show_root_variant_and_samples(tmp_path):
    translated = {"dataset": {"variant": "translated", "train_samples": 1000}}
    untranslated = {"dataset": {"variant": "untranslated", "train_samples": 500}}
    runs = [_run_evaluated_with(tmp_path / "t0", 0, translated),
            _run_evaluated_with(tmp_path / "t1", 1, translated, data_root="/scratch/poly"),
            _run_evaluated_with(tmp_path / "u0", 0, untranslated, data_root="/data/poly-u")]
    _, page = write_report(tmp_path, *runs)
    # the same data in two folders is one group, the other data another
    named = {r[3]: r[2] for r in page.tables[0][1:]}  # runs (seeds) -> "settings A"
    assert sorted(named) == ["1 (seed 0)", "2 (seeds 0, 1)"]
    header, *rows = page.tables[1]  # the settings in which the groups differ
    column = {name: header.index(name) for name in named.values()}
    table = {r[0]: {seeds: r[column[name]] for seeds, name in named.items()} for r in rows}
    assert table == {
        "data.root": {"2 (seeds 0, 1)": "/data/polymnist | /scratch/poly",
                      "1 (seed 0)": "/data/poly-u"},
        "dataset.train_samples": {"2 (seeds 0, 1)": "1000", "1 (seed 0)": "500"},
        "dataset.variant": {"2 (seeds 0, 1)": "translated", "1 (seed 0)": "untranslated"}}
