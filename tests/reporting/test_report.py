"""``mmvm report``: one self-contained page from run folders and results files.

Fake-but-well-formed runs (2 methods x 3 seeds, eval.json as ``evaluate_run`` writes
it) give numbers to check against, one real tiny trained and evaluated run gives
real pictures; the HTML is parsed (every tag closed), its tables are read back and
every embedded picture is decoded. No headless browser is installed here, so the page
is not rendered as a browser would.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmvm.cli import main
from mmvm.reporting.render_html import GENERATOR, STYLE
from mmvm.reporting.stats import estimate

ROOT = Path(__file__).resolve().parents[2]
POLYMNIST = str(ROOT / "configs" / "polymnist.toml")
NAMES = ["m0", "m1", "m2"]
PROBES = {"mmvm": [0.5, 0.6, 0.7], "poe": [0.30, 0.35, 0.40]}
RECON = {"mmvm": [100.0, 110.0, 120.0], "poe": [90.0, 95.0, 97.0]}
COHERENCE = {"mmvm": [0.40, 0.45, 0.50], "poe": [0.20, 0.22, 0.30]}
VOID = {"meta", "img", "br", "hr", "link", "input"}


# ------------------------------------------------------------------ inputs
def _eval(method, seed, probe, recon, coh) -> dict:
    pairs = {f"{a}->{b}": coh for a in NAMES for b in NAMES}
    return {"method": method, "beta": 1.0, "alpha": 0.0, "latent_dim": 8, "seed": seed,
            "n_probe_train": 100, "n_test": 50, "probe_metric": "accuracy",
            "probe": {**{m: probe for m in NAMES}, "mean": probe, "all": probe - 0.05},
            "probe_aggregated": {**{m: probe for m in NAMES}, "mean": probe + 0.01},
            "reconstruction": {"per_modality": {m: recon / 3 for m in NAMES},
                               "total": recon},
            "coherence": {"pairs": pairs, "matrix": [[coh] * 3 for _ in NAMES],
                          "names": NAMES, "mean": coh, "self": coh + 0.1},
            "classifier_accuracy": {m: 0.9 for m in NAMES},
            "a_key_from_a_newer_version": {"nested": [1, 2, 3]}}


def _fake_run(folder: Path, result: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(result))
    config = {"model": {"method": result["method"], "latent_dim": 8},
              "train": {"beta": result["beta"], "seed": result["seed"], "epochs": 3}}
    (folder / "config.json").write_text(json.dumps(config))
    rows = [{"epoch": e, "step": 3 * e, "loss": 200 - 10 * e, "rec_nll": 190 - 10 * e,
             "reg": 10.0, "alpha": 0.0, "seconds": 1.0} for e in (1, 2, 3)]
    with open(folder / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture
def fake_runs(tmp_path) -> list[Path]:
    """2 methods x 3 seeds of evaluated run folders."""
    return [_fake_run(tmp_path / "runs" / f"{m}-seed{s}",
                      _eval(m, s, PROBES[m][s], RECON[m][s], COHERENCE[m][s]))
            for m in PROBES for s in range(3)]


@pytest.fixture(scope="module")
def real_run(tiny_polymnist, tmp_path_factory) -> Path:
    """A tiny PolyMNIST run, trained 1 epoch and evaluated (no coherence: cheap)."""
    out = tmp_path_factory.mktemp("real") / "mmvm-real"
    sets = [f'data.root="{tiny_polymnist}"', f'train.out_dir="{out}"', "train.epochs=1",
            "train.batch_size=64", 'train.device="cpu"', "train.num_threads=1",
            "model.latent_dim=8", "data.max_test=32"]
    sets += [f"model.modalities.m{i}.width=4" for i in range(3)]
    flags = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--config", POLYMNIST, "--no-progress", *flags]) == 0
    assert main(["evaluate", "--config", POLYMNIST, *flags, "--run", str(out),
                 "--device", "cpu", "--no-coherence"]) == 0
    return out


# ------------------------------------------------------------------ reading the page
class Page(HTMLParser):
    """Checks that every opened tag is closed in order; keeps tables and images."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _report(tmp_path, *inputs, extra=()) -> tuple[str, Page]:
    out = tmp_path / "report.html"
    assert main(["report", *map(str, inputs), "--out", str(out), *extra]) == 0
    text = out.read_text()
    page = Page(text)
    assert page.errors == [] and page.stack == []
    return text, page


def _summary_row(page: Page, method: str, runs: str = "") -> dict[str, str]:
    """The summary row of ``method`` whose "runs (seeds)" starts with ``runs``."""
    header, *rows = page.tables[0]
    found = [dict(zip(header, r, strict=True)) for r in rows if r[0] == method]
    return next(r for r in found if r["runs (seeds)"].startswith(runs))


def _se(values) -> str:
    return f"{statistics.mean(values):.3f} ± " \
           f"{statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def _decoded(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    image.load()
    return image


# ------------------------------------------------------------------ tests
def test_standard_error_of_three_probes():
    est = estimate([0.5, 0.6, 0.7])
    assert est.n == 3 and est.mean == pytest.approx(0.6)
    assert est.se == pytest.approx(0.1 / math.sqrt(3))
    assert str(est) == "0.600 ± 0.058"
    assert str(estimate([0.25])) == "0.250 (1 seed)" and estimate([]) is None


def test_html_report_of_fake_and_real_runs(tmp_path, fake_runs, real_run):
    text, page = _report(tmp_path, *fake_runs, real_run)
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    for method in PROBES:
        row = _summary_row(page, method, "3 ")
        assert row["runs (seeds)"] == "3 (seeds 0, 1, 2)"
        assert row["latent probe (mean over modalities)"] == _se(PROBES[method])
        assert row["coherence (m -> m', m != m')"] == _se(COHERENCE[method])
        aggregated = [p + 0.01 for p in PROBES[method]]
        assert row["latent probe (aggregated latent)"] == _se(aggregated)
        recon = row["reconstruction NLL (test, per sample)"]
        mean, se = recon.split(" ± ")
        assert float(mean) == pytest.approx(statistics.mean(RECON[method]), abs=0.05)
        want = statistics.stdev(RECON[method]) / math.sqrt(3)
        assert float(se) == pytest.approx(want, abs=0.05)
    assert _summary_row(page, "mmvm", "3 ")["latent probe (mean over modalities)"] \
        == "0.600 ± 0.058"
    # the real run is its own group (other settings), evaluated without coherence
    real = _summary_row(page, "mmvm", "1 (seed 0)")
    assert real["coherence (m -> m', m != m')"] == "not evaluated"
    assert real["latent probe (mean over modalities)"].endswith("(1 seed)")
    # figures: scatter x2, coherence bars and matrices, one generation grid (the real
    # run's), training curves per method
    assert len(page.images) >= 6
    for src in page.images:
        image = np.asarray(_decoded(src).convert("L"), dtype=float)
        assert min(image.shape) >= 100 and image.std() > 5  # not blank
    assert "generations of run mmvm-real" in text


def test_one_seed_and_missing_sections(tmp_path):
    only_probe = {"method": "mmvm", "beta": 2.0, "seed": 0, "probe": {"mean": 0.42}}
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps(only_probe))
    (folder / "generations.png").write_bytes(b"<svg onload=alert(1)>")  # not a PNG
    text, page = _report(tmp_path, folder)
    row = _summary_row(page, "mmvm")
    assert row["latent probe (mean over modalities)"] == "0.420 (1 seed)"
    assert row["coherence (m -> m', m != m')"] == "not evaluated"
    assert row["reconstruction NLL (test, per sample)"] == "not evaluated"
    assert page.images == [] and "not drawn" in text
    assert "generations.png is not a PNG file" in text and "<svg" not in text


def test_a_damaged_metrics_csv_is_named_and_the_others_still_drawn(tmp_path, fake_runs):
    """A truncated row in one run's metrics.csv: the page is written, that run is left
    out of its method's curves with the line named, the other runs are drawn."""
    with open(fake_runs[0] / "metrics.csv", "a") as fh:
        fh.write("4,12\n")
    (fake_runs[3] / "metrics.csv").write_bytes(b"epoch,loss\n1,\xff\n")
    text, page = _report(tmp_path, *fake_runs)
    assert f"{fake_runs[0].name}&#x27;s metrics.csv is left out" in text
    assert "line 5: 2 values for the header&#x27;s 7 columns" in text
    assert f"{fake_runs[3].name}&#x27;s metrics.csv is left out" in text
    assert "not a text (UTF-8) CSV file" in text
    assert "mmvm: loss, rec_nll, reg per epoch" in text and "poe: loss" in text


def test_a_seed_given_twice_is_not_averaged_as_two_seeds(tmp_path):
    """Two evaluations of seed 0 (say, two data sizes whose settings the folders do
    not record) are two rows, not one mean with a standard error."""
    folders = [_fake_run(tmp_path / "runs" / f"mmvm-{k}", _eval("mmvm", 0, p, 300.0, 0.2))
               for k, p in enumerate((0.40, 0.60))]
    text, page = _report(tmp_path, *folders)
    header, *rows = page.tables[0]
    column = header.index("latent probe (mean over modalities)")
    assert sorted(r[column] for r in rows if r[0] == "mmvm") == ["0.400 (1 seed)",
                                                                 "0.600 (1 seed)"]
    assert [r[header.index("settings")] for r in rows] == ["run mmvm-0", "run mmvm-1"]
    assert "seed 0 given more than once" in text


def test_rows_of_two_results_files_are_not_averaged_together(tmp_path):
    """Two benchmarks' results.csv (settings not recorded, seeds 0 and 1): two rows,
    each named by its file, not one mean over both."""
    files = []
    for k, probe in enumerate((0.30, 0.70)):
        path = tmp_path / f"bench{k}" / "results.csv"
        path.parent.mkdir()
        path.write_text("method,beta,seed,recon_nll,probe,coherence\n"
                        f"mmvm,1.0,{k},100.0,{probe},0.2\n")
        files.append(path)
    _, page = _report(tmp_path, *files)
    header, *rows = page.tables[0]
    probes = sorted(r[header.index("latent probe (mean over modalities)")] for r in rows
                    if r[0] == "mmvm")
    assert probes == ["0.300 (1 seed)", "0.700 (1 seed)"]


def test_strings_from_files_are_escaped(tmp_path):
    evil = "<script>alert('x')</script>"
    result = _eval(evil, 0, 0.5, 100.0, 0.3)
    _fake_run(tmp_path / "<b>run", result)
    text, page = _report(tmp_path, tmp_path / "<b>run", extra=["--title", "<i>t</i>"])
    assert "<script" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "&lt;b&gt;run" in text and "<title>&lt;i&gt;t&lt;/i&gt;</title>" in text
    assert _summary_row(page, evil)["latent probe (mean over modalities)"] \
        == "0.500 (1 seed)"


def test_results_files_and_federated_folders(tmp_path, fake_runs):
    table = tmp_path / "bench" / "results.csv"
    table.parent.mkdir()
    table.write_text("method,beta,seed,recon_nll,probe,coherence\n"
                     "moe,1.0,0,150,0.2,0.1\nmoe,1.0,1,160,0.3,0.1\n")
    fed = tmp_path / "run-7"
    fed.mkdir()
    (fed / "results.json").write_text(json.dumps({
        "settings": {"num_sites": 2, "exchange": "round"}, "bytes_total": 1234567,
        "config": {"model": {"method": "mmvm"}, "train": {"beta": 1.0, "seed": 0}},
        "sites": {"11": {"site": "site-a", "modalities": ["m0"], "n": 100}},
        "evaluation": {"11": {"site": "site-a", "probe/m0": 0.8, "recon_nll/m0": 50.0}},
        "probe_mean": 0.8}))
    text, page = _report(tmp_path, table, fed, fake_runs[0])
    assert _summary_row(page, "moe")["latent probe (mean over modalities)"] \
        == _se([0.2, 0.3])
    fed_row = next(r for r in page.tables[0][1:] if "sites' own probes" in r[-1])
    assert "0.800 (1 seed)" in fed_row
    assert "Federated run run-7" in text and "site-a" in text and "1,234,567" in text
    assert "Benchmark table:" in text


def test_a_benchmark_folder_shows_its_rows_with_the_run_folders_beside_them(tmp_path):
    """benchmarks/compare_methods.py writes results.csv and one folder per run beside
    it: the report of the folder keeps the rows' numbers and draws the runs' curves;
    a run folder given as well counts once."""
    bench = tmp_path / "bench"
    bench.mkdir()
    rows = ["method,beta,seed,recon_nll,probe,coherence"]
    for seed, probe in enumerate((0.30, 0.50)):
        _fake_run(bench / f"mmvm-beta1-seed{seed}", _eval("mmvm", seed, 0.9, 300.0, 0.2))
        rows.append(f"mmvm,1.0,{seed},100.0,{probe},0.2")
    (bench / "results.csv").write_text("\n".join(rows) + "\n")
    for inputs in ((bench,), (bench, bench / "mmvm-beta1-seed0"),
                   (bench / "mmvm-beta1-seed0", bench)):  # the row's numbers either way
        text, page = _report(tmp_path, *inputs)
        assert _summary_row(page, "mmvm")["latent probe (mean over modalities)"] \
            == _se([0.30, 0.50])
        assert "No metrics.csv" not in text and "no run folder" not in text
        assert "mmvm: loss, rec_nll, reg per epoch" in text
        assert "mmvm-beta1-seed0" in text and "mmvm-beta1-seed1" in text


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
    result = _eval("mmvm", seed, probe, 100.0, 0.4)
    result["settings"] = {"eval": used.get("eval", {}),
                          "data": {"root": data_root, **used.get("data", {})},
                          "dataset": used.get("dataset", {})}
    _fake_run(folder, result)
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
    text, page = _report(tmp_path, *runs)
    assert _summary_row(page, "mmvm", "2 ")["settings"] in (
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
    _, page = _report(tmp_path, *runs)
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


def test_markdown_report_puts_pngs_beside_it(tmp_path, fake_runs):
    out = tmp_path / "out" / "report.md"
    assert main(["report", *map(str, fake_runs), "--out", str(out)]) == 0
    md = out.read_text()
    assert "| mmvm | 1 | 3 (seeds 0, 1, 2) | 0.600 ± 0.058 |" in md
    pngs = sorted((tmp_path / "out" / "report_files").glob("*.png"))
    assert pngs and all(f"report_files/{p.name}" in md for p in pngs)
    assert all(Image.open(p).size[0] > 100 for p in pngs)


def test_generate_draws_grid_and_latents_from_the_checkpoint(tmp_path, real_run):
    run = shutil.copytree(real_run, tmp_path / "copy")
    (run / "generations.png").unlink()
    text, _ = _report(tmp_path, run)
    assert "no generations.png in its run folders (--generate draws one)" in text
    text, page = _report(tmp_path, run, extra=["--generate"])
    assert "generations drawn from the checkpoint of copy" in text
    assert "latents drawn from the checkpoint of copy" in text
    assert all(_decoded(src).size[0] > 100 for src in page.images)


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
