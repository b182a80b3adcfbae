"""Missing-modality imputation against closed forms: an oracle model whose encoders
and decoders are identities on one-hot class vectors (q's variance e^-30), so an
imputed modality is exactly the one-hot vector of its source, and its Gaussian NLL
(scale 1, 10 dimensions) is 10 * log(2 pi) / 2 plus half the squared distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmvm.aggregation import available_methods
from mmvm.data.dataset import MultimodalDataset
from mmvm.evaluation import reconstruction_nll
from mmvm.imputation import imputation_nll, imputing_latents
from tests.support.evaluation_data import NAMES, onehot_dataset, oracle_model

NORM = 5 * math.log(2 * math.pi)  # -log N(x; x, I) in 10 dimensions


def _shifted(m1: int, m2: int, n: int = 40) -> MultimodalDataset:
    """One-hot classes: m0 holds class c, m1 class c + ``m1``, m2 class c + ``m2``."""
    y = np.arange(n) % 10
    eye = np.eye(10, dtype=np.float32)
    x = {"m0": eye[y], "m1": eye[(y + m1) % 10], "m2": eye[(y + m2) % 10]}
    return MultimodalDataset([f"s{i}" for i in range(n)], x, dict.fromkeys(NAMES, 1.0),
                             np.ones((n, 3), bool), y)


def _method_model(method: str, **kw):
    return oracle_model(private_dim=2 if method == "mmvaeplus" else 0, **kw)


@pytest.mark.parametrize("method", available_methods())
def test_a_modality_the_others_describe_exactly_is_imputed_at_the_likelihoods_floor(
        method):
    got = imputation_nll(_method_model(method), onehot_dataset(40), method, batch_size=16)
    assert set(got["rest"]) == set(NAMES) and got["n"] == dict.fromkeys(NAMES, 40)
    for t in NAMES:
        assert got["rest"][t] == pytest.approx(NORM, rel=1e-4)
    assert set(got["pairs"]) == {f"{s}->{t}" for s in NAMES for t in NAMES if s != t}
    assert all(v == pytest.approx(NORM, rel=1e-4) for v in got["pairs"].values())
    assert all(math.isnan(got["matrix"][i][i]) for i in range(3))
    several = imputation_nll(_method_model(method), onehot_dataset(40), method, draws=3)
    assert all(v == pytest.approx(NORM, rel=1e-4) for v in several["pairs"].values())


@pytest.mark.parametrize("method", available_methods())
def test_the_left_out_modality_never_reaches_its_own_latent(method):
    """m0 holds class c, m1 and m2 class c + 3: m0 imputed from them is c + 3's
    one-hot, two squared units from the truth (NLL + 1), whatever x_m0 says; its own
    reconstruction is exact."""
    data = _shifted(3, 3)
    model = _method_model(method)
    got = imputation_nll(model, data, method, batch_size=16)
    assert got["rest"]["m0"] == pytest.approx(NORM + 1.0, rel=1e-4)
    assert got["pairs"]["m1->m0"] == pytest.approx(NORM + 1.0, rel=1e-4)
    assert got["pairs"]["m2->m1"] == pytest.approx(NORM, rel=1e-4)
    assert got["pairs"]["m0->m1"] == pytest.approx(NORM + 1.0, rel=1e-4)


def test_a_decoder_that_moves_the_class_costs_its_target_only_and_weights_count():
    model = oracle_model(weights=(1.0, 2.0, 1.0), perm_m1=True)  # m1 decodes c as c+1
    got = imputation_nll(model, onehot_dataset(30), "mmvm")
    assert got["rest"]["m1"] == pytest.approx(2.0 * (NORM + 1.0), rel=1e-4)
    assert got["rest"]["m0"] == pytest.approx(NORM, rel=1e-4)
    assert got["mean"] == pytest.approx((2 * NORM + 2 * (NORM + 1.0)) / 3, rel=1e-4)
    assert got["total"] == pytest.approx(2 * NORM + 2 * (NORM + 1.0), rel=1e-4)


def test_only_samples_holding_the_target_and_another_modality_count():
    mask = np.ones((30, 3), bool)
    mask[:10, 1:] = False  # m0 alone: imputed for nothing, nothing imputed from it
    mask[10:20, 0] = False  # m1 and m2
    got = imputation_nll(oracle_model(), onehot_dataset(30, mask), "poe", batch_size=7)
    assert got["n"] == {"m0": 10, "m1": 20, "m2": 20}
    assert got["pairs"]["m1->m2"] == pytest.approx(NORM, rel=1e-4)
    only = np.zeros((5, 3), bool)
    only[:, 0] = True
    assert got["samples"] == 20  # rows 10-29; the total sums their 10 + 20 + 20
    assert got["total"] == pytest.approx(50 * NORM / 20, rel=1e-4)  # as recon's over them
    none = imputation_nll(oracle_model(), onehot_dataset(5, only), "mmvm")
    assert none["rest"] == {} and none["pairs"] == {} and math.isnan(none["mean"])
    assert math.isnan(none["total"])


def test_two_modalities_the_rest_is_the_pair_and_equals_the_mirrored_reconstruction():
    """Identical modalities with identical networks: t imputed from a draw of z_s
    decodes the draw s's own reconstruction uses, so the NLLs are equal exactly."""
    from mmvm.config import ModalitySpec
    from mmvm.model import MultimodalVAE

    torch.manual_seed(0)
    specs = [ModalitySpec(m, "vector", (6,), likelihood="gaussian", scale=0.5,
                          width=8, layers=1) for m in ("a", "b")]
    model = MultimodalVAE(specs, latent_dim=3)
    model.encoders["b"].load_state_dict(model.encoders["a"].state_dict())
    model.decoders["b"].load_state_dict(model.decoders["a"].state_dict())
    x = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32)
    data = MultimodalDataset([f"s{i}" for i in range(50)], {"a": x, "b": x},
                             {"a": 1.0, "b": 1.0}, np.ones((50, 2), bool), None)
    got = imputation_nll(model, data, "mmvm", batch_size=50, seed=3, sample=True)
    own = reconstruction_nll(model, data, "mmvm", batch_size=50, seed=3)["per_modality"]
    assert got["rest"]["b"] == pytest.approx(own["a"], rel=1e-6)
    assert got["pairs"] == {"a->b": got["rest"]["b"], "b->a": got["rest"]["a"]}


def test_the_imputing_latent_of_poe_is_the_sources_product_whatever_the_target_holds():
    mu, lv = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    sources = torch.tensor([[False, True, True]] * 4)
    z = imputing_latents("poe", mu, lv, sources)
    prec = torch.exp(-lv[:, 1:]).sum(1)
    want = (mu[:, 1:] * torch.exp(-lv[:, 1:])).sum(1) / prec
    assert z.shape == (4, 1, 2) and torch.allclose(z[:, 0], want, atol=1e-6)
    mu2 = mu.clone()
    mu2[:, 0] += 100.0  # what the left-out modality says changes nothing
    assert torch.equal(imputing_latents("poe", mu2, lv, sources), z)
    assert torch.equal(imputing_latents("mopoe", mu2, lv, sources), z)  # the subset's PoE
    eps = torch.randn(4, 3, 2)
    drawn = imputing_latents("mmvm", mu2, lv, sources, eps)  # one per component
    assert torch.allclose(drawn[:, 1:], mu[:, 1:] + torch.exp(lv[:, 1:] / 2) * eps[:, 1:])


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("sample", [False, True])
def test_joint_methods_decode_the_subsets_posterior_mixtures_score_each_component(
        method, sample):
    """m1 holds class c + 3, m2 class c + 5 (equal variances). A joint posterior of
    both has the mean (e_{c+3} + e_{c+5}) / 2, whose decoding is 1 + 1/4 + 1/4 squared
    units from m0's e_c: NLL + 0.75. A mixture decodes e_{c+3} and e_{c+5}, each
    2 squared units away: each costs NLL + 1, and so does their mean (the mean of the
    two components, never decoded, would score + 0.75)."""
    data = _shifted(3, 5)
    model = _method_model(method)
    want = 0.75 if method in ("avg", "poe", "mopoe") else 1.0
    got = imputation_nll(model, data, method, sample=sample)["rest"]["m0"]
    assert got == pytest.approx(NORM + want, rel=1e-4)


def test_mopoe_imputes_from_the_subsets_product_a_mixture_from_every_component():
    """m1 is right and sure (variance e^-30), m2 wrong and vaguer (e^-26): the PoE
    leans on m1, 1 / (1 + e^4) of the way to m2's class, so m0 from the rest costs
    0.5 * 2 * (1 / (1 + e^4))^2 over the floor (MoPoE's mixture of subset means would
    cost 1/9 more). MMVM's mixture: the mean of its components' costs, (0 + 1) / 2."""
    data = _shifted(0, 5)
    got = {}
    for method in ("poe", "mopoe", "mmvm"):
        model = _method_model(method)
        with torch.no_grad():
            model.encoders["m2"].logvar.bias.fill_(-26.0)
        got[method] = imputation_nll(model, data, method, sample=False)["rest"]["m0"]
    lean = 1.0 / (1.0 + math.exp(4.0))
    assert got["poe"] - NORM == pytest.approx(lean ** 2, rel=1e-3)
    assert got["mopoe"] == pytest.approx(got["poe"], rel=1e-6)
    assert got["mmvm"] - NORM == pytest.approx(0.5, rel=1e-4)


def test_a_mixture_of_equal_components_scores_as_their_joint_draw_for_draw():
    """Every modality says the same with variance 1/4: AVG's joint posterior and MMVM's
    mixture are one distribution, so one draw from either costs the same on average:
    the oracle decoder's ReLU passes half of the noise in the nine empty dimensions,
    0.5 * (9 * 1/8 + 1/4) over the floor. PoE's product of two has half the variance:
    half that. (Scored by the mixture's likelihood, two draws' likelihoods averaged
    inside the log, MMVM would come out better for the same prediction.)"""
    got = {}
    for method in ("avg", "mmvm", "poe"):
        model = _method_model(method)
        with torch.no_grad():
            for m in NAMES:
                model.encoders[m].logvar.bias.fill_(math.log(0.25))
        got[method] = imputation_nll(model, onehot_dataset(3000), method, batch_size=500,
                                     seed=1)["rest"]
    for t in NAMES:
        assert got["avg"][t] - NORM == pytest.approx(0.6875, abs=0.04)
        assert got["mmvm"][t] - NORM == pytest.approx(0.6875, abs=0.04)
        assert got["poe"][t] - NORM == pytest.approx(0.6875 / 2, abs=0.03)


def test_the_predictive_reading_credits_a_mixture_that_covers_the_truth():
    """S draws, log of the mean of p(x_t | z_s): MMVM's mixture of a right (m1) and a
    wrong (m2) component reads -log((1 + e^-1) / 2) over the floor as S grows, not
    the one-draw 0.5; a near-point PoE reads as with one draw."""
    data = _shifted(0, 5, n=400)
    mmvm = imputation_nll(_method_model("mmvm"), data, "mmvm", draws=64)
    assert mmvm["rest"]["m0"] - NORM == pytest.approx(-math.log((1 + math.exp(-1)) / 2),
                                                      abs=0.03)
    assert "predictive over 64 draws" in mmvm["scoring"]
    one = imputation_nll(_method_model("poe"), data, "poe")["rest"]["m0"]
    assert imputation_nll(_method_model("poe"), data, "poe", draws=8)["rest"]["m0"] == \
        pytest.approx(one, rel=1e-6)
    with pytest.raises(ValueError, match="more than one only with sample = True"):
        imputation_nll(_method_model("poe"), data, "poe", sample=False, draws=4)


def test_the_predictive_reading_of_equal_components_is_the_joint_draws():
    """Every modality says the same with variance 1/4: with S draws each, AVG's joint
    and MMVM's mixture are one distribution and read alike."""
    got = {}
    for method in ("avg", "mmvm"):
        model = _method_model(method)
        with torch.no_grad():
            for m in NAMES:
                model.encoders[m].logvar.bias.fill_(math.log(0.25))
        got[method] = imputation_nll(model, onehot_dataset(2000), method, batch_size=500,
                                     seed=2, draws=4)["rest"]
    for t in NAMES:
        assert got["avg"][t] == pytest.approx(got["mmvm"][t], abs=0.04)
