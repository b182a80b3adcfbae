"""Per-modality encoders and decoders, one registered family per architecture.

Encoders map ``x [B, *shape]`` to ``(mu, logvar)`` ``[B, D]`` of a diagonal Gaussian
(logvar = log-variance); decoders map ``z [B, D]`` to the likelihood's parameters.
A modality names its network in the config (``network = "res_image"``) or gets its
kind's default; ``width`` scales every family (base channels or hidden units) and
``layers`` its depth, so the same architecture runs paper-sized on a GPU and small
on a CPU.

- ``conv28`` (image [C, 28, 28]; the default image network): this project's own;
- ``polymnist_resnet`` (image [C, 28, 28]): the authors' PolyMNIST network;
- ``res_image`` (image [C, 64, 64] or [C, 224, 224]): the authors' CelebA and
  MIMIC-CXR network;
- ``cub_image`` (image [C, 64, 64]) and ``cub_text`` (tokens [32], ``classes`` =
  vocabulary; the default tokens network): the authors' CUB networks;
- ``mlp`` (vector, any shape; the default vector network): hippocampus, attributes;
- ``hippocampus_mlp`` (vector, any shape): the hippocampus authors' per-rat network.

:func:`resolve` checks a spec against its network (the config calls it for every
modality) and :func:`build_encoder` / :func:`build_decoder` build the modules;
:func:`register_network` adds a family.
"""

from mmvm.networks.conv28 import ConvDecoder, ConvEncoder
from mmvm.networks.cub import CubImage, CubText
from mmvm.networks.mlp import MLPDecoder, MLPEncoder
from mmvm.networks.polymnist_resnet import PolyMNISTResnet
from mmvm.networks.registry import (
    DEFAULT_NETWORK,
    KINDS,
    Network,
    NetworkError,
    available_networks,
    build_decoder,
    build_encoder,
    get_network,
    register_network,
    resolve,
)
from mmvm.networks.res_image import ResImage

__all__ = [
    "DEFAULT_NETWORK", "KINDS", "ConvDecoder", "ConvEncoder", "CubImage", "CubText",
    "MLPDecoder", "MLPEncoder", "Network", "NetworkError", "PolyMNISTResnet", "ResImage",
    "available_networks", "build_decoder", "build_encoder", "get_network",
    "register_network", "resolve",
]
