"""Hippocampus (Shahbaba et al. 2022; Dryad doi:10.7280/D14X30) -> site Parquet.

Raw layout (the loader of yangmeng96/mmvmvae-hippocampal, ``utils/RatsDataset.py``)::

    <src>/<rat>/<rat>_spike_data_binned.npy   [trials, neurons, bins] spike counts,
                                              10 ms bins
    <src>/<rat>/<rat>_trial_info.npy          [trials, >= 4]: column 0 = correct
                                              (1/0), column 3 = odor (1..5 = A..E)

for the rats ``barat, buchanan, mitt, stella, superchris`` (modalities ``rat1`` ..
``rat5`` in that order). Odor onset is at bin ``onsets[r]`` (default the authors'
``start_times`` 225, 225, 250, 250, 225). Windowing, alignment and the split by trial
are those of :mod:`mmvm.data.hippocampus` (its docstring); output ``train.parquet``
and ``test.parquet`` with columns ``rat1..rat5`` (float32 ``[neurons, 10]``),
``label`` (odor 0..3), ``trial``, ``odor_trial``, ``window``, ``source_trial.<rat>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmvm.data import hippocampus as H
from mmvm.data.prepare import Progress, final_paths, staged_output, step_fn
from mmvm.data.prepare.arrays import NAME
from mmvm.data.store import DataError


def load_session(src: Path, rat: str, onset: int) -> H.RatSession:
    """Read one rat's raw arrays, checking shapes and odor codes."""
    spk_path = src / rat / f"{rat}_spike_data_binned.npy"
    info_path = src / rat / f"{rat}_trial_info.npy"
    arrays = {}
    for p in (spk_path, info_path):
        if not p.is_file():
            raise DataError(f"{p}: missing (expected raw layout "
                            f"<src>/<rat>/<rat>_spike_data_binned.npy and "
                            f"<rat>_trial_info.npy)")
        try:
            arrays[p] = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{p}: not a readable .npy array ({e})") from None
    spikes, info = arrays[spk_path], arrays[info_path]
    if spikes.ndim != 3:
        raise DataError(f"{spk_path}: expected [trials, neurons, bins], got shape "
                        f"{spikes.shape}")
    if info.ndim != 2 or info.shape[1] < 4 or len(info) != len(spikes):
        raise DataError(f"{info_path}: expected [{len(spikes)} trials, >= 4 columns], "
                        f"got shape {info.shape}")
    if not np.isfinite(spikes).all() or (spikes < 0).any():
        bad = ~(np.isfinite(spikes) & (spikes >= 0)).reshape(len(spikes), -1).all(1)
        row = int(np.argmax(bad))
        raise DataError(f"{spk_path}: trial {row}: negative, NaN or inf spike count")
    odor = info[:, 3].astype(np.int64) - 1
    bad = (odor < 0) | (odor >= len(H.ODORS))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{info_path}: column 3, trial {row}: odor {info[row, 3]} "
                        f"not in 1..{len(H.ODORS)}")
    return H.RatSession(rat, spikes, odor, info[:, 0].astype(np.int64), int(onset))


def read_simulation(src: Path) -> dict | None:
    """The knobs of a simulated raw folder (``<src>/lookalike.json``), or None."""
    path = src / H.SIMULATION_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > 65536:
        raise DataError(f"{path}: over 64 KiB, not a look-alike's knobs")
    try:
        sim = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(sim, dict):
        raise DataError(f"{path}: expected a JSON object of simulation knobs")
    return sim


KEYED = "HMAC-SHA256 of <odor><index>-w<window> under the labs' key, 16 hex digits"
MIN_KEY_BYTES = 16


def keyed_ids(ids: Sequence[str], key: bytes) -> list[str]:
    """Sample ids that say nothing without ``key`` (see ``prepare_hippocampus``)."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"an id key of {len(key)} bytes: give at least {MIN_KEY_BYTES} "
                         f"(e.g. `openssl rand -hex 32 > key`, shared by the labs only)")
    return [hmac.new(key, i.encode(), hashlib.sha256).hexdigest()[:16] for i in ids]


def prepare_hippocampus(src: str | os.PathLike, out_dir: str | os.PathLike, *,
                        rats: Sequence[str] = H.RATS,
                        onsets: Sequence[int] | None = None, seed: int = 0,
                        test_fraction: float = 0.2, correct_only: bool = False,
                        aligned: Sequence[int] | None = None,
                        names: Sequence[str] | None = None,
                        id_key: bytes | None = None,
                        row_group_size: int = 1024,
                        progress: Progress | None = None) -> dict[str, Path]:
    """Window the raw recordings into ``train.parquet`` / ``test.parquet``.

    Parameters
    ----------
    src : folder holding one sub-folder per rat (raw layout above).
    out_dir : output folder; written atomically (nothing on error).
    rats, onsets : rat folder names and the first bin of each rat's 25-bin window
        (10 ms bins; default: the authors' ``start_times``, by rat).
    names : the modality of each rat (default: the authors' rats keep theirs,
        ``barat`` is ``rat1`` also alone; other rats are ``rat1..`` in the order
        given): the name the federation's config gives that lab's rat.
    id_key : a secret the labs share (not the server): each sample id becomes 16 hex
        digits of its HMAC-SHA256 under it, the same at every lab, so ids no longer
        spell the odor and trial (``A012-w03``) to a plaintext server.
    seed : seeds the split of aligned trials into train and test.
    test_fraction : share of each odor's aligned trials held out.
    correct_only : keep only correctly answered trials (the authors keep all).
    aligned : trials per odor to align (default: the fewest of any rat here). A lab
        that prepares only its own rat gives the federation's (the fewest of any
        rat of any lab) with the same seed: then its sample ids and split are the
        other labs'.
    """
    known = all(r in H.RATS for r in rats)
    if onsets is None:
        onsets = [H.ONSETS[H.RATS.index(r)] for r in rats] if known else H.ONSETS
    if len(set(rats)) != len(rats):
        raise ValueError(f"rats {list(rats)}: each rat once")
    if len(rats) != len(onsets):
        raise ValueError(f"{len(rats)} rats but {len(onsets)} onsets: give --onsets, the "
                         f"first bin of each rat's window, one per rat (the defaults "
                         f"are the authors' for their rats {', '.join(H.RATS)})")
    modalities = list(names) if names is not None else \
        [f"rat{(H.RATS.index(r) if known else i) + 1}" for i, r in enumerate(rats)]
    if len(modalities) != len(rats) or len(set(modalities)) != len(modalities) or \
            not all(NAME.fullmatch(m) and not m.startswith("label") for m in modalities):
        raise ValueError(f"names {modalities}: one distinct name per rat (letters, digits, "
                         f"_ and -, as prepare arrays names modalities), for {len(rats)} "
                         f"rats")
    src = Path(src)
    step = step_fn(progress, len(rats) + 2)
    sessions = []
    for i, (rat, onset) in enumerate(zip(rats, onsets, strict=True)):
        step(f"reading {rat}", i)
        sessions.append(load_session(src, rat, onset))
    step("cutting windows", len(rats))
    data = H.window_samples(sessions, modalities, test_fraction, seed, correct_only,
                            aligned)
    if min(data["n_aligned"]) == 0:
        raise DataError(f"{src}: some odor has no trial in every rat "
                        f"(aligned trials per odor: {data['n_aligned']})")
    if id_key is not None:
        for split in ("train", "test"):
            data[split]["ids"] = keyed_ids(data[split]["ids"], id_key)
    meta = {
        "name": "hippocampus", "source": str(src.resolve()), "seed": seed,
        "modalities": modalities, "rats": dict(zip(modalities, rats, strict=True)),
        "neurons": {m: int(s.spikes.shape[1]) for m, s in zip(modalities, sessions, strict=True)},
        "onsets": dict(zip(modalities, map(int, onsets), strict=True)),
        "odors": list(H.ODORS[:H.N_ODORS]), "label": "odor (0..3 = A..D)",
        "label_names": {"label": list(H.ODORS[:H.N_ODORS])},  # legends say A-D, not 0-3
        "correct_only": correct_only, "test_fraction": test_fraction,
        "aligned_per_odor": [int(n) for n in data["n_aligned"]],
        "recipe": {**H.recipe(), **({"sample_id": KEYED} if id_key is not None else {})},
        "versions": {"numpy": np.__version__},
        "created_by": "mmvm.data.prepare.hippocampus.prepare_hippocampus",
    }
    simulation = read_simulation(src)
    if simulation is not None:  # a look-alike written by `data make hippocampus --raw`
        meta["simulation"] = simulation
    step("writing", len(rats) + 1)
    with staged_output(out_dir) as stage:
        paths = H.write_splits(stage, data, meta, row_group_size)
    step("done", len(rats) + 2)
    return final_paths(paths, stage, out_dir)
