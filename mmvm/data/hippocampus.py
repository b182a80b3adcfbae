"""Hippocampus look-alike: 5 rats' CA1 spike counts around odor onset (M = 5).

The real data (Shahbaba et al. 2022, used by Sutter et al. 2024) are spike counts of
92, 79, 104, 49 and 46 CA1 units of five rats, in 10 ms bins, while each rat smells
odors A-E. The look-alike keeps everything the model sees and replaces the neurons by
a seeded simulation.

Simulation, per rat r (generators ``default_rng([seed, 1, r])`` and, for the tuned
subset and the noise, ``default_rng([seed, 3, r])``); the knobs are :data:`KNOBS`:

- neuron n: baseline rate ``b_n ~ LogNormal(log 4 Hz, 0.8)``, response latency
  ``l_n ~ U(0, 8)`` bins. A random ``round(tuned_fraction * neurons)`` of the rat's
  neurons are odor-tuned, ``a_{n,o} ~ N(0, tuning^2)`` for each odor o; the others have
  ``a_{n,o} = 0`` (same rate for every odor). Subset and tuning are drawn independently
  per rat, so rats share the odor, never the code: the rats are not aligned in input
  space (they do not even have the same dimension).
- session: ``trials_per_odor + U{0..extra}`` trials of each of the five odors (E is
  recorded but, as in the paper, never used) in random order; trial gain shared by the
  rat's neurons ``g ~ LogNormal(0, gain_sd)``; per-trial, per-neuron log-rate noise
  ``e ~ N(0, noise_sd^2)`` (overdispersion); correctness ``~ Bernoulli(0.85)``.
- spike count of neuron n in bin t of a trial with odor o:
  ``Poisson(10 ms * b_n * g * exp(a_{n,o} * s((t - onset - l_n) / 1.5) + e_n))`` with
  s the logistic function: baseline before onset, an odor-specific response after it.

:data:`DENSE_V1` (every neuron tuned with SD 1.0, gain SD 0.2, no noise) is the first
look-alike, reproduced bit for bit; it builds a strong shared odor code into all rats.
docs/hippocampus-lookalike.md has the defaults' raw odor decoding and the sources.

Samples (the authors' ``SPIKE`` dataset, yangmeng96/mmvmvae-hippocampal): rats are
aligned by (odor, index of the trial among that rat's trials of that odor), keeping
``min over rats`` trials per odor; the 25 bins (250 ms) after each rat's odor onset
are cut into 16 sliding sub-windows of 10 bins (stride 1). One sample = one
sub-window of one aligned trial across all five rats; the input of rat r is its
float32 count matrix ``[neurons_r, 10]`` (raw counts, scale 1), column ``rat<r>``.

Train and test are split by aligned trial (a random ``test_fraction`` of each odor's
aligned trials), so every sub-window of a test trial is unseen in training.

Raw layout (:func:`write_hippocampus_raw`, read by ``mmvm.data.prepare.hippocampus``)
follows the authors' loader: ``<src>/<rat>/<rat>_spike_data_binned.npy`` int
``[trials, neurons, bins]`` and ``<src>/<rat>/<rat>_trial_info.npy``
``[trials, 4]`` with column 0 = correct (1/0) and column 3 = odor (1..5 = A..E); the
knobs go to ``<src>/lookalike.json``, which ``prepare`` copies into the metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmvm.data.hippocampus_knobs import (  # noqa: F401 - re-exported
    DEFAULTS,
    DENSE_V1,
    KNOBS,
    check_knobs,
    preset_name,
)
from mmvm.data.prepare import final_paths, staged_output
from mmvm.data.store import DataError, write_site_table

RATS = ("barat", "buchanan", "mitt", "stella", "superchris")  # the authors' order
NEURONS = (92, 79, 104, 49, 46)
ONSETS = (225, 225, 250, 250, 225)  # odor-onset bin per rat (authors' start_times)
MODALITIES = tuple(f"rat{i + 1}" for i in range(len(RATS)))
ODORS = "ABCDE"
N_ODORS = 4  # odors A-D are used; E is recorded but dropped, as in the paper
BIN_MS, WINDOW_BINS, SUB_BINS = 10, 25, 10
N_SUB = WINDOW_BINS - SUB_BINS + 1  # 16 sliding sub-windows
_SPLIT_SEED = 2

Progress = Callable[[str, int, int], None]  # (description, step, total)


@dataclass(frozen=True)
class RatSession:
    """One rat's recording: ``spikes`` int ``[trials, neurons, bins]``, ``odor`` int
    ``[trials]`` (0..4 = A..E), ``correct`` int ``[trials]``, odor onset bin;
    ``tuned`` bool ``[neurons]``: which neurons are odor-tuned (simulations only)."""

    name: str
    spikes: np.ndarray
    odor: np.ndarray
    correct: np.ndarray
    onset: int
    tuned: np.ndarray | None = None


# ------------------------------------------------------------------------- simulation


def simulate_sessions(seed: int = 0, trials_per_odor: int = 50, extra_trials: int = 8,
                      tuning: float = DEFAULTS["tuning"], onsets: Sequence[int] = ONSETS,
                      post_bins: int = 25, neurons: Sequence[int] = NEURONS,
                      names: Sequence[str] = RATS, *,
                      tuned_fraction: float = DEFAULTS["tuned_fraction"],
                      gain_sd: float = DEFAULTS["gain_sd"],
                      noise_sd: float = DEFAULTS["noise_sd"]) -> list[RatSession]:
    """Simulated raw sessions of all rats (see the module docstring).

    ``onsets[r]`` bins of baseline precede odor onset; ``post_bins`` follow the
    250 ms window. Deterministic in all arguments.
    """
    knobs = check_knobs(tuned_fraction, tuning, gain_sd, noise_sd)
    if not (len(onsets) == len(neurons) == len(names)):
        raise ValueError("onsets, neurons and names need one entry per rat")
    if trials_per_odor < 1 or extra_trials < 0:
        raise ValueError("trials_per_odor must be >= 1 and extra_trials >= 0")
    sessions = []
    for r, (name, n, onset) in enumerate(zip(names, neurons, onsets, strict=True)):
        rng = np.random.default_rng([seed, 1, r])  # the v1 stream, draw for draw
        extra = np.random.default_rng([seed, 3, r])  # tuned subset and noise
        # baseline in spikes per bin
        base = np.exp(rng.normal(np.log(4.0), 0.8, size=n)) * BIN_MS / 1000
        latency = rng.uniform(0, 8, size=n)
        tuned = np.zeros(n, bool)
        tuned[extra.permutation(n)[:int(round(knobs["tuned_fraction"] * n))]] = True
        tune = rng.normal(0.0, knobs["tuning"], size=(len(ODORS), n)) * tuned  # [odor, n]
        counts = trials_per_odor + rng.integers(0, extra_trials + 1, size=len(ODORS))
        odor = rng.permutation(np.repeat(np.arange(len(ODORS)), counts))
        n_trials, n_bins = len(odor), onset + WINDOW_BINS + post_bins
        gain = np.exp(rng.normal(0.0, knobs["gain_sd"], size=n_trials))
        noise = extra.normal(0.0, knobs["noise_sd"], size=(n_trials, n))
        correct = (rng.random(n_trials) < 0.85).astype(np.int64)
        t = np.arange(n_bins)
        profile = 1 / (1 + np.exp(-((t[None, :] - onset - latency[:, None]) / 1.5)))
        # [trials, neurons, bins]; + 0.0 noise leaves the v1 values bit for bit
        log_rate = tune[odor][:, :, None] * profile[None] + noise[:, :, None]
        rate = base[None, :, None] * gain[:, None, None] * np.exp(log_rate)
        spikes = rng.poisson(rate).astype(np.int16)
        sessions.append(RatSession(name, spikes, odor.astype(np.int64), correct, onset,
                                   tuned))
    return sessions


# --------------------------------------------------------------------------- windowing


def window_samples(sessions: Sequence[RatSession], modalities: Sequence[str],
                   test_fraction: float = 0.2, seed: int = 0,
                   correct_only: bool = False,
                   aligned: Sequence[int] | None = None) -> dict[str, dict]:
    """Align rats by (odor, trial index within odor) and cut the sub-windows.

    ``aligned``: trials per odor to align (default: the fewest of any of
    ``sessions``); a lab that prepares only its own rat gives the federation's, so
    that its ids and split are those of the others.

    Returns ``{"train": split, "test": split}``, each split a dict with ``ids``,
    ``x`` (modality -> float32 ``[N, neurons, 10]``), ``label`` (odor 0..3) and
    ``cols`` (``trial``, ``odor_trial``, ``window``, ``source_trial.<rat>``).
    """
    if len(sessions) != len(modalities):
        raise ValueError(f"{len(sessions)} sessions for modalities {list(modalities)}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    trials_of = []  # per rat, per odor: the rat's trial rows of that odor, in order
    for s in sessions:
        if s.spikes.ndim != 3 or len(s.spikes) != len(s.odor):
            raise DataError(f"rat {s.name}: spikes {s.spikes.shape} do not match "
                            f"{len(s.odor)} trials")
        if s.onset < 0 or s.onset + WINDOW_BINS > s.spikes.shape[2]:
            raise DataError(f"rat {s.name}: window [{s.onset}, {s.onset + WINDOW_BINS})"
                            f" outside the {s.spikes.shape[2]} recorded bins")
        keep = s.correct.astype(bool) if correct_only else np.ones(len(s.odor), bool)
        trials_of.append([np.flatnonzero((s.odor == o) & keep) for o in range(N_ODORS)])
    n_aligned = [min(len(t[o]) for t in trials_of) for o in range(N_ODORS)]
    if aligned is not None:
        if len(aligned) != N_ODORS or any(not 1 <= a <= n for a, n in
                                          zip(aligned, n_aligned, strict=True)):
            raise DataError(f"aligned trials per odor {list(aligned)}: need {N_ODORS} "
                            f"counts, each at least 1 and at most the trials of that odor "
                            f"here ({', '.join(f'{ODORS[o]} {n}' for o, n in enumerate(n_aligned))})")
        n_aligned = list(aligned)
    rng = np.random.default_rng([seed, _SPLIT_SEED])
    pairs = {"train": [], "test": []}  # (odor, index within odor)
    for o, k in enumerate(n_aligned):
        n_test = int(round(test_fraction * k))
        is_test = np.zeros(k, bool)
        is_test[rng.permutation(k)[:n_test]] = True
        for i in range(k):
            pairs["test" if is_test[i] else "train"].append((o, i))
    empty = [split for split, pp in pairs.items() if not pp]
    if empty:  # a file of no rows, which every reader then refused
        raise DataError(f"the {empty[0]} split is empty: test_fraction {test_fraction:g} "
                        f"of {', '.join(map(str, n_aligned))} aligned trials per odor "
                        f"rounds to {'none' if empty[0] == 'test' else 'all'}; give a "
                        f"test fraction that holds out some trials and keeps some")
    out = {}
    for split, pp in pairs.items():
        n = len(pp) * N_SUB
        odor = np.repeat([o for o, _ in pp], N_SUB).astype(np.int64)
        idx = np.repeat([i for _, i in pp], N_SUB).astype(np.int64)
        win = np.tile(np.arange(N_SUB), len(pp)).astype(np.int64)
        trial = np.repeat([sum(n_aligned[:o]) + i for o, i in pp], N_SUB)
        trial = trial.astype(np.int64)
        x, cols = {}, {"trial": trial, "odor_trial": idx, "window": win}
        for m, s, tr in zip(modalities, sessions, trials_of, strict=True):
            rows = np.array([tr[o][i] for o, i in pp], dtype=np.int64)
            # [trials, neurons, 25] -> [trials, 16, neurons, 10] -> [N, neurons, 10]
            block = s.spikes[rows][:, :, s.onset:s.onset + WINDOW_BINS]
            subs = np.lib.stride_tricks.sliding_window_view(block, SUB_BINS, axis=2)
            x[m] = np.ascontiguousarray(subs.transpose(0, 2, 1, 3), dtype=np.float32) \
                .reshape(n, s.spikes.shape[1], SUB_BINS)
            cols[f"source_trial.{m}"] = np.repeat(rows, N_SUB)
        ids = [f"{ODORS[o]}{i:03d}-w{w:02d}" for o, i, w in zip(odor, idx, win, strict=True)]
        out[split] = {"ids": ids, "x": x, "label": odor, "cols": cols,
                      "n_trials": len(pp)}
    out["n_aligned"] = n_aligned
    return out


def recipe() -> dict:
    """The windowing recipe, recorded in every file's metadata."""
    return {
        "alignment": "rats aligned by (odor, index of the trial among the rat's trials "
                     "of that odor); min over rats per odor; odors A-D (E dropped)",
        "window": f"{WINDOW_BINS} bins of {BIN_MS} ms after each rat's odor onset",
        "sub_windows": f"{N_SUB} sliding windows of {SUB_BINS} bins, stride 1",
        "input": "float32 spike counts [neurons, 10] per rat, scale 1",
        "split": "by aligned trial: a seeded test_fraction of each odor's trials",
        "sample_id": "<odor letter><index within odor, 3 digits>-w<window, 2 digits>",
    }


def write_splits(out_dir: str | os.PathLike, data: Mapping[str, dict], meta: dict,
                 row_group_size: int = 1024) -> dict[str, Path]:
    """Write ``train.parquet`` / ``test.parquet`` of :func:`window_samples` output."""
    paths = {}
    for split in ("train", "test"):
        d = data[split]
        m = {**meta, "split": split, "n": len(d["ids"]), "n_trials": d["n_trials"],
             "n_aligned_per_odor": list(map(int, data["n_aligned"])),
             "group_column": "trial"}  # a trial's windows are not independent
        paths[split] = write_site_table(
            Path(out_dir) / f"{split}.parquet", d["ids"], d["x"], {"label": d["label"]},
            m, columns=d["cols"], row_group_size=row_group_size)
    return paths


# ------------------------------------------------------------------------------ public


def simulation_meta(trials_per_odor: int, extra_trials: int,
                    knobs: Mapping[str, float]) -> dict:
    """The ``simulation`` entry of the files' metadata: every knob and the model."""
    return {"preset": preset_name(knobs), "version": 2, **{k: knobs[k] for k in KNOBS},
            "trials_per_odor": trials_per_odor, "extra_trials": extra_trials,
            "baseline": "LogNormal(log 4 Hz, 0.8)", "latency": "U(0, 8) bins",
            "tuned": "round(tuned_fraction * neurons) random neurons per rat",
            "odor_tuning": "a_no ~ N(0, tuning^2) if tuned else 0",
            "trial_gain": f"LogNormal(0, {knobs['gain_sd']:g}) per trial",
            "noise": f"e_n ~ N(0, {knobs['noise_sd']:g}^2) per trial and neuron",
            "rate": "b_n g exp(a_no s((t - onset - l_n) / 1.5) + e_n), Poisson",
            "rng": "numpy default_rng([seed, 1, rat]), tuned subset and noise "
                   "[seed, 3, rat]; split [seed, 2]"}


def make_hippocampus(out_dir: str | os.PathLike, seed: int = 0,
                     trials_per_odor: int = 50, *, extra_trials: int = 8,
                     tuning: float = DEFAULTS["tuning"],
                     tuned_fraction: float = DEFAULTS["tuned_fraction"],
                     gain_sd: float = DEFAULTS["gain_sd"],
                     noise_sd: float = DEFAULTS["noise_sd"], test_fraction: float = 0.2,
                     row_group_size: int = 1024,
                     progress: Progress | None = None) -> dict[str, Path]:
    """Write ``train.parquet`` and ``test.parquet`` of the hippocampus look-alike.

    Parameters
    ----------
    out_dir : output directory (created).
    seed : everything (neurons, sessions, spikes, split) is a function of it.
    trials_per_odor : at least this many trials of each odor per rat (each rat gets
        up to ``extra_trials`` more); aligned trials per odor = the minimum over rats.
    tuning, tuned_fraction, gain_sd, noise_sd : the simulation's knobs (:data:`KNOBS`;
        ``**DENSE_V1`` gives the first, dense look-alike).
    test_fraction : share of each odor's aligned trials held out for test.

    Returns
    -------
    ``{"train": path, "test": path}``; with the defaults about 2,600 / 650 samples.
    """
    knobs = check_knobs(tuned_fraction, tuning, gain_sd, noise_sd)
    total = 3
    step = (lambda d, i: progress(d, i, total)) if progress else (lambda d, i: None)
    step("simulating spikes", 0)
    sessions = simulate_sessions(seed, trials_per_odor, extra_trials, **knobs)
    step("cutting windows", 1)
    data = window_samples(sessions, MODALITIES, test_fraction, seed)
    meta = {
        "name": "hippocampus-lookalike", "seed": seed, "modalities": list(MODALITIES),
        "rats": dict(zip(MODALITIES, RATS, strict=True)),
        "neurons": dict(zip(MODALITIES, NEURONS, strict=True)),
        "odors": list(ODORS[:N_ODORS]), "label": "odor (0..3 = A..D)",
        "label_names": {"label": list(ODORS[:N_ODORS])},  # legends say A-D, not 0-3
        "simulation": simulation_meta(trials_per_odor, extra_trials, knobs),
        "recipe": recipe(), "test_fraction": test_fraction,
        "versions": {"numpy": np.__version__},
        "created_by": "mmvm.data.hippocampus.make_hippocampus",
    }
    step("writing", 2)
    with staged_output(out_dir) as stage:  # both files, or neither (a full disk)
        paths = write_splits(stage, data, meta, row_group_size)
    step("done", total)
    return final_paths(paths, stage, out_dir)


SIMULATION_FILE = "lookalike.json"  # in a raw folder: the simulation that wrote it


def write_hippocampus_raw(src: str | os.PathLike, seed: int = 0,
                          trials_per_odor: int = 50, *, extra_trials: int = 8,
                          tuning: float = DEFAULTS["tuning"],
                          tuned_fraction: float = DEFAULTS["tuned_fraction"],
                          gain_sd: float = DEFAULTS["gain_sd"],
                          noise_sd: float = DEFAULTS["noise_sd"],
                          onsets: Sequence[int] = ONSETS, post_bins: int = 25,
                          neurons: Sequence[int] = NEURONS) -> dict[str, Path]:
    """Write simulated sessions in the authors' raw layout (module docstring), and the
    knobs in ``<src>/lookalike.json`` (``prepare`` records them in its metadata).

    ``prepare_hippocampus(src, out, seed=seed)`` on the result gives exactly the arrays
    and split of ``make_hippocampus(out, seed, trials_per_odor, ...)`` with the same
    knobs, when ``onsets``/``neurons`` are the defaults.
    """
    knobs = check_knobs(tuned_fraction, tuning, gain_sd, noise_sd)
    src = Path(src)
    paths = {}
    sessions = simulate_sessions(seed, trials_per_odor, extra_trials, onsets=onsets,
                                 post_bins=post_bins, neurons=neurons, **knobs)
    for s in sessions:
        d = src / s.name
        d.mkdir(parents=True, exist_ok=True)
        info = np.zeros((len(s.odor), 4), dtype=np.int64)
        info[:, 0], info[:, 3] = s.correct, s.odor + 1
        np.save(d / f"{s.name}_spike_data_binned.npy", s.spikes)
        np.save(d / f"{s.name}_trial_info.npy", info)
        paths[s.name] = d
    sim = {"seed": seed, **simulation_meta(trials_per_odor, extra_trials, knobs)}
    (src / SIMULATION_FILE).write_text(json.dumps(sim, indent=1))
    return paths
