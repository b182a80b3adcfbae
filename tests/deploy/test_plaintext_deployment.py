"""A real plaintext deployment on 127.0.0.1 whose sites keep their weights:
SuperLink (TLS, node authentication) + 3 SuperNodes without keys, each with
``allow-collect=false`` in its node config, so the server assembles no model and holds
no data. The cross-site evaluation is then the run's only coherence and imputation:
each site (a fresh ClientApp child per message, its state on disk between them) sends
its test posteriors, and scores its own modality from the other two sites'. About a
minute."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.deployment import SITES, Deployment

BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("flower-superlink", path=str(BIN)) is None,
        reason="flower-superlink not installed next to this Python",
    ),
]


def test_sites_that_keep_their_weights_still_get_coherence_and_imputation(
        tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("plain"), fork=True,
                     plaintext="allow-collect=false")
    try:
        dep.start()
        run_id, out = dep.run(secure=False, **{"collect-model": True})
        assert dep.status(run_id) == "finished:completed", out
        folder = dep.out / f"run-{run_id}"
        res = json.loads((folder / "results.json").read_text())
    finally:
        dep.fleet.stop()
    assert sorted(res["kept_weights"]) == list(SITES)  # their node configs said so
    assert not (folder / "checkpoint.pt").exists()
    cross = res["cross_site"]
    pairs = {f"m{i}->m{j}" for i in range(3) for j in range(3) if i != j}
    assert set(cross["imputation"]["pairs"]) == pairs, cross
    assert cross["imputation"]["samples"] == 48 and res["cross_site_notes"] == {}
    assert all(math.isfinite(v) for v in cross["imputation"]["pairs"].values())
    assert set(cross["coherence"]["pairs"]) == pairs | {f"m{i}->m{i}" for i in range(3)}
    assert all(0.0 <= v <= 1.0 for v in cross["coherence"]["pairs"].values())
    assert "cross-site evaluation" in out and "imputation NLL" in out
