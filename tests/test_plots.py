"""Every figure writes a non-empty PNG; the plot CLI reads results JSON/CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mmvm.federation.results import WINDOW_FIELDS
from mmvm.plot_latents import latent_2d
from mmvm.plots import (
    loss_curves,
    scatter_recon_vs,
    tile_rows,
)

torch.set_num_threads(1)
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = open(path, "rb").read()
    return data.startswith(PNG) and len(data) > 2000


ROWS = [{"method": m, "beta": b, "recon_nll": 100 + 10 * b + k, "probe": 0.5 + 0.1 * k,
         "coherence": 0.3 + 0.05 * b} for k, m in enumerate(["mmvm", "poe"])
        for b in (0.25, 1.0, 4.0)]


def test_tile_rows_keeps_each_rows_height_and_centres_its_label():
    """A generation grid's rows are as tall as their own modality (8 neurons under 40
    keep 8 rows of pixels), images centred; the tick of each row sits on its middle."""
    small, tall = np.zeros((8, 12, 3)), np.full((40, 12, 3), 0.5)
    canvas, centres = tile_rows([[small, small], [tall, tall], [small]], pad=1)
    assert canvas.shape == (1 + 8 + 1 + 40 + 1 + 8 + 1, 1 + 2 * 13, 3)
    assert centres == [1 + 4, 10 + 20, 51 + 4]
    assert (canvas[1:9, 1:13] == 0).all() and (canvas[10:50, 1:13] == 0.5).all()
    assert (canvas[51:59, 14:26] == 1).all()  # the short row's missing cell stays blank
    narrow, _ = tile_rows([[np.zeros((4, 4, 3))], [np.zeros((28, 28, 3))]], pad=0)
    assert (narrow[:4, 12:16] == 0).all() and (narrow[:4, :12] == 1).all()  # centred


@pytest.mark.parametrize("y", ["probe", "coherence"])
def test_scatter_recon_vs(tmp_path, y):
    assert _is_png(scatter_recon_vs(ROWS, tmp_path / f"{y}.png", y=y))


def test_scatter_accepts_full_eval_results_and_rejects_bad_axis(tmp_path):
    full = [{"method": "mmvm", "beta": b, "reconstruction": {"total": 90.0 + b},
             "probe": {"mean": 0.7}, "coherence": {"mean": 0.4}} for b in (1.0, 2.0)]
    assert _is_png(scatter_recon_vs(full, tmp_path / "s.png", y="coherence"))
    with pytest.raises(ValueError, match="y must be one of"):
        scatter_recon_vs(ROWS, tmp_path / "x.png", y="accuracy")


def test_latent_2d_one_panel_per_method(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    mus = {"mmvm": rng.normal(size=(200, 2)), "independent": rng.normal(size=(200, 5))}
    assert _is_png(latent_2d(mus, labels, tmp_path / "lat.png", label_names="ABCD"))
    with pytest.raises(ValueError, match="labels"):
        latent_2d(mus, labels[:10], tmp_path / "bad.png")


def test_latent_2d_colours_many_classes_in_order_and_draws_a_fair_subset(tmp_path,
                                                                       monkeypatch):
    """20 position bins along a track: tab10 gave bins 0 and 10 one colour (the
    neuroscience walkthrough); more than 10 classes now get a sequential map and a
    colour bar, unknown labels are grey, and a subset beyond max_points is drawn from
    the whole set (it was the first rows, e.g. one rat's)."""
    import mmvm.plot_latents

    figs, save = [], mmvm.plot_latents.save_figure

    def keep(fig, path):
        figs.append(fig)
        return save(fig, path)

    monkeypatch.setattr(mmvm.plot_latents, "save_figure", keep)
    rng = np.random.default_rng(0)
    labels = np.r_[np.arange(20).repeat(30), -np.ones(20, int)]
    mus = {"rat A": rng.normal(size=(620, 2)), "rat B": rng.normal(size=(620, 2))}
    assert _is_png(latent_2d(mus, labels, tmp_path / "bins.png", max_points=300,
                             share_axes=True))
    fig = figs[-1]
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    panel = fig.axes[0]
    assert panel.get_title() == "rat A, 300 of 620"
    grey, colours = panel.collections
    assert np.allclose(grey.get_facecolor()[0][:3], 0.7)
    shown = colours.get_array()
    assert len(shown) + len(grey.get_offsets()) == 300
    assert shown.max() > 10  # not rows 0..299 (classes 0..9)
    latent_2d({"m": mus["rat A"][:40]}, np.arange(40) % 4, tmp_path / "few.png")
    few = figs[-1]  # 4 classes: a legend, no colour bar
    assert few.axes[0].get_legend() is not None and len(few.axes) == 1


def _metrics(path, k, epochs=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "step", "loss", "rec_nll", "reg", "alpha", "seconds"])
        for e in range(1, epochs + 1):
            w.writerow([e, 10 * e, 100 / e + k, 90 / e, 10, 0.0, 1.0])
    return path


def test_loss_curves(tmp_path):
    paths = [_metrics(tmp_path / f"run{k}" / "metrics.csv", k) for k in range(2)]
    assert _is_png(loss_curves(paths, tmp_path / "curves.png"))


@pytest.mark.parametrize("epochs, marker", [(1, "."), (3, "."), (60, "None")])
def test_loss_curves_mark_the_points_of_short_runs(tmp_path, monkeypatch, epochs, marker):
    """A one-epoch run is one point per panel: without a marker nothing is drawn."""
    import mmvm.plots

    drawn, save = [], mmvm.plots.save_figure

    def keep(fig, path):
        drawn.extend(line for ax in fig.axes for line in ax.get_lines())
        return save(fig, path)

    monkeypatch.setattr(mmvm.plots, "save_figure", keep)
    run = _metrics(tmp_path / "run" / "metrics.csv", 0, epochs)
    assert _is_png(loss_curves([run], tmp_path / "c.png"))
    assert len(drawn) == 3 and all(len(line.get_xdata()) == epochs for line in drawn)
    assert {line.get_marker() for line in drawn} == {marker}
    ticks = [t for line in drawn for t in line.axes.get_xticks()]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no epoch 1.2


def test_loss_curves_refuse_a_column_no_run_has(tmp_path):
    runs = [_metrics(tmp_path / f"run{k}" / "metrics.csv", k) for k in range(2)]
    with pytest.raises(ValueError, match=r"'recnll': not a column of any of the metrics "
                       r"files; the columns are step, loss, rec_nll, reg, alpha, seconds"):
        loss_curves(runs, tmp_path / "c.png", keys=["loss", "recnll"])
    with pytest.raises(ValueError, match="give at least one column"):
        loss_curves(runs, tmp_path / "c.png", keys=[])
    assert not (tmp_path / "c.png").exists()


def test_plot_cli_curves_unknown_key_is_an_error_not_an_empty_panel(tmp_path, capsys):
    from mmvm.cli import main

    run = _metrics(tmp_path / "run" / "metrics.csv", 0).parent
    assert main(["plot", "curves", str(run), "--keys", "loss,recnll"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmvm plot curves: error: 'recnll': not a column of the "
                          "metrics file; the columns are step, loss, rec_nll")
    assert "Traceback" not in err and not (run / "curves.png").exists()


def test_plot_cli_scatter_and_curves(tmp_path):
    from mmvm.cli import main

    (tmp_path / "r.json").write_text(json.dumps(ROWS))
    with open(tmp_path / "r.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    for src in ("r.json", "r.csv"):
        out = tmp_path / f"{src}.png"
        assert main(["plot", "scatter", str(tmp_path / src), "--y", "coherence",
                     "--out", str(out)]) == 0
        assert _is_png(out)
    run = _metrics(tmp_path / "run" / "metrics.csv", 0).parent
    assert main(["plot", "curves", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert _is_png(tmp_path / "c.png")
    assert main(["plot", "scatter", str(tmp_path / "missing.json"), "--out",
                 str(tmp_path / "m.png")]) == 2


def test_plot_cli_writes_into_the_run_folder_by_default(tmp_path, monkeypatch):
    from mmvm.cli import main

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run = _metrics(tmp_path / "run" / "metrics.csv", 0).parent
    assert main(["plot", "curves", str(run)]) == 0
    assert _is_png(run / "curves.png")
    (run / "results.json").write_text(json.dumps(ROWS))
    assert main(["plot", "scatter", str(run / "results.json")]) == 0
    assert _is_png(run / "scatter_probe.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_plot_cli_curves_of_a_federated_run_draw_the_columns_it_has(tmp_path):
    """A federated metrics.csv written before its "loss" column: the default panels
    are those of loss, rec_nll, reg the files have; asked for, "loss" is an error.
    The server's curves.png is left alone."""
    from mmvm.cli import main

    run = tmp_path / "fed"
    run.mkdir()
    rows = [{k: 0 for k in OLDER_FIELDS} | {"epoch": e, "rec_nll": 10.0 - e, "reg": 1.0}
            for e in (1, 2)]
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=OLDER_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (run / "results.json").write_text("{}")  # a federated run folder: curves.png is the server's
    assert main(["plot", "curves", str(run)]) == 0
    assert (run / "metrics_curves.png").stat().st_size and not (run / "curves.png").exists()
    assert main(["plot", "curves", str(run), "--keys", "loss", "--out",
                 str(tmp_path / "x.png")]) == 2


# a federated metrics.csv (by window) as runs wrote it before its "loss" column
OLDER_FIELDS = [f for f in WINDOW_FIELDS if f != "loss"]


def _federated_run(run):
    """A federated run folder whose metrics.csv has no "loss" column."""
    run.mkdir(parents=True)
    rows = [{k: 0 for k in OLDER_FIELDS} | {"epoch": e, "step": 10 * e,
                                            "rec_nll": 10.0 - e, "reg": 1.0}
            for e in (1, 2)]
    with open(run / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=OLDER_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (run / "results.json").write_text("{}")
    return run


@pytest.mark.parametrize("federated_first", [False, True])
def test_plot_cli_curves_name_a_run_that_lacks_the_first_panel(tmp_path, monkeypatch,
                                                               federated_first):
    """`mmvm plot curves A B` with A centralized and B federated: the first panel
    ("loss") has no line of B, yet a legend of the figure names both runs, each in
    the colour its lines have in every panel."""
    import mmvm.plots
    from mmvm.cli import main

    figs, save = [], mmvm.plots.save_figure
    monkeypatch.setattr(mmvm.plots, "save_figure",
                        lambda fig, path: (figs.append(fig), save(fig, path))[1])
    central = _metrics(tmp_path / "central" / "metrics.csv", 0).parent
    runs = [central, _federated_run(tmp_path / "fed")]
    runs = runs[::-1] if federated_first else runs
    assert main(["plot", "curves", *map(str, runs), "--out", str(tmp_path / "x.png")]) == 0
    (fig,) = figs
    loss_panel = fig.axes[0]
    assert loss_panel.get_title() == "loss"
    assert [ln.get_label() for ln in loss_panel.get_lines()] == ["central"]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends
    named = {t.get_text(): h.get_color() for lg in legends
             for t, h in zip(lg.get_texts(), lg.legend_handles, strict=True)}
    assert set(named) == {"central", "fed"}
    for ln in (ln for ax in fig.axes for ln in ax.get_lines()):
        assert ln.get_color() == named[ln.get_label()]


def test_curves_of_runs_of_different_lengths_get_evenly_spaced_ticks(tmp_path, monkeypatch):
    """A walkthrough's report drew a federated run (steps 10, 20) beside a centralized
    one (steps 94, 188) with a tick at every point: "10" and "20" read "1020"."""
    import mmvm.plots

    figs, save = [], mmvm.plots.save_figure
    monkeypatch.setattr(mmvm.plots, "save_figure",
                        lambda fig, path: (figs.append(fig), save(fig, path))[1])
    central = tmp_path / "central" / "metrics.csv"
    central.parent.mkdir()
    central.write_text("epoch,step,loss,rec_nll,reg,alpha,seconds\n"
                       "1,94,9.0,8.0,1.0,0,1\n2,188,8.0,7.0,1.0,0,1\n")
    fed = _federated_run(tmp_path / "fed") / "metrics.csv"
    loss_curves([central, fed], tmp_path / "c.png")
    for ax in figs[0].axes:
        ticks = np.asarray(ax.get_xticks())
        assert ax.get_xlabel() == "optimiser step" and len(ticks) >= 3
        assert np.allclose(np.diff(ticks), ticks[1] - ticks[0]), ticks  # evenly spaced
        assert all(float(t).is_integer() for t in ticks)
