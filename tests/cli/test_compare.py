"""``mmvm compare``: every method and seed trained and evaluated as ``mmvm train`` and
``mmvm evaluate`` do, on the user's own config, and one table over the seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mmvm.cli import main

ROOT = Path(__file__).resolve().parents[2]
POLYMNIST = str(ROOT / "configs" / "polymnist.toml")


def test_compare_trains_each_method_and_seed_and_sums_them_up(tiny_polymnist, tmp_path,
                                                              capsys):
    out = tmp_path / "cmp"
    sets = [f'data.root="{tiny_polymnist}"', "train.epochs=1", "train.batch_size=64",
            'train.device="cpu"', "train.num_threads=1", "model.latent_dim=8"] + \
        [f"model.modalities.m{i}.width=4" for i in range(3)]
    argv = ["compare", "--config", POLYMNIST, *[a for s in sets for a in ("--set", s)],
            "--methods", "mmvm", "mmvaeplus", "--seeds", "0", "1", "--out", str(out),
            "--no-coherence"]
    assert main(argv) == 0
    probes = {}
    for method in ("mmvm", "mmvaeplus"):
        for seed in (0, 1):
            run = out / f"{method}-seed{seed}"
            cfg = json.loads((run / "config.json").read_text())
            assert (cfg["model"]["method"], cfg["train"]["seed"]) == (method, seed)
            if method == "mmvaeplus":  # a private latent as large as the shared one
                assert cfg["model"]["private_dim"] == 8
            ev = json.loads((run / "eval.json").read_text())
            probes.setdefault(method, []).append(ev["probe"]["mean"])
    md = (out / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| mmvm |"))
    assert row.startswith(f"| mmvm | 2 | {statistics.mean(probes['mmvm']):.3f} ± "), md
    assert "| mmvaeplus | 2 |" in md and (out / "summary.csv").is_file()
    # the joint methods' own latent has its column (AVG and PoE won it in a
    # researcher's walkthrough, and the summary did not show it)
    assert "| aggregated probe |" in md.splitlines()[0], md
    agg = [json.loads((out / f"mmvm-seed{s}" / "eval.json").read_text())
           ["probe_aggregated"]["mean"] for s in (0, 1)]
    assert f"| {statistics.mean(agg):.3f} ± " in row, (row, agg)
    assert "mmvm report" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/eval.json")}
    assert main(argv) == 0  # finished runs are reused, their evaluations kept
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/eval.json")} == stamps
    one = out / "mmvm-seed0"  # evaluated by hand on 40 test samples: not averaged in
    assert main(["evaluate", "--run", str(one), "--set", "data.max_test=40",
                 "--no-coherence"]) == 0
    assert json.loads((one / "eval.json").read_text())["settings"]["data"]["max_test"] == 40
    assert main(argv) == 0
    assert json.loads((one / "eval.json").read_text())["settings"]["data"]["max_test"] == 0
    assert main([*argv, "--imputation-draws", "4"]) == 0  # the predictive reading: redone
    for p in out.glob("*/eval.json"):
        assert "predictive over 4 draws" in json.loads(p.read_text())["imputation"]["scoring"]
    assert "predictive over 4 draws" in (out / "summary.md").read_text()


def test_a_failed_run_is_named_and_the_others_summed_up(tiny_polymnist, tmp_path, capsys):
    """A config written for MMVAE+ (private_dim 4) still trains MMVM (private_dim 0);
    a run that cannot train (its folder is a file) fails alone, and the summary
    lists it; new eval settings evaluate the finished runs again."""
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "mmvm-seed1").write_text("not a folder")
    sets = [f'data.root="{tiny_polymnist}"', "train.epochs=1", "train.batch_size=64",
            'train.device="cpu"', "train.num_threads=1", "model.latent_dim=8",
            'model.method="mmvaeplus"', "model.private_dim=4"] + \
        [f"model.modalities.m{i}.width=4" for i in range(3)]
    argv = ["compare", "--config", POLYMNIST, *[a for s in sets for a in ("--set", s)],
            "--methods", "mmvm", "mmvaeplus", "--seeds", "0", "1", "--out", str(out),
            "--no-coherence"]
    assert main(argv) == 1
    said = capsys.readouterr().out
    assert "mmvm compare: mmvm seed 1: failed (exit 2" in said, said
    md = (out / "summary.md").read_text()
    assert "| mmvm | 1 |" in md and "| mmvaeplus | 2 |" in md and \
        "- mmvm seed 1: failed" in md, md
    cfg = json.loads((out / "mmvaeplus-seed0" / "config.json").read_text())
    assert cfg["model"]["private_dim"] == 4  # the config's own
    before = json.loads((out / "mmvm-seed0" / "eval.json").read_text())
    assert main(argv + ["--set", "eval.probe_train=50"]) == 1
    after = json.loads((out / "mmvm-seed0" / "eval.json").read_text())
    assert before["settings"]["eval"]["probe_train"] != 50
    assert after["settings"]["eval"]["probe_train"] == 50 and after["n_probe_train"] == 50


def test_ctrl_c_in_one_run_stops_the_comparison(monkeypatch, tmp_path, capsys):
    """`mmvm train` says 130 on Ctrl-C (mmvm.cli.main catches it): the comparison
    stops there instead of starting the next run."""
    import mmvm.cli

    calls = []

    def interrupted(argv):
        calls.append(argv[0])
        return 130

    monkeypatch.setattr(mmvm.cli, "main", interrupted)
    code = mmvm.cli.build_parser().parse_args(
        ["compare", "--config", POLYMNIST, "--methods", "mmvm", "poe", "--out",
         str(tmp_path / "c")])
    assert code.func(code) == 130 and calls == ["train"]
    assert "mmvm compare: mmvm seed 0: interrupted" in capsys.readouterr().out
