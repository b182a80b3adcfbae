"""A site's own evaluation reports the test reconstruction error as `mmvm evaluate`
does: the expected weighted NLL under z ~ q(z | x_m), as in training (not the NLL of
decoding the posterior mean, a smaller number where q is wide)."""

from __future__ import annotations

import math
import re

import torch

from mmvm.data import open_dataset
from mmvm.federation.site_eval import evaluate_site
from tests.support.federate import federate, make_sites, plain_endpoints, split


def _per_row_draws(site, m: str, draws: int) -> torch.Tensor:
    """[rows, draws] of -w log p(x | z), z = mu + sigma eps: the definition, by hand."""
    test = open_dataset(site.test_path, site.names, site.cfg.data)
    x = test.batch(torch.arange(len(test)))["x"][m]
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        mu, logvar = site.model.encode_modality(m, x)
        out = []
        for _ in range(draws):
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            ll = site.model.log_likelihood(m, x, site.model.decode(m, z))
            out.append(-ll * float(site.model.specs[m].weight))
    return torch.stack(out, 1)


def test_the_sites_recon_nll_is_the_expectation_under_the_posterior(
        tiny_polymnist, tiny_config, tmp_path):
    cfg = tiny_config(tiny_polymnist)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    sites = make_sites(cfg, specs, root)
    federate(cfg, plain_endpoints(sites), exchange="step")
    site = sites["n0"]
    reported = evaluate_site(site)["recon_nll/m0"]
    draws = _per_row_draws(site, "m0", 32)
    expected = float(draws.mean())
    # the site's value is one draw a row: its Monte Carlo error around the rows'
    # expectations has variance mean_i Var(draw_i) / rows
    se = math.sqrt(float(draws.var(1).mean()) / draws.shape[0])
    assert abs(reported - expected) < 4 * se, (reported, expected, se)


def test_a_site_without_its_label_column_says_so(tiny_polymnist, tiny_config, tmp_path):
    """Its probe column in the run's summary was a bare "-"."""
    import dataclasses

    cfg = tiny_config(tiny_polymnist)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label="label.odor"))
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    site = make_sites(cfg, specs, root)["n0"]
    got = evaluate_site(site)
    assert got["unlabelled"] == 1.0 and "probe/m0" not in got
    assert "unlabelled" not in evaluate_site(site, probes=False)  # withheld: said apart


def test_a_sites_probe_counts_the_groups_its_test_rows_come_in(tiny_polymnist,
                                                               tiny_config, tmp_path):
    """Windows of one trial are not independent: the site says how many trials its
    scored rows span, and the summary's interval counts those (it counted windows)."""
    import numpy as np

    from mmvm.data.store import read_site_table, write_site_table

    cfg = tiny_config(tiny_polymnist)
    specs, root = split(tiny_polymnist, tmp_path, "vertical")
    site = make_sites(cfg, specs, root)["n0"]
    assert "probe_groups/m0" not in evaluate_site(site)  # no groups: rows count
    t = read_site_table(site.test_path)
    trial = np.array([f"T{i // 4}" for i in range(len(t.sample_ids))])  # 4 rows a trial
    labels = {k: v.copy() for k, v in t.labels.items()}
    labels["label"][:8] = -1  # trials T0 and T1 unlabelled: not scored, not counted
    write_site_table(site.test_path, t.sample_ids, t.tensors, labels,
                     {**t.dataset_meta, "group_column": "trial"},
                     columns={"trial": trial}, scales=t.scales)
    got = evaluate_site(site)
    assert got["probe_n/m0"] == len(trial) - 8
    assert got["probe_groups/m0"] == len(set(trial)) - 2 < got["probe_n/m0"]
    # a site that keeps its losses sends no size, this one included
    from mmvm.federation.window_metrics import evaluation_withheld

    assert not [k for k in evaluation_withheld(got) if k.startswith(("probe_n", "probe_g"))]


def test_judges_the_run_config_sizes_beyond_the_node_configs_limits_are_not_trained(
        tiny_polymnist, tiny_config):
    """The run's [eval] sizes the judges a site trains: its limits bound them as they
    bound the VAE's own training (a batch of every row was one way past max-batch)."""
    import dataclasses

    from mmvm.classifiers import recipe_for
    from mmvm.federation.policy import SitePolicy
    from mmvm.federation.site import Site
    from mmvm.federation.site_cross_eval import judges_too_large

    cfg = tiny_config(tiny_polymnist)
    site = Site(cfg, "a", tiny_polymnist / "train.parquet")  # 192 rows
    recipe, policy = recipe_for(cfg), SitePolicy(max_batch=150)
    assert recipe.batch_size <= 150 and judges_too_large(site, recipe, policy) is None
    wide = judges_too_large(site, dataclasses.replace(recipe, batch_size=10**6), policy)
    assert wide == ("the judge of m0 under the run's [eval] would take 192 (max-batch; "
                    "the node config allows 150)")
    long = judges_too_large(site, dataclasses.replace(recipe, epochs=10**6), policy)
    assert "would take 192,000,000 (max-visits; the node config allows" in long
    # memory: a width and batch within max-params and max-batch, or a shift, that
    # a step of the judge could not hold (the VAE's own step is bounded so too)
    for big in ({"width": 256, "batch_size": 150}, {"shift": 2_000}):
        said = judges_too_large(site, dataclasses.replace(recipe, **big),
                                SitePolicy(max_batch=150, max_step_gib=1))
        assert re.fullmatch(r"the judge of m0 under the run's \[eval\] would take "
                            r"[\d,.]+ GiB a step \(max-step-gib; the node config allows "
                            r"1\)", said or ""), (big, said)
