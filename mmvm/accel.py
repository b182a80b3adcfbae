"""How a training step runs fast where it runs: mixed precision, memory format, compile.

Three switches of ``[train]`` (all off by default, so a run is bit-for-bit the
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
from collections.abc import Iterator

import torch
from torch import nn

AMP_MODES = ("off", "bf16", "fp16")


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
