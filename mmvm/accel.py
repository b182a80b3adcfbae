"""How a training step runs fast where it runs: optimizer kernels, mixed precision,
memory format, compile.

``adam = "fused"`` (the default; or ``"foreach"``, ``"loop"``) picks torch's Adam
kernels. All make the same update; fused does it in one pass over each tensor. On a CPU
torch's own default is the per-tensor loop, ~4x slower for the hippocampus config's
1040 x 1040 layers (Adam was 13 % of a site's CPU there). Where torch has no fused
kernel for the device, its default is used. Centralized and federated runs use the
same kernels, so they stay bit-for-bit equal.

Three more switches of ``[train]`` (all off by default, so a run is bit-for-bit the
reference every federated run is compared with):

- ``amp = "bf16" | "fp16"``: the forward pass and the loss under ``torch.autocast``
  (bfloat16 on CPU or CUDA; float16 on CUDA only, with a gradient scaler); parameters
  and the optimiser stay float32;
- ``channels_last = true``: image parameters and batches in NHWC layout, which
  oneDNN (CPU) and cuDNN convolutions prefer;
- ``compile = true``: ``torch.compile`` of each encoder and decoder (needs a C++
  compiler on CPU; the first steps pay for compilation).

``benchmarks/throughput.py`` measures what each one buys on the machine at hand.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

AMP_MODES = ("off", "bf16", "fp16")
ADAM_KERNELS = ("fused", "foreach", "loop")
_KERNEL_FLAGS = ("fused", "foreach")  # where an optimizer's param groups name them


def adam(params: Iterable[nn.Parameter], lr: float, kernels: str = "fused"
         ) -> torch.optim.Adam:
    """torch's Adam with the ``kernels`` asked for (see the module docstring)."""
    if kernels not in ADAM_KERNELS:
        raise ValueError(f"adam must be one of {list(ADAM_KERNELS)}, got {kernels!r}")
    params = list(params)
    if kernels == "fused":
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except RuntimeError:  # no fused kernel for this device: torch's default
            return torch.optim.Adam(params, lr=lr)
    return torch.optim.Adam(params, lr=lr, foreach=kernels == "foreach")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping the optimizer's own kernels: a
    saved state names the kernels it was made with (a checkpoint from before
    ``adam`` existed names the per-tensor loop), and torch would take them over."""
    saved = state.get("param_groups")
    if isinstance(saved, list) and len(saved) == len(optimizer.param_groups):
        groups = [{**g, **{k: ours[k] for k in _KERNEL_FLAGS if k in ours}}
                  if isinstance(g, dict) else g
                  for g, ours in zip(saved, optimizer.param_groups, strict=True)]
        state = {**state, "param_groups": groups}
    optimizer.load_state_dict(state)  # torch checks the rest and raises


def load_scaler_state(scaler: torch.amp.GradScaler | None, state: object) -> None:
    """A saved float16 loss scale into ``scaler``; none saved (an older file, or a
    run without float16): the scaler keeps its initial scale. Raises ValueError on a
    state no scaler wrote: a scale of 0, NaN or below 0 would load and skip every
    step after it, and a missing key fails inside torch without naming it."""
    if scaler is None or not state:
        return
    if not isinstance(state, dict):
        raise ValueError(f"its loss scale is {type(state).__name__}, not a scaler's state")
    scale, tracker = state.get("scale"), state.get("_growth_tracker")
    if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"its loss scale is {scale!r}, not a finite number > 0")
    if not (isinstance(tracker, int) and tracker >= 0):
        raise ValueError(f"its loss scale's growth count is {tracker!r}, not a whole "
                         f"number >= 0")
    try:
        scaler.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"its loss scale's state does not load ({type(err).__name__}: "
                         f"{str(err)[:200]})") from None


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``mode`` on ``device`` (None: full precision)."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {mode!r}")
    if mode == "off":
        return None
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("amp = 'fp16' needs CUDA; use 'bf16' on a CPU")
    return torch.bfloat16 if mode == "bf16" else torch.float16


@contextlib.contextmanager
def autocast(mode: str, device: torch.device) -> Iterator[None]:
    """Autocast for ``mode`` (a no-op when off)."""
    dtype = amp_dtype(mode, device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for float16 (bfloat16 has float32's range: none needed)."""
    return torch.amp.GradScaler(device.type) if mode == "fp16" else None


# the largest gradient entry whose square float32 holds: Adam's second moment, a
# gradient cut's norm square entries; beyond this an entry is an overflow, not a step
MAX_GRADIENT = float(torch.finfo(torch.float32).max) ** 0.5  # ~1.8e19


class NonFiniteGradientError(FloatingPointError):
    """A gradient entry is NaN, inf or beyond :data:`MAX_GRADIENT`; no step was taken."""


def check_gradients(model: nn.Module) -> None:
    """Raise :class:`NonFiniteGradientError` (gradients cleared) unless every gradient
    entry of ``model`` is finite and at most :data:`MAX_GRADIENT` in size. A finite loss
    can still give such gradients (a mixture component with a tiny variance); Adam
    would square them into an inf second moment and freeze those weights for good,
    silently: refuse the step."""
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    if not named:
        return
    device = named[0][1].device
    peaks = torch.stack([torch.linalg.vector_norm(g, float("inf")).float().to(device)
                         for _, g in named])  # NaN propagates; an entry's size, no sum
    fine = peaks <= MAX_GRADIENT  # False for NaN
    if not bool(fine.all()):  # one device sync per step, not one per tensor
        bad = [name for (name, _), ok in zip(named, fine.tolist(), strict=True) if not ok]
        model.zero_grad(set_to_none=True)
        raise NonFiniteGradientError(
            f"the gradient of {len(bad)} parameter tensor(s) (first: {bad[0]}) holds NaN, "
            f"inf or entries beyond {MAX_GRADIENT:.2g}, whose square overflows float32; "
            f"the step was not applied")


def step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, model: nn.Module,
         names: list[str], clip: float = 0.0,
         scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward and one optimizer step; with ``clip`` > 0 each modality's gradient
    (``model.modality_parameters``: encoder, decoder, MMVAE+'s prior scale; for the
    modalities in ``names``) first cut to that norm (``train.grad_clip``). Per
    modality, not over all parameters: a site holds only its own modalities, so its
    step stays the centralized step, bit for bit. Without a scaler, non-finite
    gradients raise :class:`NonFiniteGradientError` before anything is applied
    (float16's scaler instead skips such steps and lowers its scale)."""
    if scaler is not None:
        loss = scaler.scale(loss)
    loss.backward()
    if scaler is None:
        check_gradients(model)
    if clip > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)
        for m in names:
            torch.nn.utils.clip_grad_norm_(model.modality_parameters(m), clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def prepare(model: nn.Module, *, channels_last: bool = False, compile: bool = False
            ) -> nn.Module:
    """Put ``model`` in the memory format asked for and compile its sub-networks in
    place (``nn.Module.compile``: the modules, their parameters and the state-dict
    keys stay as they are, so checkpoints and sites' weights do not change)."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        for group in ("encoders", "decoders"):
            for module in getattr(model, group, {}).values():
                module.compile()
    return model


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """NHWC for 4-D image batches; anything else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
