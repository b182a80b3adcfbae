"""The multimodal VAE: one encoder and one decoder per modality, nothing shared.

Composition, not inheritance: ``encoders`` and ``decoders`` are ``ModuleDict``s keyed
by modality name, and the method (MMVM or a baseline) is a function from
``mmvm.aggregation`` applied to their outputs. Because no parameter is shared across
modalities, a site that holds modality m can own exactly ``encoders[m]`` and
``decoders[m]`` (see ``submodel``).

**Only present rows run.** A sample that lacks modality m holds filler in ``x[m]``
(zeros, or whatever the data had); its row never enters m's encoder or decoder:
:meth:`MultimodalVAE.encode` and :meth:`MultimodalVAE.reconstruction_ll` select the
present rows, run the network on them and scatter the results back into ``[B, ...]``
tensors (zeros where absent). With BatchNorm in training mode the batch statistics
and running averages are then those of the present rows alone, so filler cannot
bias the model, and a federated site, which holds only its own rows, normalises
over exactly the rows the centralized model does. A network with BatchNorm that is
fed a single row in training mode (one sample of a batch has the modality) runs
that pass in evaluation mode, on its running statistics, which it leaves as they
were: batch statistics of one sample are degenerate, and impossible on 1 x 1
feature maps (``res_image``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from mmvm.config import ModalitySpec
from mmvm.likelihoods import get_likelihood, likelihood_mean
from mmvm.networks import build_decoder, build_encoder

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def norm_buffers(module: nn.Module) -> list[dict[str, Tensor]]:
    """The buffers (running statistics, batch count) of every BatchNorm layer of
    ``module`` that tracks them, in module order: the tensors themselves."""
    return [dict(m.named_buffers(recurse=False)) for m in _running_norms(module)]


def swap_norm_buffers(module: nn.Module, buffers: list[dict[str, Tensor]]) -> None:
    """Make ``buffers`` (as :func:`norm_buffers` lists them) the BatchNorm buffers.

    The tensors are swapped, not written into: a forward pass in training mode keeps
    its running statistics for the backward pass, which refuses tensors written in
    place after it (their version counters)."""
    for m, named in zip(_running_norms(module), buffers, strict=True):
        for k, b in named.items():
            setattr(m, k, b)


def _running_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _NORMS) and m.track_running_stats]


@contextmanager
def norm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Forward passes inside leave every BatchNorm's running statistics as they were.

    In training mode BatchNorm normalises by the batch's own statistics and also
    updates its running averages. A federated site that encodes rows only to send
    their posteriors must not update them a second time per step (the centralized
    model runs each encoder once per step), or its running statistics drift from
    the centralized run's although its parameters agree.
    """
    saved = [{k: b.clone() for k, b in named.items()} for named in norm_buffers(module)]
    try:
        yield
    finally:
        for live, kept in zip(norm_buffers(module), saved, strict=True):
            for k, b in kept.items():
                live[k].copy_(b)


def present_rows(present: Tensor) -> Tensor | None:
    """Indices [K] of the True rows of ``present`` [B] (on its device), or None when
    every row is present (the batch then runs as it is, no copy)."""
    if bool(present.all()):
        return None
    return present.nonzero().flatten()


def scatter_rows(values: Tensor, rows: Tensor, n: int) -> Tensor:
    """[n, ...] zeros with ``values`` [K, ...] at ``rows`` [K]; differentiable in
    ``values`` (an absent row gets no value and sends no gradient)."""
    rows = rows.to(values.device)
    return values.new_zeros((n, *values.shape[1:])).index_copy(0, rows, values)


def run_network(module: nn.Module, x: Tensor):
    """``module(x)``; a network with BatchNorm in training mode that gets a single
    row runs it in evaluation mode (its running statistics, left as they were):
    see the module docstring."""
    if x.shape[0] != 1 or not module.training or \
            not any(isinstance(m, _NORMS) for m in module.modules()):
        return module(x)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        return module(x)
    finally:
        for m, mode in modes:
            m.training = mode


class MultimodalVAE(nn.Module):
    def __init__(
        self,
        specs: Sequence[ModalitySpec],
        latent_dim: int,
        seed: int | None = None,
        global_names: Sequence[str] | None = None,
        private_dim: int = 0,
    ) -> None:
        """Encoders/decoders for ``specs``.

        With ``seed``, modality m's networks are initialised from a generator seeded by
        (seed, position of m in ``global_names``), so a site that builds only its own
        modalities starts from exactly the weights the centralized model has for them.

        ``private_dim`` > 0 (MMVAE+): every encoder's code is the shared latent
        (``latent_dim``) followed by a modality-specific one (``private_dim``), every
        decoder reads both, and each modality gets the learnable log standard deviation
        of its auxiliary prior r_m(w) = N(0, diag exp(2 aux_logstd)) (``mmvm.mmvaeplus``).
        """
        super().__init__()
        if not specs:
            raise ValueError("a MultimodalVAE needs at least one modality")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        self.specs = {s.name: s for s in specs}
        self.names = names
        self.latent_dim, self.private_dim = latent_dim, private_dim
        self.code_dim = latent_dim + private_dim  # what encoders emit and decoders read
        order = list(global_names) if global_names is not None else names
        missing = [n for n in names if n not in order]
        if missing:
            raise ValueError(f"modalities {missing} are not in global_names {order}")
        encoders, decoders = {}, {}
        for s in specs:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed * 1_000 + order.index(s.name))
                encoders[s.name] = build_encoder(s, self.code_dim)
                decoders[s.name] = build_decoder(s, self.code_dim)
        self.encoders = nn.ModuleDict(encoders)
        self.decoders = nn.ModuleDict(decoders)
        self.aux_logstd = nn.ParameterDict(
            {s.name: nn.Parameter(torch.zeros(private_dim)) for s in specs} if private_dim
            else {})
        self.register_buffer(
            "likelihood_weights", torch.tensor([s.weight for s in specs]), persistent=False
        )

    # ------------------------------------------------------------------ encoding
    def encode_modality(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [B, D] of q(z | x_name), every row of ``x`` a present one."""
        self._check_input(name, x)
        return self._encode(name, x)

    def _encode(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        return run_network(self.encoders[name], x)

    def encode(self, x: dict[str, Tensor], mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [B, M, D]; zeros for modalities a sample lacks (mask False).

        A modality absent from the whole batch (not in ``x`` or all-False mask) is not
        run through its encoder at all.
        """
        B = next(iter(x.values())).shape[0]
        device = next(self.parameters()).device
        mu = torch.zeros(B, len(self.names), self.code_dim, device=device)
        lv = torch.zeros_like(mu)
        if mask is None:
            mask = torch.ones(B, len(self.names), dtype=torch.bool, device=device)
        mus, lvs = [], []
        for m, name in enumerate(self.names):
            present = mask[:, m]
            if name not in x or not bool(present.any()):
                mus.append(mu[:, m])
                lvs.append(lv[:, m])
                continue
            rows = present_rows(present)
            if rows is None:  # every row: the batch as it is
                mu_m, lv_m = self.encode_modality(name, x[name])
            else:
                x_m = x[name][rows.to(x[name].device)]  # gathered once
                self._check_input(name, x_m, rows, B)
                mu_m, lv_m = self._encode(name, x_m)
                mu_m, lv_m = scatter_rows(mu_m, rows, B), scatter_rows(lv_m, rows, B)
            mus.append(mu_m)
            lvs.append(lv_m)
        return torch.stack(mus, 1), torch.stack(lvs, 1)

    # ------------------------------------------------------------------ decoding
    def decode(self, name: str, z: Tensor) -> Tensor:
        """Decoder output (the likelihood's location / logits) for latent z [B, D]."""
        return run_network(self.decoders[name], z)

    def generate(self, name: str, z: Tensor) -> Tensor:
        """A generated x_name [B, *shape] for latent z: the likelihood's mean of the
        decoder output (image location, sigmoid of bernoulli logits, most likely token
        id), comparable with the data a classifier or a plot reads."""
        return likelihood_mean(self.specs[name].likelihood)(self.decode(name, z))

    def log_likelihood(self, name: str, x: Tensor, out: Tensor) -> Tensor:
        """log p(x_name | out) per sample [B], summed over the modality's dimensions."""
        spec = self.specs[name]
        return get_likelihood(spec.likelihood)(x, out, spec.scale)

    def reconstruction_ll(self, x: dict[str, Tensor], z: Tensor, mask: Tensor) -> Tensor:
        """log p(x_m | z[:, m]) for every present modality: [B, M], 0 where absent
        (absent rows are not decoded)."""
        cols = []
        for m, name in enumerate(self.names):
            present = mask[:, m]
            if name not in x or not bool(present.any()):
                cols.append(torch.zeros(z.shape[0], device=z.device))
                continue
            rows = present_rows(present)
            if rows is None:
                cols.append(self.log_likelihood(name, x[name], self.decode(name, z[:, m])))
                continue
            x_m = x[name][rows.to(x[name].device)]
            ll = self.log_likelihood(name, x_m, self.decode(name, z[:, m][rows.to(z.device)]))
            cols.append(scatter_rows(ll, rows, z.shape[0]))
        return torch.stack(cols, 1)

    def modality_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters that belong to one modality (encoder, decoder, aux prior)."""
        own = list(self.encoders[name].parameters()) + list(self.decoders[name].parameters())
        return own + ([self.aux_logstd[name]] if name in self.aux_logstd else [])

    def _check_input(self, name: str, x: Tensor, rows: Tensor | None = None,
                     batch: int | None = None) -> None:
        """Shape and finiteness of ``x``: a whole batch, or with ``rows`` the batch's
        rows ``rows`` (of ``batch``) already gathered, the others being filler that
        never runs; errors name positions in the whole batch either way."""
        if name not in self.specs:
            raise ValueError(f"unknown modality {name!r}; the model has {self.names}")
        expected = tuple(self.specs[name].shape)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"modality {name!r}: expected input of shape [batch, {', '.join(map(str, expected))}], "
                f"got {list(x.shape)}"
            )
        B = x.shape[0] if batch is None else batch
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).nonzero().flatten()
            if rows is not None:
                bad = rows[bad.to(rows.device)]
            raise ValueError(
                f"modality {name!r}: NaN or inf in the input at batch positions "
                f"{bad.tolist()[:10]} of {B} (positions within this batch, not sample "
                f"ids; site files are checked finite, also once divided by their scale, "
                f"naming each bad sample id: `mmvm data check FILE`)")
