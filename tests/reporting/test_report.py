"""``mmvm report``: one self-contained page from run folders and results files.

Fake-but-well-formed runs (2 methods x 3 seeds, eval.json as ``evaluate_run`` writes
it) give numbers to check against, one real tiny trained and evaluated run gives
real pictures; the HTML is parsed (every tag closed), its tables are read back and
every embedded picture is decoded. No headless browser is installed here, so the page
is not rendered as a browser would.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from mmvm.reporting.stats import estimate
from tests.reporting.pages import (
    COHERENCE,
    NAMES,
    PROBES,
    RECON,
    decoded,
    eval_result,
    fake_run,
    mean_se,
    summary_row,
    write_report,
)


# ------------------------------------------------------------------ tests
def test_standard_error_of_three_probes():
    est = estimate([0.5, 0.6, 0.7])
    assert est.n == 3 and est.mean == pytest.approx(0.6)
    assert est.se == pytest.approx(0.1 / math.sqrt(3))
    assert str(est) == "0.600 ± 0.058"
    assert str(estimate([0.25])) == "0.250 (1 seed)" and estimate([]) is None


def test_html_report_of_fake_and_real_runs(tmp_path, fake_runs, real_run):
    text, page = write_report(tmp_path, *fake_runs, real_run)
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    for method in PROBES:
        row = summary_row(page, method, "3 ")
        assert row["runs (seeds)"] == "3 (seeds 0, 1, 2)"
        assert row["latent probe (mean over modalities)"] == mean_se(PROBES[method])
        assert row["coherence (m -> m', m != m')"] == mean_se(COHERENCE[method])
        aggregated = [p + 0.01 for p in PROBES[method]]
        assert row["latent probe (aggregated latent)"] == mean_se(aggregated)
        recon = row["reconstruction NLL (test, per sample, summed over modalities)"]
        mean, se = recon.split(" ± ")
        assert float(mean) == pytest.approx(statistics.mean(RECON[method]), abs=0.05)
        want = statistics.stdev(RECON[method]) / math.sqrt(3)
        assert float(se) == pytest.approx(want, abs=0.05)
    assert summary_row(page, "mmvm", "3 ")["latent probe (mean over modalities)"] \
        == "0.600 ± 0.058"
    # the real run is its own group (other settings), evaluated without coherence
    real = summary_row(page, "mmvm", "1 (seed 0)")
    assert real["coherence (m -> m', m != m')"] == "not evaluated"
    assert real["latent probe (mean over modalities)"].endswith("(1 seed)")
    # the probes' chance beside them (0.26 against what? the walkthrough asked)
    chance = json.loads((real_run / "eval.json").read_text())["chance"]["majority"]
    assert real["probe chance (the commonest test label's share)"].startswith(
        f"{chance:.3f}")
    # figures: scatter x2, coherence bars and matrices, one generation grid (the real
    # run's), training curves per method
    assert len(page.images) >= 6
    for src in page.images:
        image = np.asarray(decoded(src).convert("L"), dtype=float)
        assert min(image.shape) >= 100 and image.std() > 5  # not blank
    assert "generations of run mmvm-real" in text


def test_one_seed_and_missing_sections(tmp_path):
    only_probe = {"method": "mmvm", "beta": 2.0, "seed": 0, "probe": {"mean": 0.42}}
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps(only_probe))
    (folder / "generations.png").write_bytes(b"<svg onload=alert(1)>")  # not a PNG
    text, page = write_report(tmp_path, folder)
    row = summary_row(page, "mmvm")
    assert row["latent probe (mean over modalities)"] == "0.420 (1 seed)"
    assert row["coherence (m -> m', m != m')"] == "not evaluated"
    assert row["reconstruction NLL (test, per sample, summed over modalities)"] == "not evaluated"
    assert page.images == [] and "not drawn" in text
    assert "generations.png is not a PNG file" in text and "<svg" not in text
    assert "1 run in 1 group, from:" in text
    assert "no eval.json here has a coherence section" in text  # evaluated without it


def test_a_run_not_yet_evaluated_is_told_how_to_be(tmp_path, real_run):
    """A run that mmvm train wrote and no one evaluated: the report said coherence
    "needs a label column", which the data had."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(real_run, run)
    (run / "eval.json").unlink()
    text, _ = write_report(tmp_path, run)
    assert "no run here has an eval.json yet: mmvm evaluate --run RUN_DIR" in text
    assert "label column" not in text


def test_curves_with_a_federated_run_are_captioned_per_step(tmp_path, fake_runs):
    """A federated run's metrics.csv has a row per window: its method's curves are
    drawn per optimiser step, and the caption said "per epoch" (a walkthrough)."""
    fed = fake_runs[0] / "metrics.csv"
    rows = fed.read_text().splitlines()
    fed.write_text("\n".join([rows[0] + ",window"] + [f"{r},{i}" for i, r in
                                                      enumerate(rows[1:])]) + "\n")
    text, _ = write_report(tmp_path, *fake_runs)
    assert ("mmvm: loss, rec_nll, reg per optimiser step (a federated run&#x27;s row per "
            "window)") in text
    assert "poe: loss, rec_nll, reg per epoch" in text


def test_a_damaged_metrics_csv_is_named_and_the_others_still_drawn(tmp_path, fake_runs):
    """A truncated row in one run's metrics.csv: the page is written, that run is left
    out of its method's curves with the line named, the other runs are drawn."""
    with open(fake_runs[0] / "metrics.csv", "a") as fh:
        fh.write("4,12\n")
    (fake_runs[3] / "metrics.csv").write_bytes(b"epoch,loss\n1,\xff\n")
    text, page = write_report(tmp_path, *fake_runs)
    assert f"{fake_runs[0].name}&#x27;s metrics.csv is left out" in text
    assert "line 5: 2 values for the header&#x27;s 7 columns" in text
    assert f"{fake_runs[3].name}&#x27;s metrics.csv is left out" in text
    assert "not a text (UTF-8) CSV file" in text
    assert "mmvm: loss, rec_nll, reg per epoch" in text and "poe: loss" in text


def test_a_seed_given_twice_is_not_averaged_as_two_seeds(tmp_path):
    """Two evaluations of seed 0 (say, two data sizes whose settings the folders do
    not record) are two rows, not one mean with a standard error."""
    folders = [fake_run(tmp_path / "runs" / f"mmvm-{k}", eval_result("mmvm", 0, p, 300.0, 0.2))
               for k, p in enumerate((0.40, 0.60))]
    text, page = write_report(tmp_path, *folders)
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
    _, page = write_report(tmp_path, *files)
    header, *rows = page.tables[0]
    probes = sorted(r[header.index("latent probe (mean over modalities)")] for r in rows
                    if r[0] == "mmvm")
    assert probes == ["0.300 (1 seed)", "0.700 (1 seed)"]


def test_strings_from_files_are_escaped(tmp_path):
    evil = "<script>alert('x')</script>"
    result = eval_result(evil, 0, 0.5, 100.0, 0.3)
    fake_run(tmp_path / "<b>run", result)
    text, page = write_report(tmp_path, tmp_path / "<b>run", extra=["--title", "<i>t</i>"])
    assert "<script" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "&lt;b&gt;run" in text and "<title>&lt;i&gt;t&lt;/i&gt;</title>" in text
    assert summary_row(page, evil)["latent probe (mean over modalities)"] \
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
    text, page = write_report(tmp_path, table, fed, fake_runs[0])
    assert summary_row(page, "moe")["latent probe (mean over modalities)"] \
        == mean_se([0.2, 0.3])
    fed_row = next(r for r in page.tables[0][1:] if "sites' own probes" in r[-1])
    assert "0.800 (1 seed)" in fed_row
    assert "Federated run run-7" in text and "site-a" in text and "1,234,567" in text
    assert "probe/m0: 0.800; recon_nll/m0: 50.0" in text  # one precision per kind
    assert "Benchmark table:" in text


def test_a_benchmark_folder_shows_its_rows_with_the_run_folders_beside_them(tmp_path):
    """benchmarks/compare_methods.py writes results.csv and one folder per run beside
    it: the report of the folder keeps the rows' numbers and draws the runs' curves;
    a run folder given as well counts once."""
    bench = tmp_path / "bench"
    bench.mkdir()
    rows = ["method,beta,seed,recon_nll,probe,coherence"]
    for seed, probe in enumerate((0.30, 0.50)):
        fake_run(bench / f"mmvm-beta1-seed{seed}", eval_result("mmvm", seed, 0.9, 300.0, 0.2))
        rows.append(f"mmvm,1.0,{seed},100.0,{probe},0.2")
    (bench / "results.csv").write_text("\n".join(rows) + "\n")
    for inputs in ((bench,), (bench, bench / "mmvm-beta1-seed0"),
                   (bench / "mmvm-beta1-seed0", bench)):  # the row's numbers either way
        text, page = write_report(tmp_path, *inputs)
        assert summary_row(page, "mmvm")["latent probe (mean over modalities)"] \
            == mean_se([0.30, 0.50])
        assert "No metrics.csv" not in text and "no run folder" not in text
        assert "mmvm: loss, rec_nll, reg per epoch" in text
        assert "mmvm-beta1-seed0" in text and "mmvm-beta1-seed1" in text


def test_two_folders_with_the_same_numbers_are_two_runs(tmp_path):
    """An exact federated run and its centralized reference have the same numbers by
    design (README: "equal to central"); the report dropped the second as a copy of
    the first, hiding the very comparison the user made."""
    result = eval_result("mmvm", 0, 0.8, 200.0, 0.3)
    central = fake_run(tmp_path / "runs" / "central", result)
    again = fake_run(tmp_path / "runs" / "rerun", result)
    text, page = write_report(tmp_path, central, again)
    assert "counted once" not in text
    assert "central" in text and "rerun" in text
    assert "seed 0 given more than once" in text  # both kept, and the user told


def test_a_federated_run_without_eval_json_shows_its_chance_and_reconstruction(tmp_path):
    """The sites' own results: "not evaluated" was shown for chance and
    reconstruction although results.json held both; a modality two sites hold is
    their mean, and the reconstruction is the sum over the config's modalities."""
    fed = tmp_path / "run-9"
    fed.mkdir()
    summary = {
        "settings": {"num_sites": 3}, "probe_mean": 0.75,
        "alignment": {"samples": 100, "complete": 100},
        "config": {"model": {"method": "mmvm", "modalities": {"m0": {}, "m1": {}}},
                   "train": {"beta": 1.0, "seed": 0}},
        "evaluation": {
            "1": {"probe/m0": 0.8, "recon_nll/m0": 50.0, "majority/m0": 0.5},
            "2": {"probe/m0": 0.6, "recon_nll/m0": 70.0, "majority/m0": 0.5},
            "3": {"probe/m1": 0.85, "recon_nll/m1": 40.0, "majority/m1": 0.6}}}
    (fed / "results.json").write_text(json.dumps(summary))
    summary["seconds"] = 22.0624  # a researcher read it so, to the 1e-4 s
    summary["alignment"] = {"samples": 100, "complete": 100, "multimodal": 100,
                            "per_modality": {"m0": 100, "m1": 100}}
    (fed / "results.json").write_text(json.dumps(summary))
    again = tmp_path / "run-10"  # the same data, seed 1: the data's chance, no ± 0
    again.mkdir()
    (again / "results.json").write_text(json.dumps(
        {**summary, "config": {**summary["config"], "train": {"beta": 1.0, "seed": 1}}}))
    _, both = write_report(tmp_path / "two", fed, again)
    assert summary_row(both, "mmvm")["probe chance (the commonest test label's share)"] \
        == "0.550 (every seed)"
    _, page = write_report(tmp_path, fed)
    facts = {r[0]: r[1] for t in page.tables if t[0] == ["setting", "value"] for r in t}
    assert facts["wall time (s)"] == "22.1"
    assert facts["alignment"] == "samples 100, complete 100, multimodal 100"
    row = summary_row(page, "mmvm")
    assert row["probe chance (the commonest test label's share)"] == "0.550 (1 seed)"
    assert row["reconstruction NLL (test, per sample, summed over modalities)"] == "100.0 (1 seed)"  # 60 + 40
    # samples without every modality: the sum of the modalities' means is no total
    summary["alignment"] = {"samples": 100, "complete": 70}
    (fed / "results.json").write_text(json.dumps(summary))
    _, page = write_report(tmp_path / "partial", fed)
    row = summary_row(page, "mmvm")
    assert row["reconstruction NLL (test, per sample, summed over modalities)"] == "not evaluated"


def test_what_an_evaluation_warned_of_is_on_the_page(tmp_path):
    """A judge at chance made coherence meaningless: mmvm evaluate said so, and the
    report showed the number alone."""
    said = "the m0 judge scores 0.463 on real test data, near chance (0.537)"
    run = fake_run(tmp_path / "weak", {**eval_result("mmvm", 0, 0.9, 100.0, 0.46),
                                       "warnings": [said]})
    text, _ = write_report(tmp_path, run)
    assert "<h2>Warnings</h2>" in text and f"weak: {said}" in text
    assert text.index("Warnings") < text.index("latent probe (mean over modalities)")


def test_each_modalitys_reconstruction_stands_beside_a_constant_images(tmp_path):
    """A reconstruction NLL of 1846 says nothing alone: the per-modality table gives
    the NLL of one constant image (eval.json's reconstruction baseline) beside it;
    runs evaluated before it was computed show "not evaluated" there."""
    result = eval_result("mmvm", 0, 0.9, 300.0, 0.4)
    result["reconstruction"]["baseline"] = {m: 150.0 + i for i, m in enumerate(NAMES)}
    new = fake_run(tmp_path / "new", result)
    old = fake_run(tmp_path / "old", {**eval_result("poe", 0, 0.5, 300.0, 0.2)})
    _, page = write_report(tmp_path, new, old)
    table = next(t for t in page.tables if "NLL of a constant output" in t[0])
    rows = {(r[0].split()[0], r[1]): dict(zip(table[0], r, strict=True))
            for r in table[1:]}
    assert rows["mmvm", "m1"]["NLL of a constant output"] == "151.0 (1 seed)"
    assert rows["mmvm", "m1"]["reconstruction NLL"] == "100.0 (1 seed)"  # 300 / 3
    assert rows["poe", "m1"]["NLL of a constant output"] == "not evaluated"


def test_an_imputation_scored_the_old_way_is_named_before_it_is_compared(tmp_path):
    """eval.json of before 2026-12-05 scored imputation at the mean latent: its NLL is
    not comparable with a run's evaluated since, and the page says which run."""
    imputed = {"rest": {m: 10.0 for m in NAMES}, "total": 30.0}
    old = fake_run(tmp_path / "old", {**eval_result("mmvm", 0, 0.9, 300.0, 0.4),
                                      "imputation": imputed})
    new = fake_run(tmp_path / "new", {**eval_result("mmvm", 1, 0.9, 300.0, 0.4),
                                      "imputation": {**imputed, "scoring": "one draw"}})
    text, _ = write_report(tmp_path, old, new)
    assert "old: its imputation NLL was scored the old way" in text
    assert "new: its imputation NLL" not in text


def test_runs_of_vector_modalities_are_not_asked_for_generation_grids(tmp_path):
    """Spike counts are pictured by their latents: the page said a generation grid
    was missing and that --generate would draw one."""
    run = fake_run(tmp_path / "rats", eval_result("mmvm", 0, 0.9, 300.0, 0.4))
    (run / "config.json").write_text(json.dumps({"model": {"method": "mmvm", "modalities": {
        m: {"kind": "vector", "shape": [30]} for m in NAMES}}}))
    text, _ = write_report(tmp_path, run)
    assert "its modalities are no images (vectors, tokens), which mmvm evaluate" in text


def test_a_federated_run_whose_weights_stayed_shows_its_cross_site_scores(tmp_path):
    """No assembled model, no eval.json: the run's coherence and imputation are the
    cross-site evaluation's (results.json cross_site), and its page lists the pairs."""
    fed = tmp_path / "run-8"
    fed.mkdir()
    pairs = {"m0->m1": 0.75, "m1->m0": 0.25, "m0->m0": 0.9, "m1->m1": 0.8}
    (fed / "results.json").write_text(json.dumps({
        "settings": {"num_sites": 2, "exchange": "round"}, "bytes_total": 1000,
        "config": {"model": {"method": "mmvm"}, "train": {"beta": 1.0, "seed": 0}},
        "sites": {"11": {"site": "site-a", "modalities": ["m0"], "n": 100},
                  "12": {"site": "site-b", "modalities": ["m1"], "n": 100}},
        "evaluation": {"11": {"site": "site-a", "probe/m0": 0.8},
                       "12": {"site": "site-b", "probe/m1": 0.6}},
        "probe_mean": 0.7,
        "cross_site": {
            "coherence": {"pairs": pairs, "names": ["m0", "m1"],
                          "matrix": [[0.9, 0.75], [0.25, 0.8]], "mean": 0.5,
                          "self": 0.85},
            "imputation": {"pairs": {"m0->m1": 120.5, "m1->m0": 80.25},
                           "rest": {"m0": 80.25, "m1": 120.5}, "total": 200.75}},
        "cross_site_notes": {"site-c": "no test file"}}))
    text, page = write_report(tmp_path, fed)
    row = summary_row(page, "mmvm")
    assert row["coherence (m -> m', m != m')"] == "0.500 (1 seed)", row
    assert row["self-coherence (m -> m)"] == "0.850 (1 seed)"
    assert row["imputation NLL (each modality from the others, summed)"] == \
        "200.8 (1 seed)"
    assert "cross-site coherence" in row["numbers from"] and "site-c (no test file)" in text
    table = next(t for t in page.tables if t[0][:2] == ["source", "target"])
    assert ["m0", "m1", "0.750", "120.5"] in table and ["m1", "m0", "0.250", "80.2"] in table


def test_the_reports_figures_draw_chance_where_the_groups_share_it(monkeypatch):
    """A researcher: every method at chance (0.113) looked ranked on an axis from
    0.110 to 0.1147, with no chance line; the benchmark's own figure had both."""
    from mmvm.reporting.figures import scatter, shared_chance
    from mmvm.reporting.runs import Run
    from mmvm.reporting.stats import Group

    def group(method, coherence, chance=0.1131):
        runs = [Run(name=f"{method}{s}", source="x", kind="centralized", method=method,
                    beta=2.0, seed=s, metrics={"coherence": coherence + 1e-4 * s,
                                               "recon_nll": 3600.0 + s, "chance": chance})
                for s in range(3)]
        return Group(method, 2.0, {}, runs)

    at_chance = [group("mmvm", 0.114), group("poe", 0.110)]
    assert shared_chance(at_chance) == 0.1131
    assert shared_chance([*at_chance, group("x", 0.2, chance=0.25)]) is None  # other data
    import matplotlib.pyplot as plt

    drawn, limits, original = [], [], plt.Axes.axhline
    monkeypatch.setattr(plt.Axes, "axhline", lambda self, y, *a, **k: drawn.append(
        (y, k.get("label"))) or original(self, y, *a, **k))
    monkeypatch.setattr(plt.Axes, "set_title", lambda self, text, **k: limits.append(
        (self.get_ylim()[0], text)))
    assert scatter(at_chance, "coherence")
    assert drawn == [(0.1131, "chance (0.1131)")]
    ((low, title),) = limits  # the points within 0.004: the axis starts at 0
    assert low == 0.0 and "bars: ± standard error over 3 seeds" in title


def test_coherence_matrix_titles_keep_their_settings_whole(monkeypatch):
    """A neuroscientist's panel read 'mode=centralized, train.epochs n=1': the title
    cut its settings at 30 characters (two groups differing after them looked alike)."""
    import matplotlib.pyplot as plt

    from mmvm.reporting.figures import coherence_heatmaps
    from mmvm.reporting.runs import Run
    from mmvm.reporting.stats import Group

    def group(epochs):
        run = Run(name=f"r{epochs}", source="x", kind="centralized", method="mmvm",
                  beta=1.0, coherence_matrix=(["a", "b"], [[0.9, 0.5], [0.4, 0.8]]))
        return Group("mmvm", 1.0, {"mode": "centralized", "train.epochs": str(epochs)},
                     [run])

    titles = []
    monkeypatch.setattr(plt.Axes, "set_title", lambda self, text, **k: titles.append(text))
    assert coherence_heatmaps([group(30), group(300)])
    assert [t.replace("\n", " ") for t in titles] == [
        f"mmvm beta=1 mode=centralized, train.epochs={e} n=1" for e in (30, 300)]


def test_warnings_of_one_kind_are_said_once_with_the_runs_that_gave_them(tmp_path):
    """A researcher's comparison of 7 methods x 3 seeds opened with 240 warnings, one
    per run and modality, before any result."""
    runs = []
    for seed, (a, b) in enumerate([(1422.4, 1375.4), (1426.6, 1375.4)]):
        said = [f"m{m} imputed from the other modalities scores {a + m}, worse than one "
                f"constant output ({b})" for m in range(3)]
        runs.append(fake_run(tmp_path / f"mmvm-seed{seed}", {
            **eval_result("mmvm", seed, 0.9, 100.0, 0.46), "warnings": said}))
    other = "the m0 judge scores 0.463 on real test data, near chance (0.537)"
    runs.append(fake_run(tmp_path / "weak", {**eval_result("poe", 0, 0.9, 100.0, 0.4),
                                             "warnings": [other]}))
    text, _ = write_report(tmp_path, *runs)
    import html

    start = text.index("<h2>Warnings</h2>")
    section = html.unescape(text[start:text.index("<h2>", start + 5)])
    assert section.count("imputed from the other modalities") == 1
    assert ("mmvm-seed0: m0 imputed from the other modalities scores 1422.4, worse than "
            "one constant output (1375.4) (6 times in 2 runs: mmvm-seed0, mmvm-seed1; "
            "the numbers are mmvm-seed0's)") in section
    assert f"weak: {other}" in section and f"{other} (" not in section  # once: no count
