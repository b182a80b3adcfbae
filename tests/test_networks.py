"""mmvm.networks: the registry, every network's shapes, and clear errors.

Each network maps x [B, *shape] to (mu, logvar) [B, D] and z [B, D] back to the
likelihood's parameters: the input's shape for images and vectors, logits
[B, positions, classes] for tokens. A shape a network does not take is a ConfigError
naming the modality, the network, the shape and the shapes it takes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmvm.config import ConfigError, ModalitySpec
from mmvm.data.prepare.cub import PAD as PREPARED_PAD
from mmvm.networks import (
    DEFAULT_NETWORK,
    Network,
    available_networks,
    build_decoder,
    build_encoder,
    register_network,
)
from mmvm.networks.cub import PAD

torch.set_num_threads(1)
D = 6
SPECS = [
    ModalitySpec("a", "image", (3, 28, 28), width=4),
    ModalitySpec("b", "image", (1, 28, 28), width=4, network="polymnist_resnet"),
    ModalitySpec("c", "image", (3, 64, 64), width=2, network="res_image"),
    ModalitySpec("d", "image", (1, 224, 224), width=2, network="res_image"),
    ModalitySpec("e", "image", (3, 64, 64), width=2, network="cub_image"),
    ModalitySpec("f", "tokens", (32,), width=2, classes=11, likelihood="categorical"),
    ModalitySpec("g", "vector", (40,), width=16, likelihood="bernoulli"),
    ModalitySpec("h", "vector", (5, 2), width=0),
    ModalitySpec("i", "vector", (4, 10), width=0, network="hippocampus_mlp"),
]


def _input(spec: ModalitySpec, b: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if spec.kind == "tokens":
        return torch.randint(0, spec.classes, (b, *spec.shape), generator=g).float()
    return torch.rand(b, *spec.shape, generator=g)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.network}-{list(s.shape)}")
def test_encoder_and_decoder_shapes(spec):
    enc, dec = build_encoder(spec, D), build_decoder(spec, D)
    x = _input(spec)
    mu, logvar = enc(x)
    assert mu.shape == logvar.shape == (3, D)
    out = dec(mu)
    if spec.kind == "tokens":
        assert out.shape == (3, *spec.shape, spec.classes)  # logits per position
    else:
        assert out.shape == x.shape
    (out.sum() + mu.sum() + logvar.sum()).backward()  # every part is differentiable
    assert all(p.grad is not None for p in [*enc.parameters(), *dec.parameters()])


def test_every_registered_network_is_covered_and_defaults_by_kind():
    assert {s.network for s in SPECS} == set(available_networks())
    assert DEFAULT_NETWORK == {"image": "conv28", "vector": "mlp", "tokens": "cub_text"}
    assert SPECS[0].network == "conv28" and SPECS[6].network == "mlp"
    assert SPECS[5].network == "cub_text"
    assert available_networks("tokens") == ["cub_text"]


def test_hippocampus_mlp_is_the_authors_per_rat_network():
    """yangmeng96/mmvmvae-hippocampal NetworksRatsspike.py, D = 10 x neurons, latent 2:
    encoder Linear(D, D) LReLU Linear(D, D) LReLU Linear(D, 2) LReLU, heads Linear(2, 2);
    decoder Linear(2, D) LReLU Linear(D, D) LReLU Linear(D, D)."""
    spec = ModalitySpec("rat", "vector", (46, 10), width=0, network="hippocampus_mlp")
    enc, dec = build_encoder(spec, 2), build_decoder(spec, 2)

    def plan(module):
        return [(type(m).__name__, *(m.weight.shape[::-1] if isinstance(m, nn.Linear) else ()))
                for m in module.modules() if isinstance(m, (nn.Linear, nn.LeakyReLU))]

    lin, act = "Linear", ("LeakyReLU",)
    assert plan(enc.body) == [(lin, 460, 460), act, (lin, 460, 460), act, (lin, 460, 2), act]
    assert plan(enc.mu) == plan(enc.logvar) == [(lin, 2, 2)]
    assert plan(dec) == [(lin, 2, 460), act, (lin, 460, 460), act, (lin, 460, 460)]


def test_layers_default_per_network_and_deeper_residual_stages():
    assert [s.layers for s in SPECS[:3]] == [2, 1, 1]  # conv28 keeps its old default
    assert SPECS[6].layers == 2  # mlp: two hidden layers
    one = ModalitySpec("x", "image", (3, 64, 64), width=2, network="res_image")
    two = ModalitySpec("x", "image", (3, 64, 64), width=2, network="res_image", layers=2)
    n1 = sum(p.numel() for p in build_encoder(one, D).parameters())
    n2 = sum(p.numel() for p in build_encoder(two, D).parameters())
    assert n2 > n1
    assert build_encoder(two, D)(torch.rand(2, 3, 64, 64))[0].shape == (2, D)
    deep = ModalitySpec("x", "image", (3, 28, 28), width=2, network="polymnist_resnet",
                        layers=3)
    assert build_decoder(deep, D)(torch.randn(2, D)).shape == (2, 3, 28, 28)


@pytest.mark.parametrize("network, shape, takes", [
    ("conv28", [3, 64, 64], r"\[C, 28, 28\]"),
    ("polymnist_resnet", [3, 32, 32], r"\[C, 28, 28\]"),
    ("res_image", [3, 128, 128], r"\[C, 64, 64\] or \[C, 224, 224\] \(no other size\)"),
    ("res_image", [3, 64, 32], r"\[C, 64, 64\] or \[C, 224, 224\] \(no other size\)"),
    ("cub_image", [3, 28, 28], r"\[C, 64, 64\]"),
])
def test_wrong_image_shape_names_modality_network_and_accepted_shapes(network, shape, takes):
    with pytest.raises(ConfigError, match=rf"modality 'face': network '{network}' takes "
                                          rf"{takes}, got shape \[{', '.join(map(str, shape))}\]"
                                          r" \(other image networks: "):
        ModalitySpec("face", "image", tuple(shape), network=network)


def test_wrong_token_shape_and_kind_and_unknown_network():
    with pytest.raises(ConfigError, match=r"modality 't': network 'cub_text' takes \[32\] "
                                          r"token ids, got shape \[16\]"):
        ModalitySpec("t", "tokens", (16,), likelihood="categorical", classes=5)
    with pytest.raises(ConfigError, match=r"network 'cub_text' is for kind 'tokens', not "
                                          r"'vector'; vector networks: \['hippocampus_mlp', 'mlp'\]"):
        ModalitySpec("t", "vector", (32,), network="cub_text")
    with pytest.raises(ConfigError, match=r"modality 't': unknown network 'bert'; choose "
                                          r"one of \['conv28', "):
        ModalitySpec("t", "tokens", (32,), likelihood="categorical", classes=5,
                     network="bert")


def test_polymnist_resnet_has_no_final_sigmoid_but_conv28_and_cub_image_do():
    torch.manual_seed(0)
    z = 30 * torch.randn(16, D)
    out = build_decoder(SPECS[1], D)(z)
    assert bool((out < 0).any() | (out > 1).any())  # a Laplace location, not a pixel mean
    for spec in (SPECS[0], SPECS[4]):
        img = build_decoder(spec, D)(z)
        assert bool(((img >= 0) & (img <= 1)).all())


def test_res_image_batch_of_one_in_training_raises_clearly_eval_works():
    enc = build_encoder(SPECS[2], D)
    with pytest.raises(ValueError, match=r"res_image: BatchNorm on 1 x 1 feature maps needs "
                                         r"at least 2 samples per training batch"):
        enc(torch.rand(1, 3, 64, 64))
    assert enc.eval()(torch.rand(1, 3, 64, 64))[0].shape == (1, D)


def test_token_ids_outside_the_vocabulary_name_the_classes_key():
    enc = build_encoder(SPECS[5], D)
    x = torch.full((2, 32), 11.0)
    with pytest.raises(ValueError, match=r"modality 'f': token ids must lie in \[0, 11\), "
                                         r"got 11\.\.11; model\.modalities\.f\.classes"):
        enc(x)


def test_text_embedding_pads_with_the_preparers_pad_token():
    assert PAD == PREPARED_PAD
    assert build_encoder(SPECS[5], D).embedding.padding_idx == PREPARED_PAD


def test_register_network_adds_a_family_and_rejects_duplicates():
    @register_network("tiny_test_net")
    class Tiny(Network):
        kinds = ("vector",)
        takes = "[3]"

        @staticmethod
        def accepts(shape):
            return tuple(shape) == (3,)

        @classmethod
        def encoder(cls, spec, latent_dim):
            return nn.Linear(3, 2 * latent_dim)

        @classmethod
        def decoder(cls, spec, latent_dim):
            return nn.Linear(latent_dim, 3)

    try:
        assert "tiny_test_net" in available_networks("vector")
        spec = ModalitySpec("v", "vector", (3,), network="tiny_test_net")
        assert isinstance(build_decoder(spec, D), nn.Linear)
        with pytest.raises(ValueError, match="registered twice"):
            register_network("tiny_test_net")(Tiny)
        with pytest.raises(ConfigError, match=r"network 'tiny_test_net' takes \[3\], got "
                                              r"shape \[4\] \(other vector networks: hippocampus_mlp takes any "
                                              r"shape \(flattened\); mlp"):
            ModalitySpec("v", "vector", (4,), network="tiny_test_net")
    finally:
        from mmvm.networks import registry

        registry._NETWORKS.pop("tiny_test_net")
