"""A site's optimizer is built at its first step, and its state survives a restore.

Building a torch optimizer imports ``torch._dynamo`` (1-2 s of CPU); a deployment's
ClientApp is a new process per message, so a message that does not train must not pay
for it. What is saved and restored must still be exactly the optimizer's state: a
restored site trains on bit for bit as the one that saved it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmvm.federation.site import Site
from tests.support.federate import federate, make_sites, plain_endpoints, split

ROOT = Path(__file__).resolve().parents[2]

NO_DYNAMO = """
import sys, torch
from mmvm.config import config_from_dict
from mmvm.federation.site import Site
root, out = sys.argv[1], sys.argv[2]
mods = {m: {"kind": "image", "shape": [3, 28, 28], "width": 4} for m in ("m0", "m1", "m2")}
cfg = config_from_dict({"data": {"root": root}, "model": {"latent_dim": 8, "modalities": mods},
                        "train": {"epochs": 1, "batch_size": 64, "device": "cpu"}})
site = Site(cfg, "a", root + "/train.parquet")
site.save(out)
again = Site(cfg, "a", root + "/train.parquet")
again.restore(out)
again.save(out)
print("before", "torch._dynamo" in sys.modules)
again.optimizer
print("after", "torch._dynamo" in sys.modules)
"""


def test_a_site_that_does_not_train_never_imports_dynamo(tiny_polymnist, tmp_path):
    res = subprocess.run([sys.executable, "-c", NO_DYNAMO, str(tiny_polymnist),
                          str(tmp_path / "a.pt")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["before", "False", "after", "True"], res.stdout


def _federated(tiny_polymnist, tiny_config, tmp_path):
    cfg = tiny_config(tiny_polymnist)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    federate(cfg, plain_endpoints(sites), exchange="step")
    return cfg, sites["n0"]


@pytest.fixture(scope="module")
def saved(tiny_polymnist, tiny_config, tmp_path_factory):
    """One federation for the module: its config, site n0's folder and saved state."""
    cfg, site = _federated(tiny_polymnist, tiny_config, tmp_path_factory.mktemp("fed"))
    folder = Path(site.train_path).parent
    site.save(folder / "n0-state.pt")
    return cfg, site.name, folder


@pytest.fixture
def trained(saved, tmp_path):
    """Site n0 after the run, restored from its state into a copy of its folder (a
    test may rewrite the files)."""
    import shutil

    cfg, name, folder = saved
    copy = Path(shutil.copytree(folder, tmp_path / "site"))
    site = Site(cfg, name, copy / "train.parquet")
    site.restore(copy / "n0-state.pt")
    return cfg, site


def test_a_restored_site_trains_on_exactly_as_the_one_that_saved(tiny_polymnist,
                                                                  tiny_config, tmp_path):
    cfg, site = _federated(tiny_polymnist, tiny_config, tmp_path)  # the live one
    site.save(tmp_path / "a.pt")
    fresh = Site(cfg, site.name, site.train_path)
    fresh.restore(tmp_path / "a.pt")
    fresh.save(tmp_path / "b.pt")  # its optimizer not built yet: the state as read
    a, b = (torch.load(tmp_path / f, weights_only=True)["optimizer"] for f in ("a.pt", "b.pt"))
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for k, st in a["state"].items():
        assert st["step"] > 0 and all(torch.equal(v, b["state"][k][n]) for n, v in st.items())
    for s in (site, fresh):
        s.train_window(0, {})
    for (n, p), (n2, q) in zip(site.model.named_parameters(), fresh.model.named_parameters(),
                               strict=True):
        assert n == n2 and torch.equal(p, q), n


def _one_tensor_short(opt: dict) -> None:
    opt["param_groups"][0]["params"].pop()


def _two_groups(opt: dict) -> None:  # the right count, not the site's one group
    g = opt["param_groups"][0]
    opt["param_groups"] = [{**g, "params": g["params"][:2]}, {**g, "params": g["params"][2:]}]


@pytest.mark.parametrize("spoil", [_one_tensor_short, _two_groups])
def test_a_saved_optimizer_of_another_model_is_refused_when_read(trained, tmp_path, spoil):
    cfg, site = trained
    site.save(tmp_path / "a.pt")
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    spoil(state["optimizer"])
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: the saved optimizer state does not fit"):
        Site(cfg, site.name, site.train_path).restore(tmp_path / "bad.pt")


def test_a_model_beyond_max_params_is_refused_before_it_is_built(tiny_polymnist,
                                                                  tiny_config, tmp_path):
    """The submitter's config sets the model's size; the site counts its own
    modalities' parameters on the meta device and refuses before allocating."""
    from mmvm.federation.node_config import load_policy
    from mmvm.federation.policy import PolicyError
    from mmvm.training import count_parameters

    cfg = tiny_config(tiny_polymnist)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    train = root / specs[0].name / "train.parquet"
    site = Site(cfg, specs[0].name, train)
    built = sum(p.numel() for p in site.model.parameters())
    assert count_parameters(cfg, site.names) == built < count_parameters(cfg)
    policy = load_policy({"data": "/d", "max-params": str(built - 1)}, specs[0].name)
    seen = []

    def admit(names):
        seen.append(names)
        policy.check_params(specs[0].name, count_parameters(cfg, names))

    with pytest.raises(PolicyError, match=rf"{built:,} parameters.*\(max-params\)"):
        Site(cfg, specs[0].name, train, admit=admit)
    assert seen == [site.names]


def test_admitted_but_extreme_peer_posteriors_stop_the_step_before_adam_sees_it(trained):
    """mu = 0, logvar = -80 lies within what a site admits by default; the loss stays
    finite but its gradients overflow float32. Adam would square them into an inf
    second moment and freeze those weights silently: the step is refused instead,
    naming the step and the values received, and nothing of it is applied."""
    from mmvm.federation.posteriors import Posteriors
    from mmvm.training import TrainingDivergedError

    _, site = trained
    rows = site.window_rows(0)
    peer = next(m for m in site.global_names if m not in site.names)
    n, d = len(rows), site.model.latent_dim
    others = {peer: Posteriors(rows, np.zeros((n, d), np.float32),
                               np.full((n, d), -80.0, np.float32))}
    before = {k: v.clone() for k, v in site.model.state_dict().items()}
    moments = {k: {n: v.clone() for n, v in st.items() if torch.is_tensor(v)}
               for k, st in site.optimizer.state_dict()["state"].items()}
    with pytest.raises(TrainingDivergedError, match=rf"step \d+: .*gradient.*{peer}: "
                       r"\|mu\| <= 0, logvar in \[-80, -80\]"):
        site.train_window(0, others)
    after = site.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    state = site.optimizer.state_dict()["state"]
    assert all(torch.equal(v, state[k][n]) for k, st in moments.items() for n, v in st.items())
    assert all(p.grad is None for p in site.model.parameters())


def _rewrite_ids(path, change) -> None:
    """Rewrite a site file's rows through ``change(ids) -> rows to keep, new ids``,
    keeping its schema (and the metadata in it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    keep, ids = change(table.column("sample_id").to_pylist())
    table = table.take(pa.array(keep))
    i = table.schema.get_field_index("sample_id")
    table = table.set_column(i, table.schema.field(i), pa.array(ids))
    pq.write_table(table, path)


@pytest.mark.parametrize("change,says", [
    (lambda ids: (list(range(len(ids))), ["zzz", *ids[1:]]), "samples, but not the same"),
    (lambda ids: (list(range(len(ids) - 5)), ids[:-5]), "samples now"),
    (lambda ids: (list(range(len(ids)))[::-1], ids[::-1]), None)])  # order: the same ids
def test_a_state_is_restored_only_over_the_sample_ids_it_attached(trained, tmp_path,
                                                                   change, says):
    """One id renamed in a site's file between a run and its resume (or under a
    deployed site, which reads its files at every message): every later position
    pointed at another sample, and training went on paired wrongly, without a word."""
    from mmvm.federation.site_data import DataChangedError

    cfg, site = trained
    site.save(tmp_path / "a.pt")
    n = len(site.data)
    _rewrite_ids(site.train_path, change)
    again = Site(cfg, site.name, site.train_path)
    if says is None:
        again.restore(tmp_path / "a.pt")
        assert len(again.data) == n
        return
    with pytest.raises(DataChangedError, match=rf"site {site.name}: its training data "
                       rf"\(.*train\.parquet\) is not what its state \(.*a\.pt\) was "
                       rf"attached over: .*{says}.*put back the files the run began with"):
        again.restore(tmp_path / "a.pt")
