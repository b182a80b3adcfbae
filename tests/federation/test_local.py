"""An in-process federation in the cheapest posterior encoding still trains.

int8 values with error feedback, rows implied by the window, a tolerance in
posterior standard deviations, growing round windows: fewer bytes than exchanging
exact float32 tables every step, and the reconstruction loss still falls."""

from __future__ import annotations

import dataclasses

import pytest

from mmvm.federation.local import run_local
from mmvm.federation.settings import settings_for
from tests.support.federate import split


def test_the_cheapest_mode_trains_on_fewer_bytes_than_exact(tiny_polymnist, tiny_config,
                                                            tmp_path):
    cfg = tiny_config(tiny_polymnist, epochs=4)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    files = {s.name: (str(root / s.name / "train.parquet"), None) for s in specs}
    exact, _ = run_local(settings_for(cfg, exchange="step", float16=False), files)
    cheap_settings = settings_for(cfg, exchange="round", local_epochs=2, exchange_warmup=True,
                                  float16=False, quantize="int8", delta_tol=0.5,
                                  delta_unit="std")
    assert cheap_settings.plan_args().quantize == "int8"
    cheap, sites = run_local(cheap_settings, files)
    assert cheap.bytes_total * 3 < exact.bytes_total
    nll = [row["rec_nll"] for row in cheap.history]
    assert len(nll) == 3 and nll[-1] < nll[0]  # windows of 1, 2, 1 epochs
    link = next(iter(sites.values())).linked()
    assert link.int8 and link.plan_args.delta_unit == "std"
    assert dataclasses.asdict(cheap_settings.plan_args())["quantize"] == "int8"


def test_a_windows_loss_is_the_centralized_loss_of_its_rows(tiny_polymnist, tiny_config,
                                                            tmp_path):
    """metrics.csv's loss (rec_nll + beta reg per sample of the window's rows): with
    exchange 'step' one window is one step, and the epoch's windows average to the
    loss, rec_nll and reg centralized training logs (a report's loss panel compares
    them; a federated run had no loss column)."""
    from mmvm.data.dataset import MultimodalDataset
    from mmvm.metrics_csv import read_metrics
    from mmvm.training import train

    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    files = {s.name: (str(root / s.name / "train.parquet"), None) for s in specs}
    fed, _ = run_local(settings_for(cfg, exchange="step", float16=False), files)
    beta = cfg.train.beta
    for row in fed.history:
        assert row["loss"] == row["rec_nll"] + beta * row["reg"]
    data = MultimodalDataset.from_parquet([f for f, _ in files.values()], ["m0", "m1", "m2"])
    out = tmp_path / "central"
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(out))),
          data, resume=False, show_progress=False)
    central = read_metrics(out / "metrics.csv")
    # the tiny set's steps are equal in size: the epoch's mean is the steps' mean
    for key in ("loss", "rec_nll", "reg"):
        mean = sum(r[key] for r in fed.history) / len(fed.history)
        assert mean == pytest.approx(central[key][0], rel=1e-6), key
