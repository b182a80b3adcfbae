"""Checkpoints load without unpickling code: a file from elsewhere cannot run code."""

from __future__ import annotations

import pytest
import torch

from mmvm.checkpoint import load_checkpoint, save_checkpoint


class Payload:
    """A pickled object: loading it would import and run arbitrary code."""

    def __reduce__(self):
        return (print, ("this ran during torch.load",))


def test_tensors_and_plain_data_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "history": [{"loss": 1.5}],
             "config": {"train": {"lr": 1e-3, "shape": (3, 28, 28)}}}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["history"] == state["history"] and back["config"] == state["config"]


def test_a_checkpoint_holding_objects_is_refused(tmp_path, capsys):
    torch.save({"model": {}, "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "this ran" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
