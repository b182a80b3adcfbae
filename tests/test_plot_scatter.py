"""``mmvm plot scatter`` groups runs as ``mmvm report`` does: other settings, other
files and a repeated seed are never averaged as if they were seeds; the figure says
what its labels are and does not hide a tiny spread. Also the help texts and the
benchmark table of issue-level fixes (one seed: no "±")."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

import mmvm.plots
from mmvm.cli import main
from mmvm.plots import scatter_recon_vs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The axes of every figure the plots module saves (the PNG is still written)."""
    axes, save = [], mmvm.plots.save_figure

    def keep(fig, path):
        axes.append(fig.axes[0])
        return save(fig, path)

    monkeypatch.setattr(mmvm.plots, "save_figure", keep)
    return axes


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _error_bars(ax) -> int:
    return sum(1 for c in ax.containers if type(c).__name__ == "ErrorbarContainer")


def _eval(seed: int, recon: float, coherence: float, probe: float = 0.5) -> dict:
    return {"method": "mmvm", "beta": 1.0, "seed": seed, "probe": {"mean": probe},
            "reconstruction": {"total": recon}, "coherence": {"mean": coherence}}


def _run(folder: Path, result: dict, max_train: int, max_test: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(result))
    config = {"model": {"method": "mmvm"}, "data": {"max_train": max_train,
                                                    "max_test": max_test},
              "train": {"beta": result["beta"], "seed": result["seed"]}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "eval.json"


def test_runs_of_other_settings_are_two_series_not_one_averaged_point(tmp_path, drawn):
    a = _run(tmp_path / "runA", _eval(0, 3600.0, 0.110), 1000, 300)
    b = _run(tmp_path / "runB", _eval(0, 3500.0, 0.114), 1500, 999)
    out = tmp_path / "s.png"
    assert main(["plot", "scatter", str(a), str(b), "--y", "coherence", "--out",
                 str(out)]) == 0
    ax = drawn[-1]
    labels = _legend(ax)
    assert len(labels) == 2 and all(t.startswith("mmvm (") for t in labels)
    assert any("max_train=1000" in t for t in labels)
    assert any("max_train=1500" in t for t in labels)
    assert _error_bars(ax) == 0  # no point is a mean of the two runs
    ys = sorted(y for line in ax.get_lines() for y in line.get_ydata())
    assert ys == pytest.approx([0.110, 0.114])
    title = ax.get_title()
    assert "point labels: beta" in title and "1 seed per point" in title
    assert "1 seeds" not in title


def test_seeds_of_one_setting_are_one_point_with_error_bars(tmp_path, drawn):
    paths = [_run(tmp_path / f"s{s}", _eval(s, 3600.0 + s, 0.2 + 0.1 * s), 1000, 300)
             for s in range(3)]
    assert main(["plot", "scatter", *map(str, paths), "--y", "coherence", "--out",
                 str(tmp_path / "s.png")]) == 0
    ax = drawn[-1]
    assert _legend(ax) == ["mmvm"] and _error_bars(ax) == 1
    assert "± standard error over 3 seeds" in ax.get_title()


def test_a_seed_given_twice_is_not_averaged(tmp_path, drawn):
    rows = [{"method": "mmvm", "beta": 1.0, "seed": 0, "recon_nll": r, "probe": p}
            for r, p in ((100.0, 0.5), (120.0, 0.7))]
    with pytest.warns(UserWarning, match="seed 0 given more than once"):
        scatter_recon_vs(rows, tmp_path / "s.png")
    ax = drawn[-1]
    assert _legend(ax) == ["mmvm (run /results#0)", "mmvm (run /results#1)"]
    assert _error_bars(ax) == 0


def test_repeated_seeds_are_not_paired_by_the_order_they_were_given(tmp_path, drawn):
    """Runs A (seeds 0, 1, 2) and B (seeds 1, 2) whose settings are not recorded: which
    belong together cannot be known, so no two are averaged, in either order."""
    a = [{"method": "mmvm", "beta": 1.0, "seed": s, "recon_nll": 100.0 + s, "probe": 0.5}
         for s in (0, 1, 2)]
    b = [{"method": "mmvm", "beta": 1.0, "seed": s, "recon_nll": 200.0 + s, "probe": 0.7}
         for s in (1, 2)]
    for rows in (a + b, b + a):
        with pytest.warns(UserWarning, match="seeds 1, 2 given more than once"):
            scatter_recon_vs(rows, tmp_path / "s.png")
        ax = drawn[-1]
        assert len(_legend(ax)) == 5 and _error_bars(ax) == 0


def _csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_two_benchmarks_csv_files_stay_apart(tmp_path, drawn, capsys):
    def rows(shift):
        return [{"method": m, "beta": b, "seed": 0, "recon_nll": 100 + shift + b,
                 "probe": 0.3 + k / 10 + shift / 1000, "coherence": 0.1}
                for k, m in enumerate(("mmvm", "poe")) for b in (1.0, 2.0)]

    one = _csv(tmp_path / "bench1" / "results.csv", rows(0))
    two = _csv(tmp_path / "bench2" / "results.csv", rows(50))
    assert main(["plot", "scatter", str(one), str(two), "--out",
                 str(tmp_path / "s.png")]) == 0
    ax = drawn[-1]
    labels = _legend(ax)
    assert len(labels) == 4 and len({t.split(" ")[0] for t in labels}) == 2
    assert sum("bench1" in t for t in labels) == 2
    assert _error_bars(ax) == 0 and "warning" not in capsys.readouterr().err


def test_a_tiny_spread_is_shown_from_zero_and_chance_is_a_dashed_line(tmp_path, drawn):
    rows = [{"method": m, "beta": 1.0, "recon_nll": 100.0 + k, "probe": 0.5,
             "coherence": 0.110 + 0.002 * k} for k, m in enumerate(("mmvm", "poe", "avg"))]
    scatter_recon_vs(rows, tmp_path / "a.png", y="coherence")
    ax = drawn[-1]
    assert ax.get_ylim()[0] <= 0.0 and "all points within 0.004" in ax.get_title()
    scatter_recon_vs([{**r, "chance": 0.1} for r in rows], tmp_path / "b.png",
                     y="coherence")
    ax = drawn[-1]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [0.1, 0.1]
    assert "chance (0.1)" in _legend(ax) and ax.get_ylim()[0] <= 0.0  # still from 0


def test_the_chance_an_eval_json_records_is_drawn(tmp_path, drawn):
    paths = [_run(tmp_path / f"s{s}", {**_eval(s, 3600.0 + s, 0.11 + s / 1000),
                                       "chance": {"majority": 0.112, "uniform": 0.1}},
                  1000, 300) for s in range(2)]
    assert main(["plot", "scatter", *map(str, paths), "--y", "coherence", "--out",
                 str(tmp_path / "s.png")]) == 0
    assert "chance (0.112)" in _legend(drawn[-1])
    assert main(["plot", "scatter", *map(str, paths), "--chance", "0.1", "--out",
                 str(tmp_path / "s.png")]) == 0
    assert "chance (0.1)" in _legend(drawn[-1])
    # a run that records no chance (other data, maybe): no line from the others'
    other = _run(tmp_path / "other", _eval(0, 3500.0, 0.2), 1000, 300)
    assert main(["plot", "scatter", *map(str, paths), str(other), "--y", "coherence",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert not any(t.startswith("chance") for t in _legend(drawn[-1]))


def test_plot_help_names_every_kind(capsys):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    assert "mmvm plot scatter|curves|latents" in capsys.readouterr().out


@pytest.fixture
def compare_methods(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compare_methods

    yield compare_methods
    sys.modules.pop("compare_methods", None)


def _bench_rows(methods, seeds) -> list[dict]:
    return [{"method": m, "beta": 2.0, "seed": s, "recon_nll": 3637.6 + s,
             "probe": 0.464 + s / 100, "probe_agg": 0.4, "probe_all": 0.3,
             "coherence": 0.113, "train_seconds": 10.0} for m in methods for s in seeds]


def test_benchmark_table_one_seed_has_no_plus_minus(compare_methods):
    md = compare_methods.table(compare_methods.summarize(_bench_rows(["mmvm"], [0])))
    row = next(line for line in md.splitlines() if line.startswith("| mmvm"))
    assert "±" not in row and "| 1 |" in row and "3637.6" in row
    md = compare_methods.table(compare_methods.summarize(_bench_rows(["mmvm"], [0, 1])))
    row = next(line for line in md.splitlines() if line.startswith("| mmvm"))
    assert "3638.1 ± 0.5" in row and "| 2 |" in row


def test_benchmark_console_table_shows_whole_method_names(compare_methods, tmp_path):
    md = compare_methods.table(compare_methods.summarize(
        _bench_rows(compare_methods.METHODS, [0])))
    with open(tmp_path / "log.txt", "w") as fh:
        compare_methods.print_table(md, file=fh)
    text = (tmp_path / "log.txt").read_text()
    assert "…" not in text
    for word in [*compare_methods.METHODS, "aggregated probe", "coherence", "recon NLL"]:
        assert word in text
