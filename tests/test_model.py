"""mmvm.model + mmvm.networks: shapes, input checks, seeded per-modality init, weights."""

from __future__ import annotations

import math

import pytest
import torch

from mmvm.config import ModalitySpec, config_from_dict
from mmvm.model import MultimodalVAE, norm_stats_frozen
from mmvm.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from mmvm.objectives import compute_loss
from mmvm.training import build_model

torch.set_num_threads(1)
D = 8
IMG = ModalitySpec("img", "image", (3, 28, 28), width=4)
VEC = ModalitySpec("vec", "vector", (5, 2), likelihood="gaussian", scale=0.5, width=6)


def _model(seed=0):
    return MultimodalVAE([IMG, VEC], D, seed=seed)


def _x(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"img": torch.rand(b, 3, 28, 28, generator=g), "vec": torch.randn(b, 5, 2, generator=g)}


def _cfg(seed=3, **weights):
    mods = {m: {"kind": "image", "shape": [3, 28, 28], "width": 4,
                "weight": weights.get(m, 1.0)} for m in ("m0", "m1", "m2")}
    return config_from_dict({"model": {"latent_dim": D, "modalities": mods},
                             "train": {"seed": seed, "device": "cpu"}})


# ---------------------------------------------------------------------------- shapes
def test_encode_decode_shapes_image_and_vector():
    model, x = _model(), _x(b=4)
    assert model.names == ["img", "vec"] and model.latent_dim == D
    assert isinstance(model.encoders["img"], ConvEncoder)
    assert isinstance(model.decoders["img"], ConvDecoder)
    assert isinstance(model.encoders["vec"], MLPEncoder)
    assert isinstance(model.decoders["vec"], MLPDecoder)
    for name in model.names:
        mu, lv = model.encode_modality(name, x[name])
        assert mu.shape == lv.shape == (4, D)
    mu, lv = model.encode(x)
    assert mu.shape == lv.shape == (4, 2, D)
    z = torch.randn(4, D)
    img = model.decode("img", z)
    assert img.shape == (4, 3, 28, 28)
    assert bool(((img >= 0) & (img <= 1)).all())  # sigmoid output: pixel means in [0, 1]
    assert model.decode("vec", z).shape == (4, 5, 2)
    assert model.log_likelihood("vec", x["vec"], model.decode("vec", z)).shape == (4,)


def test_conv_encoder_feature_size_follows_width():
    # 28 -> 14 -> 7 with widths w, 2w, 4w: the heads read 4w x 7 x 7 features
    enc = ConvEncoder(channels=3, width=4, latent_dim=D)
    assert enc.mu.in_features == 4 * 4 * 49 and enc.logvar.out_features == D


def test_mlp_sizes_and_width_zero_means_input_size():
    spec = ModalitySpec("r", "vector", (7, 10), width=0, layers=2)
    model = MultimodalVAE([spec], latent_dim=2)
    linears = [m for m in model.encoders["r"].modules() if isinstance(m, torch.nn.Linear)]
    # D -> D -> D, then heads to 2 (hippocampus: D = 10 x neurons)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(70, 70), (70, 70), (70, 2),
                                                                   (70, 2)]
    dec = [m for m in model.decoders["r"].modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in dec] == [(2, 70), (70, 70), (70, 70)]


def test_encode_zeros_where_mask_false_and_skips_absent_modality():
    model, x = _model(), _x(b=3)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    mu, lv = model.encode(x, mask)
    full_mu, full_lv = model.encode(x)
    assert torch.equal(mu[~mask], torch.zeros(int((~mask).sum()), D))
    assert torch.equal(lv[~mask], torch.zeros(int((~mask).sum()), D))
    torch.testing.assert_close(mu[mask], full_mu[mask])
    torch.testing.assert_close(lv[mask], full_lv[mask])
    # a modality absent from the dict is not run at all (its data may be anything)
    mu2, _ = model.encode({"img": x["img"]}, torch.tensor([[True, False]] * 3))
    assert torch.equal(mu2[:, 1], torch.zeros(3, D))


# ---------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name, shape", [
    ("img", (4, 1, 28, 28)), ("img", (4, 3, 32, 32)), ("img", (3, 28, 28)),
    ("vec", (4, 10)), ("vec", (4, 5, 2, 1)),
])
def test_wrong_input_shape_names_modality(name, shape):
    model = _model()
    with pytest.raises(ValueError, match=rf"modality '{name}': expected input of shape"):
        model.encode_modality(name, torch.zeros(shape))


def test_wrong_shape_through_encode_names_modality():
    x = _x(b=2)
    x["vec"] = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"modality 'vec'.*\[batch, 5, 2\].*\[2, 3\]"):
        _model().encode(x)


def test_nan_and_inf_input_name_modality_and_rows():
    model, x = _model(), _x(b=5)
    x["vec"][1, 0, 0] = float("nan")
    x["vec"][3, 4, 1] = float("inf")
    with pytest.raises(ValueError) as info:
        model.encode_modality("vec", x["vec"])
    assert str(info.value) == (
        "modality 'vec': NaN or inf in the input at batch positions [1, 3] of 5 "
        "(positions within this batch, not sample ids; site files are checked finite, "
        "also once divided by their scale, naming each bad sample id: `mmvm data check "
        "FILE`)")
    x = _x(b=5)
    x["img"][4, 2, 10, 10] = float("nan")
    with pytest.raises(ValueError, match=r"modality 'img': NaN or inf in the input at "
                                         r"batch positions \[4\] of 5 \(positions within"):
        model.encode(x)


def test_unknown_modality_and_bad_construction():
    model = _model()
    with pytest.raises(ValueError, match=r"unknown modality 'txt'; the model has \['img', 'vec'\]"):
        model.encode_modality("txt", torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least one modality"):
        MultimodalVAE([], D)
    with pytest.raises(ValueError, match="unique"):
        MultimodalVAE([IMG, IMG], D)
    with pytest.raises(ValueError, match=r"\['vec'\] are not in global_names"):
        MultimodalVAE([IMG, VEC], D, seed=0, global_names=["img"])


# --------------------------------------------------------------- seeded init per modality
def test_site_model_has_exactly_the_centralized_weights():
    cfg = _cfg(seed=3)
    central = build_model(cfg).state_dict()
    for names in (["m1"], ["m0", "m2"], ["m2"]):
        site = build_model(cfg, names)
        assert site.names == names
        sd = site.state_dict()
        prefixes = tuple(f"{part}.{n}." for n in names for part in ("encoders", "decoders"))
        assert set(sd) == {k for k in central if k.startswith(prefixes)}
        for k, v in sd.items():
            assert torch.equal(v, central[k]), k


def test_init_is_independent_of_global_rng_and_differs_by_seed_and_modality():
    cfg = _cfg(seed=3)
    torch.manual_seed(123)
    a = build_model(cfg).state_dict()
    torch.manual_seed(456)
    b = build_model(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model(_cfg(seed=4)).state_dict()
    assert not torch.equal(a["encoders.m0.mu.weight"], c["encoders.m0.mu.weight"])
    # the same architecture at different positions gets different weights
    assert not torch.equal(a["encoders.m0.mu.weight"], a["encoders.m1.mu.weight"])
    # building a model does not consume the caller's random stream
    torch.manual_seed(7)
    expect = torch.rand(3)
    torch.manual_seed(7)
    build_model(cfg)
    assert torch.equal(torch.rand(3), expect)


def test_modality_parameters_are_disjoint_and_cover_the_model():
    model = build_model(_cfg())
    ids = [set(map(id, model.modality_parameters(n))) for n in model.names]
    assert all(not (ids[i] & ids[j]) for i in range(3) for j in range(i + 1, 3))
    assert set().union(*ids) == set(map(id, model.parameters()))


# ---------------------------------------------------------------- likelihood weights
def test_likelihood_values_and_weights_enter_the_loss():
    model, x = _model(), _x(b=3)
    z = torch.randn(3, D)
    out = model.decode("vec", z)
    # Gaussian with sigma = 0.5 over 10 dims, normaliser included
    expect = (-(x["vec"] - out) ** 2 / (2 * 0.25) - math.log(0.5)
              - 0.5 * math.log(2 * math.pi)).reshape(3, -1).sum(1)
    torch.testing.assert_close(model.log_likelihood("vec", x["vec"], out), expect)

    cfg1, cfg2 = _cfg(), _cfg(m1=3.0, m2=0.0)
    m1, m2 = build_model(cfg1), build_model(cfg2)
    assert m2.likelihood_weights.tolist() == [1.0, 3.0, 0.0]
    g = torch.Generator().manual_seed(1)
    batch = {"x": {n: torch.rand(4, 3, 28, 28, generator=g) for n in ("m0", "m1", "m2")},
             "mask": torch.ones(4, 3, dtype=torch.bool)}
    eps = torch.randn(4, 3, D, generator=g)
    t1 = compute_loss(m1, batch, "mmvm", 1.0, 0.0, eps)
    t2 = compute_loss(m2, batch, "mmvm", 1.0, 0.0, eps)
    torch.testing.assert_close(t1.rec_ll, t2.rec_ll)  # same weights -> same ll per modality
    w = torch.tensor([1.0, 3.0, 0.0])
    torch.testing.assert_close(t2.loss, (-(t2.rec_ll * w).sum(1) + t2.reg).mean())
    assert not torch.allclose(t1.loss, t2.loss)


def test_norm_stats_frozen_keeps_running_statistics_but_uses_batch_statistics():
    spec = ModalitySpec("t", "tokens", (32,), likelihood="categorical", classes=9, width=2)
    model = MultimodalVAE([spec], D, seed=0).train()
    x = torch.randint(0, 9, (4, 32)).float()
    before = {k: v.clone() for k, v in model.named_buffers()}
    with norm_stats_frozen(model):
        mu_frozen, _ = model.encode_modality("t", x)
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())
    mu, _ = model.encode_modality("t", x)  # the same forward, now updating the stats
    torch.testing.assert_close(mu_frozen, mu)
    assert not torch.equal(before["encoders.t.enc.1.running_mean"],
                           model.encoders["t"].enc[1].running_mean)
