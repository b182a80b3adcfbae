"""Run folders for the report tests: 2 methods x 3 seeds of fake ones, and one real
run (trained once per session; tests read it or copy it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmvm.cli import main
from tests.reporting.pages import (
    COHERENCE,
    POLYMNIST,
    PROBES,
    RECON,
    eval_result,
    fake_run,
)


@pytest.fixture
def fake_runs(tmp_path) -> list[Path]:
    """2 methods x 3 seeds of evaluated run folders."""
    return [fake_run(tmp_path / "runs" / f"{m}-seed{s}",
                     eval_result(m, s, PROBES[m][s], RECON[m][s], COHERENCE[m][s]))
            for m in PROBES for s in range(3)]


@pytest.fixture(scope="session")
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
                 "--device", "cpu", "--threads", "1", "--no-coherence"]) == 0
    return out
