"""Each method's aggregation on hand-made inputs, checked against the formulas."""

import math

import pytest
import torch

from mmvm.aggregation import (
    available_methods,
    can_federate,
    federated_methods,
    get_method,
    register,
    slice_selection,
    subsets,
)
from mmvm.divergences import kl_standard_normal, mmvm_regularizer


def hand_made():
    # B=2 samples, M=2 modalities, D=1
    mu = torch.tensor([[[1.0], [3.0]], [[-2.0], [2.0]]])
    var = torch.tensor([[[1.0], [4.0]], [[0.5], [0.5]]])
    return mu, var.log()


def zero_eps(mu):
    return torch.zeros_like(mu)


def test_registry_lists_all_methods_and_rejects_typos():
    assert set(available_methods()) >= {"independent", "mmvm", "avg", "poe", "moe", "mopoe"}
    with pytest.raises(ValueError, match="choose one of"):
        get_method("mopeo")


def test_registry_records_which_methods_federate():
    assert federated_methods() == ["independent", "mmvm"]
    assert can_federate("mmvm") and can_federate("independent")
    for name in ("avg", "poe", "moe", "mopoe"):
        assert not can_federate(name)
    assert set(federated_methods()) <= set(available_methods())


def test_can_federate_rejects_unknown_names_like_get_method():
    with pytest.raises(ValueError, match="choose one of") as got:
        can_federate("mopeo")
    with pytest.raises(ValueError) as expected:
        get_method("mopeo")
    assert str(got.value) == str(expected.value)


def test_register_defaults_to_not_federated(monkeypatch):
    import mmvm.aggregation as agg

    monkeypatch.setattr(agg, "_METHODS", dict(agg._METHODS))
    monkeypatch.setattr(agg, "_FEDERATED", set(agg._FEDERATED))
    register("toy")(get_method("avg"))
    register("toy_fed", federated=True)(get_method("mmvm"))
    assert not can_federate("toy") and can_federate("toy_fed")
    assert "toy_fed" in federated_methods() and "toy" not in federated_methods()


def test_avg_means_means_and_variances():
    mu, lv = hand_made()
    mask = torch.ones(2, 2, dtype=torch.bool)
    z, reg = get_method("avg")(mu, lv, mask, zero_eps(mu), 0.0)
    assert torch.allclose(z[:, 0], torch.tensor([[2.0], [0.0]]))
    assert torch.allclose(z[:, 1], z[:, 0])  # one joint z decoded by every modality
    # q_avg = N(2, 2.5) for sample 0: reg = M * KL(q_avg || N(0,1))
    kl0 = 0.5 * (2.5 + 4.0 - 1.0 - math.log(2.5))
    assert reg[0].item() == pytest.approx(2 * kl0, rel=1e-6)


def test_poe_is_precision_weighted():
    mu, lv = hand_made()
    mask = torch.ones(2, 2, dtype=torch.bool)
    g = torch.ones_like(mu)  # eps = 1 -> z = mu + sigma
    z, reg = get_method("poe")(mu, lv, mask, g, 0.0)
    # sample 0: precisions 1 and 1/4 -> var 0.8, mu 0.8 * (1 + 3/4) = 1.4
    assert z[0, 0].item() == pytest.approx(1.4 + math.sqrt(0.8), rel=1e-6)
    kl0 = 0.5 * (0.8 + 1.4**2 - 1.0 - math.log(0.8))
    assert reg[0].item() == pytest.approx(2 * kl0, rel=1e-6)


def test_poe_of_one_expert_is_that_expert():
    mu, lv = hand_made()
    mask = torch.tensor([[True, False], [False, True]])
    z, reg = get_method("poe")(mu, lv, mask, torch.ones_like(mu), 0.0)
    assert z[0, 0].item() == pytest.approx(1.0 + 1.0)
    assert z[1, 0].item() == pytest.approx(2.0 + math.sqrt(0.5), rel=1e-6)
    assert reg[0].item() == pytest.approx(kl_standard_normal(mu[0, 0], lv[0, 0]).item(), rel=1e-6)


def test_moe_uses_equal_slices_of_the_batch():
    B, M = 6, 3
    mu = torch.arange(M, dtype=torch.float).view(1, M, 1).expand(B, M, 1).clone()
    lv = torch.zeros(B, M, 1)
    z, _ = get_method("moe")(mu, lv, torch.ones(B, M, dtype=torch.bool), torch.zeros_like(mu), 0.0)
    assert z[:, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def _reference_slices(B: int, K: int) -> list[int]:
    """thomassutter/mmvmvae ``mixture_component_selection`` with equal weights 1/K:
    component k takes rows [start_k, start_k + floor(B / K)), the last one the rest."""
    owner, start = [], 0
    for k in range(K):
        end = B if k == K - 1 else start + int(math.floor(B * (1.0 / K)))
        owner += [k] * (end - start)
        start = end
    return owner


@pytest.mark.parametrize("B,K", [(6, 3), (128, 3), (256, 31), (10, 4), (2, 3), (7, 7)])
def test_slices_are_the_references_when_the_batch_does_not_divide(B, K):
    """The reference's last component takes the remainder (256 rows of the rats' 31
    MoPoE subsets: 8 each, 16 for the full set), not an even spread."""
    assert slice_selection(B, K).tolist() == _reference_slices(B, K)


def test_moe_never_selects_a_missing_modality():
    B, M = 6, 3
    mu = torch.arange(M, dtype=torch.float).view(1, M, 1).expand(B, M, 1).clone()
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[:, 1] = False
    z, _ = get_method("moe")(mu, torch.zeros(B, M, 1), mask, torch.zeros_like(mu), 0.0)
    assert set(z[:, 0, 0].tolist()) <= {0.0, 2.0}


def test_mopoe_subsets_and_selection():
    subs = subsets(3)
    assert subs.shape == (7, 3) and subs.sum(1).tolist() == [1, 1, 1, 2, 2, 2, 3]
    B, M = 7, 3
    mu = torch.tensor([1.0, 2.0, 4.0]).view(1, M, 1).expand(B, M, 1).clone()
    lv = torch.zeros(B, M, 1)  # unit variances: PoE mean = mean of the subset's means
    z, reg = get_method("mopoe")(mu, lv, torch.ones(B, M, dtype=torch.bool), torch.zeros_like(mu), 0.0)
    expected = [1.0, 2.0, 4.0, 1.5, 2.5, 3.0, 7.0 / 3.0]
    assert z[:, 0, 0].tolist() == pytest.approx(expected)
    # subset of size k has variance 1/k
    k = subs.sum(1).float()
    kl = 0.5 * (1 / k + torch.tensor(expected) ** 2 - 1 + torch.log(k))
    assert reg.tolist() == pytest.approx((3 * kl).tolist(), rel=1e-5)


def test_unimodal_methods_sample_each_modality_from_its_own_posterior():
    mu, lv = hand_made()
    eps = torch.ones_like(mu)
    mask = torch.ones(2, 2, dtype=torch.bool)
    for name in ("mmvm", "independent"):
        z, _ = get_method(name)(mu, lv, mask, eps, 0.0)
        assert torch.allclose(z, mu + torch.exp(0.5 * lv))
    _, reg = get_method("mmvm")(mu, lv, mask, eps, 0.0)
    assert torch.allclose(reg, mmvm_regularizer(mu, lv, 0.0, mask))
    _, reg = get_method("independent")(mu, lv, mask, eps, 0.0)
    assert torch.allclose(reg, kl_standard_normal(mu, lv).sum(1))


@pytest.mark.parametrize("name", ["independent", "mmvm", "avg", "poe", "moe", "mopoe"])
def test_absent_modality_values_never_matter(name):
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(8, 3, 4, generator=g), torch.randn(8, 3, 4, generator=g)
    eps = torch.randn(8, 3, 4, generator=g)
    mask = torch.rand(8, 3, generator=g) > 0.3
    mask[:, 0] = True
    z1, r1 = get_method(name)(mu, lv, mask, eps, 0.0)
    mu2, lv2 = mu.clone(), lv.clone()
    mu2[~mask], lv2[~mask] = 7.0, 3.0
    z2, r2 = get_method(name)(mu2, lv2, mask, eps, 0.0)
    assert torch.allclose(r1, r2)
    assert torch.allclose(z1[mask], z2[mask])
