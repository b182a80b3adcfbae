"""The network registry: one entry per architecture family, looked up by name.

A family subclasses :class:`Network` and registers itself with
``@register_network("name")``; it says which modality kinds and which input shapes it
takes, and builds an encoder (returning ``(mu, logvar)``, logvar = log-variance) and
a decoder (returning the likelihood's parameters) from a modality spec. Specs are read
by attribute only (``name``, ``kind``, ``shape``, ``width``, ``layers``, ``classes``),
so this module imports nothing from :mod:`mmvm.config` and the config can validate a
modality against the registry while it is being built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from mmvm.config import ModalitySpec

KINDS = ("image", "vector", "tokens")
# the network a modality gets when its config names none
DEFAULT_NETWORK = {"image": "conv28", "vector": "mlp", "tokens": "cub_text"}


class NetworkError(ValueError):
    """A modality does not fit its network; the message names modality, network,
    the shape it got and the shapes the network takes."""


class Network:
    """One architecture family. Subclasses set the facts and the two builders.

    Attributes
    ----------
    kinds : modality kinds the family serves (``image``, ``vector``, ``tokens``).
    takes : the accepted shapes in words, for error messages (``"[C, 28, 28]"``).
    default_layers : depth used when the spec's ``layers`` is 0.
    min_width : the smallest valid ``width`` (0 only where it means "input size").
    """

    kinds: tuple[str, ...] = ()
    takes: str = ""
    default_layers: int = 1
    min_width: int = 1

    @staticmethod
    def accepts(shape: tuple[int, ...]) -> bool:
        raise NotImplementedError

    @classmethod
    def encoder(cls, spec: ModalitySpec, latent_dim: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def decoder(cls, spec: ModalitySpec, latent_dim: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def depth(cls, spec: ModalitySpec) -> int:
        """The spec's ``layers``, or this family's default where it is 0."""
        return spec.layers or cls.default_layers


_NETWORKS: dict[str, type[Network]] = {}


def register_network(name: str) -> Callable[[type[Network]], type[Network]]:
    """Class decorator: add a :class:`Network` family to the registry as ``name``."""

    def add(cls: type[Network]) -> type[Network]:
        if name in _NETWORKS:
            raise ValueError(f"network {name!r} is registered twice")
        if not cls.kinds or not set(cls.kinds) <= set(KINDS):
            raise ValueError(f"network {name!r}: kinds must be among {KINDS}")
        _NETWORKS[name] = cls
        return cls

    return add


def available_networks(kind: str | None = None) -> list[str]:
    """Registered network names (those serving ``kind`` when given), sorted."""
    return sorted(n for n, c in _NETWORKS.items() if kind is None or kind in c.kinds)


def get_network(name: str) -> type[Network]:
    try:
        return _NETWORKS[name]
    except KeyError:
        raise NetworkError(
            f"unknown network {name!r}; choose one of {available_networks()}") from None


def resolve(spec: ModalitySpec) -> tuple[str, int]:
    """(network name, layers) of ``spec`` with defaults filled in, after checking
    that the modality fits its network.

    Raises :class:`NetworkError` naming the modality, the network, the shape it got
    and the shapes the network takes (and the other networks of that kind).
    """
    where = f"modality {spec.name!r}"
    name = spec.network or DEFAULT_NETWORK[spec.kind]
    try:
        net = get_network(name)
    except NetworkError as err:
        raise NetworkError(f"{where}: {err}") from None
    if spec.kind not in net.kinds:
        raise NetworkError(
            f"{where}: network {name!r} is for kind {' or '.join(map(repr, net.kinds))}, "
            f"not {spec.kind!r}; {spec.kind} networks: {available_networks(spec.kind)}")
    shape = tuple(spec.shape)
    if not net.accepts(shape):
        others = [f"{o} takes {get_network(o).takes}"
                  for o in available_networks(spec.kind) if o != name]
        hint = f" (other {spec.kind} networks: {'; '.join(others)})" if others else ""
        raise NetworkError(f"{where}: network {name!r} takes {net.takes}, got shape "
                           f"{list(shape)}{hint}")
    if spec.width < net.min_width or spec.layers < 0:
        raise NetworkError(
            f"{where}: width must be >= {net.min_width} (network {name!r}) and layers "
            f">= 0 (0 = the network's default), got width={spec.width}, "
            f"layers={spec.layers}")
    return name, spec.layers or net.default_layers


def build_encoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    """The encoder of ``spec``'s network: ``x [B, *shape] -> (mu, logvar) [B, D]``."""
    name, _ = resolve(spec)
    return get_network(name).encoder(spec, latent_dim)


def build_decoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    """The decoder of ``spec``'s network: ``z [B, D] ->`` the likelihood's parameters
    (``[B, *shape]``; token modalities: logits ``[B, positions, classes]``)."""
    name, _ = resolve(spec)
    return get_network(name).decoder(spec, latent_dim)
