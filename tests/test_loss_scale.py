"""float16's loss scale (``torch.amp.GradScaler``) is part of a run's state: a resume
goes on from the saved scale and growth count, as the optimizer's moments do, so a
resumed run ends as the uninterrupted one (it started again from the initial scale:
other steps were skipped, other weights came out).

float16 autocast needs CUDA; here a CPU GradScaler stands in for the one
``accel.grad_scaler`` makes for ``train.amp = "fp16"``. Scaling is exact in float32,
so only its overflows matter: a scale that starts near float32's limit and grows
every step makes steps that overflow, are skipped and halve the scale, and which
steps those are depends on the scaler's state."""

from __future__ import annotations

import re

import pytest
import torch

import mmvm.accel as accel
from mmvm.checkpoint import load_checkpoint
from mmvm.training import train
from tests.support.training_data import tiny_config, two_factor_data


def _scaler(mode: str, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 120, growth_interval=1)


def test_a_resumed_run_goes_on_from_the_saved_loss_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "grad_scaler", _scaler)
    data = two_factor_data()
    whole = train(tiny_config(tmp_path / "whole", epochs=4), data, show_progress=False)
    train(tiny_config(tmp_path / "cut", epochs=2), data, show_progress=False)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["scaler"]
    assert saved["scale"] != 2.0 ** 120  # steps overflowed (and grew) before the cut
    resumed = train(tiny_config(tmp_path / "cut", epochs=4), data, resume=True,
                    show_progress=False)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weights differ"
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["scaler"] == \
        load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["scaler"]


def test_a_site_keeps_its_loss_scale_across_a_save_and_restore(tmp_path, monkeypatch,
                                                                tiny_polymnist, tiny_config):
    from mmvm.federation.site import Site

    monkeypatch.setattr(accel, "grad_scaler", _scaler)
    cfg = tiny_config(tiny_polymnist)
    site = Site(cfg, "a", tiny_polymnist / "train.parquet")
    site.scaler.scale(torch.ones(()))  # (a scaler's scale exists from its first use)
    site.scaler.update(new_scale=1024.0)  # as after overflows
    site.save(tmp_path / "a.pt")
    again = Site(cfg, "a", tiny_polymnist / "train.parquet")
    assert again.scaler.get_scale() == 2.0 ** 120
    again.restore(tmp_path / "a.pt")
    assert again.scaler.get_scale() == 1024.0
    from mmvm.checkpoint import load_torch, write_torch

    state = load_torch(tmp_path / "a.pt", torch.device("cpu"))
    write_torch(tmp_path / "a.pt", {**state, "scaler": {"scale": 0.0, "_growth_tracker": 0}})
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'a.pt'))}: its loss "
                                         f"scale is 0.0, not a finite number > 0"):
        again.restore(tmp_path / "a.pt")


@pytest.mark.parametrize("bad, said", [
    ({"scale": 0.0, "_growth_tracker": 0}, "its loss scale is 0.0, not a finite number > 0"),
    ({"scale": float("nan"), "_growth_tracker": 0}, "its loss scale is nan, not a finite"),
    ({"scale": 8.0, "_growth_tracker": -1}, "its loss scale's growth count is -1, not"),
    ({"scale": 8.0, "_growth_tracker": 0}, "its loss scale's state does not load"),
    ([8.0], "its loss scale is list, not a scaler's state"),
])
def test_a_loss_scale_no_scaler_wrote_is_refused_naming_the_file(tmp_path, monkeypatch,
                                                                 bad, said):
    """A scale of 0 or NaN loaded silently and skipped every step after it; a missing
    key failed inside torch (KeyError 'growth_factor') without naming the file."""
    from mmvm.checkpoint import write_torch

    monkeypatch.setattr(accel, "grad_scaler", _scaler)
    data = two_factor_data()
    train(tiny_config(tmp_path, epochs=1), data, show_progress=False)
    path = tmp_path / "checkpoint.pt"
    state = load_checkpoint(path)
    write_torch(path, {**state, "scaler": bad})
    with pytest.raises(ValueError, match=f"^checkpoint {re.escape(str(path))}: {re.escape(said)}"):
        train(tiny_config(tmp_path, epochs=2), data, resume=True, show_progress=False)
