"""A lab's own data as a config: two vector modalities in site folders joined by
sample id (``data.folders``), tiny and fast, for tests of bring-your-own data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def lab_config(root: Path, out: Path, folders: str, modalities: Mapping[str, int],
               latent_dim: int = 2, extra: str = "") -> str:
    """The TOML text: ``folders`` a TOML array, ``modalities`` name -> vector length
    (MSE likelihood), one epoch of batch 32 on one CPU thread, ``extra`` appended
    (e.g. an ``[eval]`` section)."""
    mods = "".join(f'[model.modalities.{m}]\nkind = "vector"\nshape = [{n}]\n'
                   f'likelihood = "mse"\n' for m, n in modalities.items())
    return (f'[data]\nroot = "{root}"\nfolders = {folders}\n'
            + f"[model]\nlatent_dim = {latent_dim}\n{mods}"
            + f'[train]\nepochs = 1\nbatch_size = 32\ndevice = "cpu"\nnum_threads = 1\n'
              f'out_dir = "{out}"\n' + extra)
