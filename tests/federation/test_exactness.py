"""Federated MMVM with exchange every step reproduces centralized training.

The reference note's argument: dR/dtheta_m needs only q_m and the other modalities'
current (mu, logvar); each site minimises its share of the batch-mean loss with its own
Adam, so parameters must agree with one centralized Adam over all modalities.
"""

from __future__ import annotations

import pytest
import torch

from mmvm.data.dataset import MultimodalDataset
from mmvm.data.sites import site_layout, split_sites
from mmvm.federation.driver import run_federation
from mmvm.federation.endpoint import LocalTransport
from mmvm.federation.site import Site
from mmvm.training import train


def _federate(cfg, site_dir, sites, exchange="step", **kw):
    local = {f"node-{i}": Site(cfg, s.name, site_dir / s.name / "train.parquet")
             for i, s in enumerate(sites)}
    res = run_federation(LocalTransport(local), [m.name for m in cfg.model.modalities],
                         batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                         epochs=cfg.train.epochs, exchange=exchange,
                         latent_dim=cfg.model.latent_dim, **kw)
    params = {}
    for site in local.values():
        for m in site.names:
            params.update(site.weights(m))
    return res, params


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_exchange_every_step_equals_centralized(tiny_polymnist, tiny_config, tmp_path, missing):
    cfg = tiny_config(tiny_polymnist, out_dir=str(tmp_path / "central"))
    sites = site_layout("vertical", ["m0", "m1", "m2"])
    split_sites(tiny_polymnist / "train.parquet", tmp_path / "sites", sites, missing=missing)
    files = [tmp_path / "sites" / s.name / "train.parquet" for s in sites]
    data = MultimodalDataset.from_parquet(files, ["m0", "m1", "m2"])
    if missing:
        assert not bool(data.mask.all()), "the split should drop some modalities"
    central = train(cfg, data, resume=False, show_progress=False).model.state_dict()
    res, fed = _federate(cfg, tmp_path / "sites", sites)
    assert len(res.history) == 2 * 3  # 192 samples / 64 per batch, 2 epochs
    assert set(fed) == set(central)
    worst = max((fed[k] - central[k].numpy()).__abs__().max() for k in central)
    assert worst < 1e-4, f"largest parameter difference {worst}"


def test_stale_exchange_differs_but_trains(tiny_polymnist, tiny_config, tmp_path):
    """Sanity of the test above: per-round exchange is NOT exact, yet it learns."""
    cfg = tiny_config(tiny_polymnist)
    sites = site_layout("vertical", ["m0", "m1", "m2"])
    split_sites(tiny_polymnist / "train.parquet", tmp_path / "sites", sites)
    _, exact = _federate(cfg, tmp_path / "sites", sites, "step")
    res, stale = _federate(cfg, tmp_path / "sites", sites, "round", local_epochs=2)
    assert len(res.history) == 1
    diff = max(abs(exact[k] - stale[k]).max() for k in exact)
    assert diff > 1e-5
    assert res.bytes_total > 0


def test_event_triggered_exchange(tiny_polymnist, tiny_config, tmp_path):
    """delta_tol = 0 resends every row that changed at all: still exact; a positive
    tolerance sends fewer bytes (rows that barely moved stay cached at the receiver)."""
    cfg = tiny_config(tiny_polymnist)
    sites = site_layout("vertical", ["m0", "m1", "m2"])
    split_sites(tiny_polymnist / "train.parquet", tmp_path / "sites", sites)
    full, exact = _federate(cfg, tmp_path / "sites", sites, "round")
    zero, same = _federate(cfg, tmp_path / "sites", sites, "round", delta_tol=0.0)
    assert max(abs(exact[k] - same[k]).max() for k in exact) == 0.0
    loose, _ = _federate(cfg, tmp_path / "sites", sites, "round", delta_tol=1.0)
    assert loose.bytes_total < zero.bytes_total
