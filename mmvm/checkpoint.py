"""Checkpoints that are never half-written (through :func:`mmvm.atomic.atomic_write`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmvm.atomic import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` atomically (mode 0600)."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint; a missing file raises FileNotFoundError, a corrupt one ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupted or foreign file
        raise ValueError(f"checkpoint {path} cannot be read: {err}") from err
