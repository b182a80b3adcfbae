"""A method keeps its colour in every figure, whatever order its series come in."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmvm.method_styles import METHOD_COLOURS, method_of, series_styles  # noqa: E402
from mmvm.plots import draw_tradeoff  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_a_method_has_one_colour_whatever_the_order_and_its_series_differ_by_style():
    one = series_styles(["poe", "mmvm", "mmvm (settings B)", "independent"])
    two = series_styles(["independent", "mmvm (settings B)", "mmvm", "poe"])
    assert {n: s.colour for n, s in one.items()} == {n: s.colour for n, s in two.items()}
    assert one["mmvm"].colour == METHOD_COLOURS["mmvm"]
    assert one["poe"].colour == METHOD_COLOURS["poe"]
    assert one["mmvm (settings B)"].colour == METHOD_COLOURS["mmvm"]
    assert (one["mmvm"].line, one["mmvm"].marker) != \
        (one["mmvm (settings B)"].line, one["mmvm (settings B)"].marker)
    assert len(set(METHOD_COLOURS.values())) == len(METHOD_COLOURS)


def test_names_of_no_method_take_colours_no_method_has():
    got = series_styles(["raw counts (per-rat)", "mmvm federated (5 sites)", "ridge"])
    assert got["mmvm federated (5 sites)"].colour == METHOD_COLOURS["mmvm"]
    others = {got["raw counts (per-rat)"].colour, got["ridge"].colour}
    assert len(others) == 2 and not others & set(METHOD_COLOURS.values())
    assert method_of("MoPoE, beta 1") == "mopoe" and method_of(" avg/x") == "avg"


def test_the_tradeoff_figure_draws_a_method_in_its_colour_in_any_order():
    def colours(series):
        fig, ax = plt.subplots()
        draw_tradeoff(ax, series)
        got = {ln.get_label(): matplotlib.colors.to_hex(ln.get_color())
               for ln in ax.get_lines()}
        plt.close(fig)
        return got

    pts = [("1", 1.0, 0.5, None, None), ("2", 2.0, 0.6, None, None)]
    a = colours({"mmvm": pts, "poe": pts})
    b = colours({"poe": pts, "mmvm": pts})
    assert a == b and a["mmvm"] == matplotlib.colors.to_hex(METHOD_COLOURS["mmvm"])


def test_the_hippocampus_probe_figure_is_redrawn_and_says_what_its_bars_are(
        tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "hippocampus_latents", ROOT / "benchmarks" / "hippocampus_latents.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda ax, text, **kw: titles.append(text))
    est = {"mean": 0.6, "se": 0.02}
    summary = [{"tuning": t, "run": run, "seeds": 3, "pooled": est, "per_rat": est}
               for t in (0.5, 1.0) for run in ("mmvm", "independent")]
    (tmp_path / "results.json").write_text(json.dumps({"summary": summary}))
    assert bench.main(["--replot", "--out", str(tmp_path)]) == 0  # no training
    assert (tmp_path / "probes_vs_tuning.png").stat().st_size > 0
    assert all("bars: ± standard error over 3 seeds" in t for t in titles), titles
