"""``mmvm report``: Markdown beside PNGs, pictures drawn from checkpoints, bad inputs, pages it did not write."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mmvm.cli import main
from mmvm.reporting.render_html import GENERATOR, STYLE
from tests.reporting.pages import decoded, write_report


def test_markdown_report_puts_pngs_beside_it(tmp_path, fake_runs):
    out = tmp_path / "out" / "report.md"
    assert main(["report", *map(str, fake_runs), "--out", str(out)]) == 0
    md = out.read_text()
    assert "| mmvm | 1 | 3 (seeds 0, 1, 2) | 0.600 ± 0.058 |" in md
    pngs = sorted((tmp_path / "out" / "report_files").glob("*.png"))
    assert pngs and all(f"report_files/{p.name}" in md for p in pngs)
    assert all(Image.open(p).size[0] > 100 for p in pngs)


def test_a_trained_and_evaluated_run_says_what_computed_it(real_run):
    """eval.json names the evaluating process's environment, the checkpoint the
    training's (mmvm.provenance): a rerun elsewhere that differs can be explained."""
    import torch

    from mmvm.checkpoint import load_checkpoint
    from mmvm.provenance import weights_digest

    result = json.loads((real_run / "eval.json").read_text())
    state = load_checkpoint(real_run / "checkpoint.pt")
    evaluated, trained = result["environment"], state["environment"]
    for env in (evaluated, trained):
        assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert trained["threads"] == 1  # train.num_threads=1, as the run was given
    assert evaluated["threads"] == 1  # mmvm evaluate --threads 1
    assert result["trained_with"] == trained
    assert result["weights_sha256"] == weights_digest(state["model"])


def test_generate_draws_grid_and_latents_from_the_checkpoint(tmp_path, real_run):
    run = shutil.copytree(real_run, tmp_path / "copy")
    (run / "generations.png").unlink()
    text, _ = write_report(tmp_path, run)
    assert "no generations.png in its run folders (--generate draws one)" in text
    text, page = write_report(tmp_path, run, extra=["--generate"])
    assert "generations drawn from the checkpoint of copy" in text
    assert "latents drawn from the checkpoint of copy" in text
    assert all(decoded(src).size[0] > 100 for src in page.images)


@pytest.mark.parametrize("case", ["missing", "not-a-run", "corrupt", "no-runs", "png"])
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, case):
    target = tmp_path / "x"
    if case == "not-a-run":
        target.mkdir()
    elif case == "corrupt":
        target.mkdir()
        (target / "eval.json").write_text("{not json")
    elif case == "no-runs":
        target = tmp_path / "results.json"
        target.write_text("[]")
    elif case == "png":
        target = tmp_path / "picture.png"
        target.write_bytes(b"\x89PNG")
    out = tmp_path / "report.html"
    out.write_text(f"{GENERATOR}\nthe previous report")
    assert main(["report", str(target), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmvm report: error: ")
    assert {"missing": f"{target}: no such file or folder",
            "not-a-run": f"{target}: not a run folder (no eval.json, results.json or "
                         "checkpoint.pt)",
            "corrupt": f"{target / 'eval.json'}: corrupt JSON",
            "no-runs": "no runs to report",
            "png": f"{target}: not a results file"}[case] in err
    assert out.read_text() == f"{GENERATOR}\nthe previous report"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_page_mmvm_report_did_not_write_is_never_written_over(tmp_path, fake_runs,
                                                                 capsys):
    """An earlier report (HTML or Markdown) is replaced; a user's own page of the same
    suffix is refused, unchanged."""
    for name in ("report.html", "report.md"):
        out = tmp_path / name
        assert main(["report", *map(str, fake_runs), "--out", str(out)]) == 0
        assert main(["report", *map(str, fake_runs), "--out", str(out)]) == 0  # again
        own = tmp_path / f"notes{out.suffix}"
        own.write_text("# my notes\n")
        assert main(["report", *map(str, fake_runs), "--out", str(own)]) == 2
        assert f"--out {own}: exists and was not written by mmvm report (left as it " \
            "is)" in capsys.readouterr().err
        assert own.read_text() == "# my notes\n"
    legacy = tmp_path / "before-the-tag.html"  # an HTML report from before the tag
    legacy.write_text(f"<!DOCTYPE html>\n<head>\n<style>{STYLE}</style>\n</head>\n")
    assert main(["report", *map(str, fake_runs), "--out", str(legacy)]) == 0


def test_an_out_of_neither_format_names_both(tmp_path, fake_runs, capsys):
    out = tmp_path / "r.pdf"
    assert main(["report", str(fake_runs[0]), "--out", str(out)]) == 2
    assert f"--out {out}: mmvm report writes an HTML page (.html, .htm) or Markdown " \
           "(.md, .markdown); give a name ending in one of them" in capsys.readouterr().err
    assert not out.exists()


def test_a_refused_runs_empty_folder_is_left_out_with_a_note(tmp_path, fake_runs):
    """A run the sites refused at its first message leaves an empty run-<id> folder:
    `mmvm report runs/*` stopped on it ("not a run folder")."""
    empty = tmp_path / "runs" / "run-789"
    empty.mkdir(parents=True)
    out = tmp_path / "out" / "report.md"
    assert main(["report", *map(str, fake_runs), str(empty), "--out", str(out)]) == 0
    md = out.read_text()
    assert "run-789: left out: a federated run folder with nothing in it" in md
    assert "| mmvm | 1 | 3 (seeds 0, 1, 2) |" in md


def test_an_unfinished_federated_run_is_left_out_with_a_note(tmp_path, fake_runs, capsys):
    """`mmvm report runs/*` over a federated run that failed or was stopped (its
    folder holds the server's state, no results) reports the others and says why that
    one is missing and how to finish it (it stopped the report: "not a run folder")."""
    unfinished = tmp_path / "runs" / "run-123"
    unfinished.mkdir()
    (unfinished / "server_state.pt").write_bytes(b"state")
    out = tmp_path / "out" / "report.md"
    assert main(["report", *map(str, fake_runs), str(unfinished), "--out", str(out)]) == 0
    md = out.read_text()
    assert "run-123: left out: a federated run that has not finished" in md
    assert "resume='123'" in md and "| mmvm | 1 | 3 (seeds 0, 1, 2) |" in md
    assert main(["report", str(unfinished), "--out", str(tmp_path / "alone.md")]) == 2
    err = capsys.readouterr().err
    assert "no runs to report" in err and "resume='123'" in err
    # once a resume finished it (results in its own folder), `runs/*` takes both: the
    # first is left out as continued, not as unfinished (it stopped the report)
    resumed = tmp_path / "runs" / "run-456"
    resumed.mkdir()
    (resumed / "results.json").write_text('{"settings": {"resume": "123"}, "sites": {}}')
    assert main(["report", *map(str, fake_runs), str(unfinished), "--out", str(out)]) == 0
    md = out.read_text()
    assert "run-123: left out: its training was resumed and finished in run-456" in md
    assert "has not finished" not in md


def test_generate_names_the_classes_the_test_files_store(tmp_path, real_run,
                                                         monkeypatch):
    """Pictures drawn from a checkpoint title and colour by class name where the
    files name the classes, as the run's own pictures do (a hospital walkthrough's
    report read 'label [1, 0, 0, 2]' beside a run page that said normal, effusion)."""
    import matplotlib.axes

    from mmvm.data import label_names
    from mmvm.reporting.collect import read_run_folder
    from mmvm.reporting.generate import generations, latents, load

    asked, titles, legends = [], [], []

    def named(paths, column):
        asked.append(([p.name for p in paths], column))
        return [f"class{i}" for i in range(10)]

    monkeypatch.setattr(label_names, "label_names_for", named)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, text, **kw: titles.append(text))
    monkeypatch.setattr(matplotlib.axes.Axes, "legend",
                        lambda ax, *a, **kw: legends.extend(
                            ax.get_legend_handles_labels()[1]))
    loaded = load(read_run_folder(real_run))
    assert asked == [(["test.parquet"], "label")]
    ticks = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks",
                        lambda ax, where, labels=None, **kw: labels and ticks.append(labels))
    generations(loaded)
    shown = loaded.test.labels[:8].tolist()
    assert titles[0] == "mmvm: generated from m0 (above each: label)"
    assert ticks[0] == [f"class{i}" for i in shown]  # each column's class
    titles.clear()
    latents(loaded, "x")
    assert legends and set(legends) <= {f"class{i}" for i in range(10)}, legends
    # a panel per modality, as the run's own picture: pooled, each class showed twice
    names = loaded.model.names
    assert [t.split(" (")[0] for t in titles] == [f"x: {m}" for m in names]
