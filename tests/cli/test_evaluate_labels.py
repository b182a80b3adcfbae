"""`mmvm evaluate` and labels: a missing label column named with the ones there are,
per-label probes without a single label column, unlabelled data (reconstruction
only), and an eval.labels typo named before the judges train."""

from __future__ import annotations

from mmvm.data.dataset import MultimodalDataset
from tests.support.evaluation_data import (
    NAMES,
    TEST_ROWS,
    digit_vectors,
    run_copy,
    vector_config,
)


def test_a_label_column_the_data_lacks_is_named_with_the_ones_it_has(trained, tmp_path,
                                                                     capsys, no_scoring):
    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-plot",
                 "--set", "data.label=digit"]) == 2
    err = capsys.readouterr().err
    assert "the train data has no label column 'digit' (data.label); probes and coherence " \
           "need one label per sample. Its label columns: label; e.g. --set " \
           "data.label=label" in err
    assert not (run / "eval.json").exists()


def test_per_label_probes_need_no_single_label_column(trained, tmp_path, capsys):
    """configs/mimic_cxr.toml and celeba.toml probe label columns by name
    (eval.labels) and their files have no 'label' column: the check for one refused
    them (mmvm evaluate, and the federated server's evaluation)."""
    import json

    from mmvm.cli import main

    run = run_copy(trained, tmp_path)
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-plot",
                 "--set", "data.label=digit", "--set", 'eval.labels=["label"]',
                 "--set", "eval.classifier_epochs=1",
                 "--set", "eval.classifier_min_image_steps=0"]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert {m: list(v) for m, v in res["probe_labels"]["labels"].items()} == \
        {m: ["label"] for m in NAMES}
    assert 0.3 < res["probe"]["mean"] <= 1.0  # ten digits: chance ~0.1
    assert "coherence" not in res  # no single label to judge generations by
    lines = capsys.readouterr().out.splitlines()
    out = " ".join(" ".join(lines).split())
    # said once (each modality's "no judge" was printed, then repeated as a warning);
    # the warnings left are the tiny model's reconstructions and imputations, no better
    # than a constant
    said = [w for w in res["warnings"] if "no better than" not in w
            and "worse than one constant" not in w]
    assert "note: no coherence: its judges need one label per sample (data.label = " \
           "'digit')" in out and said == [] and "judge" not in " ".join(res["warnings"])


def test_unlabelled_data_is_evaluated_for_reconstruction(tmp_path, capsys):
    """Files without any label column: mmvm evaluate scores the reconstruction and
    says why there are no probes (it stopped at the missing label column, and with
    eval.labels = [] raised an IndexError)."""
    import json

    from mmvm.cli import main
    from mmvm.data.labels import NO_LABELS
    from mmvm.training import train

    paths = digit_vectors(tmp_path, labelled=False)
    train(vector_config(tmp_path, epochs=1),
          MultimodalDataset.from_parquet(paths["train"], NAMES), show_progress=False)
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--device", "cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps to the terminal
    assert f"warning: {NO_LABELS}" in out and f"no probes, {TEST_ROWS} test rows" in out
    assert "probe acc" not in out and "Traceback" not in out
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["probe"] == {} and result["reconstruction"]["total"] > 0
    assert "coherence" not in result and NO_LABELS in result["warnings"]


def test_a_typo_in_eval_labels_is_named_before_the_judges_train(trained, tmp_path, capsys,
                                                                 no_scoring, monkeypatch):
    import mmvm.classifiers
    from mmvm.cli import main

    monkeypatch.setattr(mmvm.classifiers, "classifiers_for", lambda *a, **k: 1 / 0)
    run = run_copy(trained, tmp_path)
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--no-plot",
                 "--set", 'eval.labels=["lable"]']) == 2
    err = capsys.readouterr().err
    assert "label column 'lable' (eval.labels) matches none" in err
    assert "did you mean 'label'?" in err
