"""The hippocampus look-alike: shapes, windows, alignment, split by trial, seed."""

from __future__ import annotations

import numpy as np
import pytest

from mmvm.data import hippocampus as H
from mmvm.data.store import read_site_meta, read_site_table


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("hc")
    paths = H.make_hippocampus(out, seed=5, trials_per_odor=8)
    return {k: read_site_table(p) for k, p in paths.items()}, paths


def test_layout_shapes_and_counts(small):
    tables, paths = small
    for split, t in tables.items():
        assert t.modalities == list(H.MODALITIES)
        for m, n in zip(H.MODALITIES, H.NEURONS, strict=True):
            x = t.tensors[m]
            assert x.shape == (len(t), n, H.SUB_BINS) and x.dtype == np.float32
            assert t.scales[m] == 1.0
            assert (x >= 0).all() and np.array_equal(x, np.round(x))  # raw counts
        assert set(np.unique(t.labels["label"])) == {0, 1, 2, 3}
        assert len(set(t.sample_ids)) == len(t)
        meta = read_site_meta(paths[split])["dataset"]
        assert meta["split"] == split and meta["recipe"]["sub_windows"].startswith("16")


def test_every_trial_has_16_sliding_windows(small):
    tables, _ = small
    t = tables["train"]
    trial, win = t.columns["trial"], t.columns["window"]
    for tr in np.unique(trial)[:5]:
        rows = np.flatnonzero(trial == tr)
        assert sorted(win[rows]) == list(range(16))
        rows = rows[np.argsort(win[rows])]
        for m in H.MODALITIES:
            x = t.tensors[m][rows]  # [16, neurons, 10]
            np.testing.assert_array_equal(x[1:, :, :9], x[:-1, :, 1:])  # stride 1 bin


def test_split_is_by_trial(small):
    tables, _ = small
    key = lambda t: set(zip(t.labels["label"], t.columns["odor_trial"], strict=True))  # noqa: E731
    train, test = key(tables["train"]), key(tables["test"])
    assert train and test and not (train & test)


def test_windows_match_the_simulated_sessions(small):
    tables, _ = small
    sessions = H.simulate_sessions(5, 8)
    t = tables["test"]
    for i in range(0, len(t), 7):
        for m, s in zip(H.MODALITIES, sessions, strict=True):
            src = t.columns[f"source_trial.{m}"][i]
            w = t.columns["window"][i]
            assert s.odor[src] == t.labels["label"][i]  # aligned by odor ...
            k = t.columns["odor_trial"][i]  # ... and index within odor
            assert np.flatnonzero(s.odor == s.odor[src]).tolist().index(src) == k
            want = s.spikes[src][:, s.onset + w:s.onset + w + 10]
            np.testing.assert_array_equal(t.tensors[m][i], want)


def test_deterministic_in_seed(tmp_path):
    a = H.make_hippocampus(tmp_path / "a", seed=1, trials_per_odor=3)
    b = H.make_hippocampus(tmp_path / "b", seed=1, trials_per_odor=3)
    c = H.make_hippocampus(tmp_path / "c", seed=2, trials_per_odor=3)
    ta, tb, tc = (read_site_table(p["train"]) for p in (a, b, c))
    assert ta.sample_ids == tb.sample_ids
    for m in H.MODALITIES:
        np.testing.assert_array_equal(ta.tensors[m], tb.tensors[m])
    assert not all(np.array_equal(ta.tensors[m][:5], tc.tensors[m][:5])
                   for m in H.MODALITIES)


def test_rats_have_their_own_tuning():
    """Odor responses are rat-specific: one rat's odor code does not predict another's."""
    sessions = H.simulate_sessions(0, 30, neurons=(40, 40, 40, 40, 40))
    means = []
    for s in sessions:
        post = s.spikes[:, :, s.onset + 10:s.onset + 25].mean(2)  # [trials, neurons]
        means.append(np.stack([post[s.odor == o].mean(0) for o in range(4)]))
    # within a rat, odor patterns differ strongly; across rats neurons are unrelated
    d = [m - m.mean(0) for m in means]
    corr = np.corrcoef(d[0].ravel(), d[1].ravel())[0, 1]
    assert abs(corr) < 0.3
