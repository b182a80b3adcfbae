"""A window of several steps sends, for each of its rows, the posterior the step that
trains the row computes with the window's starting weights: one encoder pass per
step's batch, so BatchNorm normalises each pass over the batch the step trains on
(chunks of sorted rows, which can hold one class each, would normalise otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmvm.federation.loop import run_federation
from mmvm.federation.settings import settings_for
from mmvm.federation.site_encode import step_groups
from mmvm.model import norm_stats_frozen
from tests.federation.test_exactness import batchnorm_sites  # noqa: F401 (a fixture)
from tests.support.crashes import Crash, CrashAt
from tests.support.federate import make_sites, plain_endpoints


@pytest.fixture
def attached(batchnorm_sites):  # noqa: F811
    """The BatchNorm sites attached for one-epoch windows (3 steps), stopped before
    window 0 trains: their weights are the window's starting weights."""
    cfg, specs, root = batchnorm_sites
    sites = make_sites(cfg, specs, root)
    with pytest.raises(Crash):
        run_federation(CrashAt(plain_endpoints(sites), 0, False),
                       settings_for(cfg, exchange="round", float16=False))
    return sites


def test_a_window_sends_what_each_step_computes_at_its_start(attached):
    site = next(s for s in attached.values() if "img" in s.names)
    link, j = site.linked(), site.names.index("img")
    steps = list(link.plan[0].steps)
    assert len(steps) == 3
    sent = site.encode(0)["img"]
    want_rows, want_mu = [], []
    site.model.train()
    with torch.no_grad(), norm_stats_frozen(site.model):
        for step in steps:  # the step's own forward: its rows here, with the modality
            rows = step.rows.numpy()
            rows = rows[link.local_of[rows] >= 0]
            batch = site.data.batch(link.local_of[rows])
            keep = batch["mask"][:, j].numpy()
            mu, _ = site.model.encode_modality("img", batch["x"]["img"][keep])
            want_rows.append(rows[keep])
            want_mu.append(mu.numpy())
    rows, mu = np.concatenate(want_rows), np.concatenate(want_mu)
    order = np.argsort(rows)
    assert np.array_equal(sent.rows, rows[order])  # every row once, sorted
    assert np.array_equal(sent.mu, mu[order])
    # BatchNorm makes the batch matter: one pass over all the window's rows differs
    (all_rows, all_local), = step_groups([_OneStep(np.sort(rows))], link.local_of)
    with torch.no_grad(), norm_stats_frozen(site.model):
        batch = site.data.batch(all_local)
        keep = batch["mask"][:, j].numpy()
        mu_all, _ = site.model.encode_modality("img", batch["x"]["img"][keep])
    assert np.array_equal(all_rows[keep], sent.rows)
    assert float(np.abs(mu_all.numpy() - sent.mu).max()) > 1e-4


def test_a_row_trained_twice_in_a_window_is_sent_once_from_its_first_step():
    local_of = np.array([0, -1, 1, 2, -1, 3])  # aligned rows 1 and 4 are not the site's
    steps = [_OneStep(np.array([5, 0, 1])), _OneStep(np.array([2, 4, 5])),
             _OneStep(np.array([3, 0]))]
    groups = step_groups(steps, local_of)
    assert [g[0].tolist() for g in groups] == [[5, 0], [2], [3]]
    assert [g[1].tolist() for g in groups] == [[3, 0], [1], [2]]


class _OneStep:
    def __init__(self, rows: np.ndarray):
        self.rows = torch.as_tensor(rows)
