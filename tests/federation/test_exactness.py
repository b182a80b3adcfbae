"""Federated MMVM with exchange every step reproduces centralized training.

The reference note's argument: dR/dtheta_m needs only q_m and the other modalities'
current (mu, logvar); each site minimises its share of the batch-mean loss with its own
Adam, so parameters must agree with one centralized Adam over all modalities: bit for
bit, also with missing modalities and BatchNorm, since a site's step runs the
centralized step's operations on the same tensors: every network runs on the rows
that have its modality (``mmvm.model``), which are the rows its site holds, and a
site's encoder pass feeds both the posteriors it sends and its own loss
(``mmvm.federation.lookahead``). In a horizontal split every site holds every
modality of its own samples: FedAvg then only approximates centralized training, but
it must train.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmvm.config import config_from_dict
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.sites import site_layout, split_sites
from mmvm.data.store_write import write_site_table
from mmvm.training import train
from tests.support.federate import (
    MODALITIES,
    federate,
    make_sites,
    params,
    plain_endpoints,
    split,
)


def _run(cfg, tmp_path, data_root, layout="vertical", missing=0.0, **settings):
    specs, root = split(data_root, tmp_path, layout, missing)
    sites = make_sites(cfg, specs, root)
    res = federate(cfg, plain_endpoints(sites), **settings)
    return res, params(sites.values()), (specs, root, sites)


@pytest.mark.parametrize("missing, extra", [
    (0.0, {}), (0.3, {}), (0.0, {"amp": "bf16", "channels_last": True}),
    # cut per modality, so a site's cut is the centralized one (0.5: every step cuts)
    (0.0, {"grad_clip": 0.5})],
    ids=["all rows", "missing 0.3", "bf16 + channels_last", "grad_clip"])
def test_exchange_every_step_equals_centralized(tiny_polymnist, tiny_config, tmp_path,
                                                missing, extra):
    cfg = tiny_config(tiny_polymnist, out_dir=str(tmp_path / "central"), **extra)
    res, fed, (specs, root, sites) = _run(cfg, tmp_path, tiny_polymnist, missing=missing,
                                          exchange="step")
    files = [root / s.name / "train.parquet" for s in specs]
    data = MultimodalDataset.from_parquet(files, MODALITIES)
    if missing:
        assert not bool(data.mask.all()), "the split should drop some modalities"
    central = train(cfg, data, resume=False, show_progress=False).model.state_dict()
    assert len(res.history) == 2 * 3  # 192 samples / 64 per batch, 2 epochs
    # every step took over the encoder pass made when its posteriors were sent
    assert [s.forwards_reused for s in sites.values()] == [6] * len(specs)
    assert set(fed) == set(central)
    worst = max(np.abs(fed[k] - central[k].numpy()).max() for k in central)
    # every site runs the very operations of the centralized step, with missing
    # modalities too: a network runs on its modality's present rows only (mmvm.model),
    # the rows its site holds (before that, 8e-8 apart with 30 % missing)
    assert worst == 0.0, f"largest parameter difference {worst}"
    if extra.get("grad_clip"):  # the cut was made: without it the run ends elsewhere
        t = dataclasses.replace(cfg.train, grad_clip=0.0, out_dir=str(tmp_path / "uncut"))
        uncut = train(dataclasses.replace(cfg, train=t), data, resume=False,
                      show_progress=False).model.state_dict()
        assert max(np.abs(uncut[k].numpy() - central[k].numpy()).max() for k in central) > 0


def test_a_site_that_streams_its_file_trains_as_one_that_holds_it(
        tiny_polymnist, tiny_config, tmp_path):
    """A site whose node config says streaming=true (its train file in 16-row groups,
    read through a decoded copy in its state folder) while the others hold theirs:
    exchange every step still equals centralized training bit for bit."""
    from mmvm.data.store import read_site_table
    from mmvm.data.streaming import StreamingDataset
    from mmvm.federation.node_config import load_policy
    from mmvm.federation.site import Site
    from mmvm.federation.site_config import site_experiment
    from tests.support.federate import federate, plain_endpoints

    cfg = tiny_config(tiny_polymnist, out_dir=str(tmp_path / "central"))
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    own = root / specs[0].name / "train.parquet"
    t = read_site_table(own)
    write_site_table(own, t.sample_ids, t.tensors, t.labels, t.dataset_meta,
                     scales=t.scales, row_group_size=16)
    policy = load_policy({"data": str(own.parent), "streaming": "true",
                          "state": str(tmp_path / "state")}, specs[0].name)
    sites = make_sites(cfg, specs, root)
    sites["n0"] = Site(site_experiment(policy, cfg), specs[0].name, own, own.with_name(
        "test.parquet"))
    assert isinstance(sites["n0"].data, StreamingDataset)
    assert len(list((tmp_path / "state" / "decoded").glob("*.npy"))) == 1  # its m0
    federate(cfg, plain_endpoints(sites), exchange="step")
    assert not sites["n0"].data.cache_info()["reads"]  # no row group decoded per batch
    fed = params(sites.values())
    files = [root / s.name / "train.parquet" for s in specs]
    central = train(cfg, MultimodalDataset.from_parquet(files, MODALITIES), resume=False,
                    show_progress=False).model.state_dict()
    assert max(np.abs(fed[k] - central[k].numpy()).max() for k in central) == 0.0


@pytest.fixture(scope="module")
def batchnorm_sites(tmp_path_factory):
    """96 samples of a 64 x 64 image (res_image: BatchNorm) and a vector, each
    modality missing from ~30 % of them, split vertically; a config over them."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("batchnorm")
    rng = np.random.default_rng(0)
    n, factor = 96, rng.normal(size=(96, 3))
    img = (0.3 * rng.uniform(size=(n, 1, 64, 64))
           + 0.5 * (factor[:, :1, None, None] > 0)).astype(np.float32)
    vec = (factor @ rng.normal(size=(3, 6))).astype(np.float32)
    write_site_table(root / "train.parquet", [f"s{i:03d}" for i in range(n)],
                     {"img": img, "vec": vec}, None, {"name": "batchnorm-toy"})
    specs = site_layout("vertical", ["img", "vec"])
    split_sites([root / "train.parquet"], root / "sites", specs, missing=0.3)
    mods = {"img": {"kind": "image", "shape": [1, 64, 64], "network": "res_image",
                    "width": 2},
            "vec": {"kind": "vector", "shape": [6], "likelihood": "gaussian", "scale": 1.0,
                    "width": 8}}
    cfg = config_from_dict({
        "data": {"root": str(root)},
        "model": {"method": "mmvm", "latent_dim": 4, "modalities": mods},
        "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3, "seed": 3, "device": "cpu",
                  "out_dir": str(root / "central")}})
    return cfg, specs, root / "sites"


def test_batchnorm_with_missing_modalities_equals_centralized(batchnorm_sites):
    """BatchNorm normalises over the rows a network runs on: at a site its own rows
    of its modality, centrally the rows that have it, the same rows. Parameters and
    running statistics agree bit for bit (with the absent rows' filler in the
    centralized batch statistics they were ~6e-3 and ~6e-2 apart)."""
    cfg, specs, root = batchnorm_sites
    sites = make_sites(cfg, specs, root)
    federate(cfg, plain_endpoints(sites), exchange="step")
    fed = params(sites.values())
    data = MultimodalDataset.from_parquet([root / s.name / "train.parquet" for s in specs],
                                          ["img", "vec"])
    assert 0.5 < float(data.mask.float().mean()) < 0.9  # modalities are missing
    assert [s.forwards_reused for s in sites.values()] == [3, 3]
    central = train(cfg, data, resume=False, show_progress=False).model.state_dict()
    assert set(fed) == set(central)
    stats = [k for k in central if "running_" in k]
    assert stats and all(float(central[k].abs().max()) > 0 for k in stats)
    for k in central:
        assert np.array_equal(fed[k], central[k].numpy()), k


def test_stale_exchange_differs_but_trains(tiny_polymnist, tiny_config, tmp_path):
    """Sanity of the test above: per-round exchange is NOT exact, yet it learns."""
    cfg = tiny_config(tiny_polymnist)
    _, exact, _ = _run(cfg, tmp_path, tiny_polymnist, exchange="step")
    res, stale, _ = _run(cfg, tmp_path, tiny_polymnist, exchange="round", local_epochs=2)
    assert len(res.history) == 1
    assert max(abs(exact[k] - stale[k]).max() for k in exact) > 1e-5
    assert res.bytes_total > 0


def test_event_triggered_exchange(tiny_polymnist, tiny_config, tmp_path):
    """delta_tol = 0 resends every row that changed at all: still exact; a positive
    tolerance sends fewer bytes (rows that barely moved stay cached at the receiver)."""
    cfg = tiny_config(tiny_polymnist)
    _, exact, _ = _run(cfg, tmp_path, tiny_polymnist, exchange="round")
    zero, same, _ = _run(cfg, tmp_path, tiny_polymnist, exchange="round", delta_tol=0.0)
    assert max(abs(exact[k] - same[k]).max() for k in exact) == 0.0
    loose, _, _ = _run(cfg, tmp_path, tiny_polymnist, exchange="round", delta_tol=1.0)
    assert loose.bytes_total < zero.bytes_total


def test_horizontal_sites_average_their_weights_and_learn(tiny_polymnist, tiny_config,
                                                           tmp_path):
    """Two sites, each with all three modalities of half the samples: after every
    window their weights are averaged (FedAvg), so both end with the same model, one
    whose training reconstruction error fell."""
    torch.manual_seed(0)
    cfg = tiny_config(tiny_polymnist, epochs=3)
    specs, root = split(tiny_polymnist, tmp_path, "horizontal")
    sites = make_sites(cfg, specs, root)
    res = federate(cfg, plain_endpoints(sites), exchange="round")
    a, b = (params([s]) for s in sites.values())
    assert set(a) == set(b)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the evaluate message averaged
    rec = [r["rec_nll"] for r in res.history]
    assert len(rec) == 3 and rec[-1] < rec[0], rec
    n = {v["site"]: v["n"] for v in res.sites.values()}
    assert sum(n.values()) == 192 and min(n.values()) > 0
