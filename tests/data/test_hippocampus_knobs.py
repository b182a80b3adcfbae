"""The hippocampus look-alike's knobs, checked against what they mean statistically.

tuned_fraction: the share of neurons whose rate depends on the odor; tuning: the SD of
a tuned neuron's log-rate odor response; gain_sd / noise_sd: trial-to-trial variability
that makes counts overdispersed (variance above the Poisson mean) by a known factor.
Plus: the dense v1 preset reproduces the first look-alike bit for bit, determinism,
raw layout == make, metadata, the command line, and clear errors for bad knobs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mmvm.cli import main
from mmvm.data import hippocampus as H
from mmvm.data.default import ensure_default_sites, hippocampus_folder
from mmvm.data.odor_decoding import raw_odor_decoding
from mmvm.data.prepare.hippocampus import prepare_hippocampus
from mmvm.data.store import DataError, read_site_meta, read_site_table

ODORS = len(H.ODORS)


def _v1_simulation(seed, trials_per_odor, extra_trials=8, tuning=1.0):
    """The first look-alike's simulation, frozen here verbatim (before issue 14)."""
    out = []
    for r, (n, onset) in enumerate(zip(H.NEURONS, H.ONSETS, strict=True)):
        rng = np.random.default_rng([seed, 1, r])
        base = np.exp(rng.normal(np.log(4.0), 0.8, size=n)) * H.BIN_MS / 1000
        latency = rng.uniform(0, 8, size=n)
        tune = rng.normal(0.0, tuning, size=(ODORS, n))
        counts = trials_per_odor + rng.integers(0, extra_trials + 1, size=ODORS)
        odor = rng.permutation(np.repeat(np.arange(ODORS), counts))
        n_trials, n_bins = len(odor), onset + H.WINDOW_BINS + 25
        gain = np.exp(rng.normal(0.0, 0.2, size=n_trials))
        correct = (rng.random(n_trials) < 0.85).astype(np.int64)
        t = np.arange(n_bins)
        profile = 1 / (1 + np.exp(-((t[None, :] - onset - latency[:, None]) / 1.5)))
        log_rate = tune[odor][:, :, None] * profile[None]
        rate = base[None, :, None] * gain[:, None, None] * np.exp(log_rate)
        out.append((rng.poisson(rate).astype(np.int16), odor, correct))
    return out


def _session(neurons=100, onset=110, post_bins=60, trials_per_odor=120, **knobs):
    """One big rat: many trials, long baseline and response, for the statistics."""
    return H.simulate_sessions(7, trials_per_odor, onsets=(onset,), post_bins=post_bins,
                               neurons=(neurons,), names=("rat",), **knobs)[0]


def _late_counts(s):
    """Spikes per trial once every response is on (latency <= 8, then 10 bins more)."""
    return s.spikes[:, :, s.onset + 18:].sum(axis=2), s.spikes.shape[2] - s.onset - 18


def test_dense_v1_reproduces_the_first_lookalike():
    for seed in (0, 3):
        got = H.simulate_sessions(seed, 6, **H.DENSE_V1)
        for s, (spikes, odor, correct) in zip(got, _v1_simulation(seed, 6), strict=True):
            np.testing.assert_array_equal(s.spikes, spikes)
            np.testing.assert_array_equal(s.odor, odor)
            np.testing.assert_array_equal(s.correct, correct)
            assert s.tuned.all()


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_tuned_fraction_is_the_share_of_odor_dependent_neurons(fraction):
    """round(fraction * n) neurons per rat are tuned; an odor effect on the counts is
    found in (about) those and no others; untuned neurons' odor means agree within
    Poisson error."""
    for s, n in zip(H.simulate_sessions(0, 2, tuned_fraction=fraction), H.NEURONS,
                    strict=True):
        assert s.tuned.sum() == round(fraction * n)
    s = _session(tuned_fraction=fraction, tuning=1.0, gain_sd=0.0, noise_sd=0.0)
    counts, _ = _late_counts(s)  # [trials, neurons]
    means = np.stack([counts[s.odor == o].mean(0) for o in range(ODORS)])  # [odor, n]
    sizes = np.array([(s.odor == o).sum() for o in range(ODORS)])
    pooled = counts.mean(0)
    # Pearson dispersion across odors: chi2 with ODORS - 1 dof for an odor-blind neuron
    chi = (sizes[:, None] * (means - pooled) ** 2).sum(0) / np.maximum(pooled, 1e-12)
    p = stats.chi2.sf(chi, ODORS - 1)
    found = p < 1e-4
    assert abs(found.mean() - fraction) <= 0.05
    assert not (found & ~s.tuned).any()  # no untuned neuron depends on the odor
    untuned = ~s.tuned
    if untuned.any():  # together, the untuned neurons' odor means fit Poisson error
        total = chi[untuned].sum()
        assert stats.chi2.sf(total, (ODORS - 1) * untuned.sum()) > 1e-3, total


@pytest.mark.parametrize("tuning", [0.3, 1.0])
def test_tuning_is_the_log_rate_sd_of_tuned_neurons(tuning):
    """log(odor rate / baseline rate) of the tuned neurons has SD ``tuning`` (Poisson
    estimation variance subtracted); the untuned neurons' is ~0."""
    s = _session(neurons=200, tuned_fraction=0.5, tuning=tuning, gain_sd=0.0,
                 noise_sd=0.0)
    late, late_bins = _late_counts(s)
    base_bins = s.onset - 10  # the response is off before onset - 10
    base = s.spikes[:, :, :base_bins].sum(axis=(0, 2)).astype(float)  # [neurons]
    est, noise = [], []
    for o in range(ODORS):
        k = late[s.odor == o].sum(0).astype(float)
        rate_o = k / ((s.odor == o).sum() * late_bins)
        rate_b = base / (len(s.odor) * base_bins)
        est.append(np.log(rate_o / rate_b))
        noise.append(1 / k + 1 / base)  # delta-method variance of the log ratio
    est, noise = np.stack(est), np.stack(noise)  # [odor, neuron]
    t = s.tuned
    sd = math.sqrt(est[:, t].var() - noise[:, t].mean())
    assert sd == pytest.approx(tuning, rel=0.1)
    assert est[:, ~t].var() - noise[:, ~t].mean() < 0.01  # untuned: no odor response


@pytest.mark.parametrize("gain_sd,noise_sd", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5),
                                              (0.2, 0.5)])
def test_gain_and_noise_overdisperse_counts_by_the_expected_factor(gain_sd, noise_sd):
    """With a log-normal rate factor of log-SD sigma, a count of mean m has variance
    m + m^2 (exp(sigma^2) - 1); the gain is shared by a rat's neurons, so it also
    correlates them (covariance m_i m_j (exp(gain_sd^2) - 1)), the noise does not."""
    s = _session(neurons=100, tuned_fraction=0.0, gain_sd=gain_sd, noise_sd=noise_sd,
                 post_bins=0)
    counts = s.spikes[:, :, :s.onset - 10].sum(axis=2).astype(float)  # baseline
    m, cov = counts.mean(0), np.cov(counts, rowvar=False)
    excess = (np.diag(cov) - m).sum() / (m ** 2).sum()
    want = math.expm1(gain_sd ** 2 + noise_sd ** 2)
    assert excess == pytest.approx(want, abs=0.1 * want + 0.02)
    off = ~np.eye(len(m), dtype=bool)
    shared = cov[off].sum() / np.outer(m, m)[off].sum()
    assert shared == pytest.approx(math.expm1(gain_sd ** 2), abs=0.15 * gain_sd ** 2
                                   + 0.01)


def test_deterministic_in_its_arguments_and_every_knob_matters():
    a = H.simulate_sessions(4, 3)
    b = H.simulate_sessions(4, 3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.spikes, y.spikes)
        np.testing.assert_array_equal(x.tuned, y.tuned)
    for knob, value in (("tuned_fraction", 0.6), ("tuning", 0.9), ("gain_sd", 0.4),
                        ("noise_sd", 0.1)):
        c = H.simulate_sessions(4, 3, **{knob: value})
        assert not all(np.array_equal(x.spikes, y.spikes) for x, y in zip(a, c,
                                                                           strict=True))
        for x, y in zip(a, c, strict=True):  # the trial sequence is the same
            np.testing.assert_array_equal(x.odor, y.odor)


def test_raw_layout_then_prepare_equals_make_with_knobs(tmp_path):
    knobs = {"tuned_fraction": 0.35, "tuning": 0.8, "gain_sd": 0.1, "noise_sd": 0.7}
    H.write_hippocampus_raw(tmp_path / "raw", seed=2, trials_per_odor=4, **knobs)
    got = prepare_hippocampus(tmp_path / "raw", tmp_path / "out", seed=2)
    want = H.make_hippocampus(tmp_path / "ref", seed=2, trials_per_odor=4, **knobs)
    for split in ("train", "test"):
        a, b = read_site_table(got[split]), read_site_table(want[split])
        assert a.sample_ids == b.sample_ids
        for m in H.MODALITIES:
            np.testing.assert_array_equal(a.tensors[m], b.tensors[m])
        sim_a = read_site_meta(got[split])["dataset"]["simulation"]
        sim_b = read_site_meta(want[split])["dataset"]["simulation"]
        assert {k: sim_a[k] for k in H.KNOBS} == knobs == {k: sim_b[k] for k in H.KNOBS}
        assert sim_a["preset"] == sim_b["preset"] == "custom"


def test_prepare_refuses_a_broken_knobs_file(tmp_path):
    H.write_hippocampus_raw(tmp_path / "raw", seed=0, trials_per_odor=2)
    for text, match in (("{not json", "not valid JSON"), ("[1, 2]", "JSON object")):
        (tmp_path / "raw" / H.SIMULATION_FILE).write_text(text)
        with pytest.raises(DataError, match=match):
            prepare_hippocampus(tmp_path / "raw", tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_metadata_records_every_knob_and_the_preset(tmp_path):
    for name, knobs in (("default", {}), ("dense (v1)", H.DENSE_V1)):
        paths = H.make_hippocampus(tmp_path / name, seed=1, trials_per_odor=2, **knobs)
        sim = read_site_meta(paths["train"])["dataset"]["simulation"]
        assert sim["preset"] == name
        assert {k: sim[k] for k in H.KNOBS} == {**H.DEFAULTS, **knobs}
        assert sim["trials_per_odor"] == 2 and sim["version"] == 2


def test_default_sites_keep_each_simulation_in_its_own_folder(tmp_path):
    names = tuple(H.MODALITIES)
    sites, files = ensure_default_sites(tmp_path, modalities=names,
                                        hippocampus=H.DENSE_V1)
    full = hippocampus_folder(tmp_path, 0, H.DENSE_V1)
    assert full.name == "hippocampus-seed0-f1-t1-g0.2-n0"
    assert files[sites[0].name]["train"].startswith(str(full))
    sim = read_site_meta(full / "train.parquet")["dataset"]["simulation"]
    assert sim["preset"] == "dense (v1)"
    assert hippocampus_folder(tmp_path, 0) != full  # the default look-alike's
    with pytest.raises(ValueError, match="unknown hippocampus knob 'tunning'"):
        ensure_default_sites(tmp_path, modalities=names, hippocampus={"tunning": 1.0})


def test_default_is_weak_and_dense_is_strong_in_raw_odor_decoding():
    """Per-rat held-out odor decoding from raw window counts (chance 0.25): the default
    look-alike in the band docs/hippocampus-lookalike.md targets, dense v1 at ceiling."""
    default = raw_odor_decoding(H.simulate_sessions(0))
    assert 0.4 <= np.mean(default) <= 0.65 and min(default) > 0.3, default
    assert min(raw_odor_decoding(H.simulate_sessions(0, **H.DENSE_V1))) > 0.95


@pytest.mark.parametrize("knobs,match", [
    ({"tuned_fraction": 1.5}, r"tuned_fraction must be in \[0, 1\].*got 1.5"),
    ({"tuned_fraction": -0.1}, r"tuned_fraction must be in \[0, 1\]"),
    ({"tuning": -0.3}, r"tuning is a standard deviation: .* >= 0, got -0.3"),
    ({"gain_sd": float("nan")}, r"gain_sd is a standard deviation"),
    ({"noise_sd": float("inf")}, r"noise_sd is a standard deviation"),
    ({"tuning": "0.5"}, r"tuning must be a number"),
])
def test_bad_knobs_fail_clearly_and_write_nothing(tmp_path, knobs, match):
    with pytest.raises(ValueError, match=match):
        H.make_hippocampus(tmp_path / "a", trials_per_odor=2, **knobs)
    with pytest.raises(ValueError, match=match):
        H.write_hippocampus_raw(tmp_path / "b", trials_per_odor=2, **knobs)
    with pytest.raises(ValueError, match=match):
        H.simulate_sessions(0, 2, **knobs)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_command_line_knobs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "make", "hippocampus", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for knob, (default, _) in H.KNOBS.items():
        assert f"--{knob.replace('_', '-')}" in text and f"(default {default:g})" in text
    assert "--tuned-fraction 1 --tuning 1.0 --gain-sd 0.2 --noise-sd 0" in text
    out = tmp_path / "hc"
    assert main(["data", "make", "hippocampus", "--out", str(out), "--trials-per-odor",
                 "2", "--tuned-fraction", "1", "--tuning", "1.0", "--gain-sd", "0.2",
                 "--noise-sd", "0", "--quiet"]) == 0
    assert read_site_meta(out / "train.parquet")["dataset"]["simulation"]["preset"] == \
        "dense (v1)"
    capsys.readouterr()
    assert main(["data", "make", "hippocampus", "--out", str(tmp_path / "bad"),
                 "--tuned-fraction", "2", "--quiet"]) == 2
    assert "tuned_fraction must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
