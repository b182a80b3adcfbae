"""The console lines of a run: progress with time left, and the closing summary."""

from __future__ import annotations

import pytest

from mmvm.federation.loop import FederationResult
from mmvm.federation.report import (
    alignment_line,
    duration,
    size,
    summary,
    window_line,
)


def _row(w, n=12):
    return {"window": w, "windows": n, "epoch": w + 1, "rec_nll": 3600.0, "reg": 20.5,
            "bytes": 7.03e6, "seconds": 10.0}


def test_progress_line_counts_windows_and_estimates_the_time_left():
    line = window_line(_row(2), 12, elapsed=33.0)  # 3 windows in 33 s: 11 s each
    assert line.startswith("window 3/12  epoch 3")
    assert "7.03 MB" in line and "~1 min 39 s of training left" in line
    # resumed at window 3: windows 3-6 took 20 s, 6 are left (set-up not counted)
    assert "~30 s of training left" in window_line(_row(5), 12, elapsed=20.0, done=4)
    # a window without some site: its terms estimated (~), or unknown (-)
    assert "rec_nll ~3600.0" in window_line({**_row(2), "estimated": 1}, 12, 33.0)
    assert "rec_nll -  " in window_line({**_row(2), "rec_nll": float("nan"),
                                         "estimated": 1}, 12, 33.0)
    last = window_line(_row(11), 12, elapsed=130.0)
    assert "left" not in last and "last window: no posteriors to send on" in last
    assert duration(41.4) == "41 s" and duration(125) == "2 min 05 s"
    # a small run's bytes in kB: "0.00 MB" read as if nothing crossed the wire
    assert "  3.2 kB  " in window_line({**_row(2), "bytes": 3200}, 12, 33.0)
    assert (size(99_999), size(100_000), size(84e6, 1)) == ("100.0 kB", "0.10 MB",
                                                              "84.0 MB")


def test_summary_is_a_table_by_site_with_chance_and_the_files():
    res = FederationResult(history=[_row(w) for w in range(12)], bytes_total=84e6,
                           seconds=186.0)
    res.evaluation = {
        "7": {"site": "site-m1", "modalities": ["m1"], "probe/m1": 0.854,
              "classes/m1": 10.0, "majority/m1": 0.12, "recon_nll/m1": 1122.05},
        "3": {"site": "site-m0", "modalities": ["m0"], "probe/m0": 0.743,
              "classes/m0": 10.0, "majority/m0": 0.15, "recon_nll/m0": 1225.0},
        "9": {"site": "site-x", "modalities": ["x"], "recon_nll/x": 5.0},
        "5": {"site": "site-w", "modalities": ["w"], "recon_nll/w": 4.0, "unlabelled": 1.0},
        "4": {"site": "site-y", "modalities": ["y"], "recon_nll/y": 6.0,
              "probes_withheld": 1.0}}
    text = summary(res, "/runs/run-1", {"results": "/runs/run-1/results.json"},
                   {"probe": {"mean": 0.81, "all": 0.74}, "coherence": {"mean": 0.23},
                    "reconstruction": {"total": 3593.0}, "chance": {"majority": 0.15},
                    "classifier_accuracy": {"m0": 0.93, "m1": 0.2},
                    "warnings": ["the m1 judge scores 0.200 on real test data"]})
    lines = text.splitlines()
    assert lines[0] == ("mmvm: trained 12 windows in 3 min 06 s (2 min 00 s of windows, "
                        "1 min 06 s of set-up and state saving; the evaluation after "
                        "them not included); 84.0 MB exchanged")
    body = [line for line in lines if line.startswith("site-")]
    assert [b.split()[0] for b in body] == ["site-m0", "site-m1", "site-w", "site-x",
                                            "site-y"]  # by name
    # chance: always answering the commonest test label (not 1 / classes)
    assert "0.743 (chance 0.15)" in body[0] and "1225.0" in body[0]
    assert "0.854 (chance 0.12)" in body[1]
    assert "- (no data.label column at the site)" in body[2]  # says why it is empty
    assert body[3].split()[2] == "-"  # an older site's reply: no probe, no reason
    assert "withheld (the site's eval-labels)" in body[4]  # its node config's choice
    assert "probe 0.810 (pooled over all modalities 0.740), coherence 0.230" in text
    assert "reconstruction NLL 3593.0; chance 0.150" in text
    # the warnings say "see their accuracy": it is printed before them
    judges = lines.index("coherence judges, accuracy on real test data: m0 0.930, m1 0.200")
    assert lines[judges + 1] == "warning: the m1 judge scores 0.200 on real test data"
    assert text.endswith("files in /runs/run-1: results.json")


def test_the_files_line_names_the_servers_state_a_resume_continues_from(tmp_path):
    (tmp_path / "server_state.pt").write_bytes(b"x")
    text = summary(FederationResult(seconds=1.0), str(tmp_path),
                   {"results": str(tmp_path / "results.json")}, None)
    assert text.endswith(f"files in {tmp_path}: results.json, server_state.pt")


def test_the_assembled_models_line_says_what_its_probe_is_a_mean_of():
    """With eval.labels the probe is a mean over labels: it was printed beside
    data.label's chance ("probe 0.884 ...; chance 0.597" for a 3-class label among
    them); without any label column there is no probe to print."""
    res = FederationResult(seconds=1.0)
    rows = {"label.a": {"ap": 0.9, "chance": 0.3}, "label.b": {"ap": 0.5, "chance": 0.5}}
    per_label = {"probe": {"mean": 0.7}, "probe_labels": {"metric": "ap", "labels": {
        "m0": rows, "m1": rows}}, "coherence": {}, "reconstruction": {"total": 10.0},
        "chance": {"majority": 0.597}}
    text = summary(res, "/r", {}, per_label)
    assert ("probe 0.700 (ap, mean over 2 labels, chance 0.400; eval.json probe_labels), "
            "coherence -, reconstruction NLL 10.0") in text and "0.597" not in text
    unlabelled = summary(res, "/r", {}, {"probe": {}, "reconstruction": {"total": 10.0}})
    assert "server: no probes (no label column), reconstruction NLL 10.0" in unlabelled


def test_a_resumed_runs_summary_says_how_many_windows_came_before_the_resume():
    res = FederationResult(history=[_row(w) for w in range(7)], bytes_total=5e5,
                           seconds=118.0, resumed_after=6)
    first = summary(res, "/runs/run-2", {}, None).splitlines()[0]
    assert first == ("mmvm: trained 7 windows in 1 min 58 s (1 min 10 s of windows, "
                     "48 s of set-up and state saving; the evaluation after them not "
                     "included; 6 of them before this resume); 0.5 MB exchanged")


def test_alignment_line_says_how_many_samples_the_sites_share():
    al = {"samples": 120, "per_modality": {"frontal": 100, "lateral": 90},
          "coupled": {"frontal": 70, "lateral": 70}, "multimodal": 70, "complete": 70}
    line = alignment_line(al, 2)
    assert line.splitlines()[0] == ("mmvm: aligned 120 samples across 2 sites (frontal "
                                    "100, lateral 90); 70 have two or more modalities, 70 all")
    # 70 of lateral's 90 coupled: maybe data prepared differently (another --seed)
    assert line.splitlines()[1].startswith(
        "mmvm: note: not every sample is held with another modality (frontal 70 of 100, "
        "70%; lateral 70 of 90, 78%)")
    al = {**al, "coupled": {"frontal": 90, "lateral": 90}, "multimodal": 90}
    assert "\n" not in alignment_line(al, 2)
    assert "\n" not in alignment_line({**al, "coupled": None}, 2)  # an older server state


def test_the_cross_site_lines_say_chance_coverage_and_warnings():
    from mmvm.federation.report import cross_site_lines

    cross = {"coherence": {"pairs": {"m0->m1": 0.5, "m1->m0": 0.4, "m0->m0": 0.9},
                           "names": ["m0", "m1", "m2"], "mean": 0.45, "self": 0.9},
             "imputation": {"pairs": {"m0->m1": 10.0}, "rest": {"m1": 10.0},
                            "names": ["m0", "m1", "m2"], "total": float("nan"),
                            "scoring": "one draw"},
             "chance": {"majority": 0.15}, "warnings": ["coherence 0.450 is ..."],
             "classifier_accuracy": {"m0": 0.5, "m1": 0.75}}
    text = "\n".join(cross_site_lines(cross, {"site-m2": "did not evaluate"}))
    assert "mean over 2 of 6 source -> target pairs, chance 0.150" in text
    assert ("  the sites' coherence judges, accuracy on their own real test data (a "
            "modality's: the mean over its sites): m0 0.500, m1 0.750") in text
    unmeasured = {**cross, "classifier_accuracy": {"m0": float("nan")}}
    assert "judges" not in "\n".join(cross_site_lines(unmeasured, {}))
    assert "m1 10.0 (from m0 only)" in text and "total -" in text
    assert "site-m2: not part of it (did not evaluate)" in text
    assert "warning: coherence 0.450 is ..." in text
    # said by the assembled model's evaluation too: printed once, below it
    again = cross_site_lines(cross, {}, ["coherence 0.450 is ..."])
    assert not [line for line in again if "warning" in line]


def test_a_site_coupled_to_nothing_is_warned_of_again_at_the_end():
    """Walkthrough: a rat prepared with its lab's own trial ids shared no sample, and
    its warning was one line among the sites' thirty at the start; the run ended
    'completed'. The summary repeats it beside the files."""
    al = {"samples": 900, "per_modality": {"ratA": 400, "ratB": 100, "ratC": 400},
          "coupled": {"ratA": 400, "ratB": 0, "ratC": 400}}
    text = summary(FederationResult(seconds=1.0, alignment=al), "/r", {}, None)
    assert "warning: ratB shares no sample with another modality: it trains as an " \
           "independent VAE" in text
    assert "shares no sample" not in summary(FederationResult(seconds=1.0), "/r", {}, None)


def test_a_probe_on_a_small_test_set_shows_its_interval():
    """A lab's 39 trials read probe 1.000: the Wilson interval says 0.91-1.00."""
    import math

    from mmvm.federation.report import wilson

    z = 1.959963984540054
    for k, n in ((39, 39), (29, 200), (0, 10)):  # the closed form
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    res = FederationResult(history=[_row(0, 1)], seconds=1.0)
    res.evaluation = {"1": {"site": "rat1", "modalities": ["rat1"], "probe/rat1": 1.0,
                            "majority/rat1": 0.385, "probe_n/rat1": 39.0}}
    line = next(ln for ln in summary(res, "/r", {}, None).splitlines()
                if ln.startswith("rat1"))
    assert "1.000 (chance 0.39; 95 % 0.91-1.00 of 39)" in line
    # 88 windows of 22 trials: as sure as 22 (a neuroscientist's 0.602 read 0.50-0.70
    # of 88 windows; of its 22 trials it is 0.40-0.77)
    res.evaluation["1"].update({"probe/rat1": 0.602, "probe_n/rat1": 88.0,
                                "probe_groups/rat1": 22.0})
    line = next(ln for ln in summary(res, "/r", {}, None).splitlines()
                if ln.startswith("rat1"))
    low, high = wilson(round(0.602 * 22), 22)
    assert f"0.602 (chance 0.39; 95 % {low:.2f}-{high:.2f} of 22 groups, 88 rows)" in line
    assert high - low > 0.3  # the 88-row interval was 0.20 wide


def test_two_coherences_of_one_model_say_why_they_differ():
    """A researcher's walkthrough read coherence 0.199 (cross-site) and 0.224 (the
    server's) for one model: the judges differ (each site's own, the server's)."""
    assembled = {"probe": {"mean": 0.6}, "coherence": {"mean": 0.224},
                 "reconstruction": {"total": 10.0}}
    cross = {"coherence": {"pairs": {"a->b": 0.199}, "names": ["a", "b"], "mean": 0.199}}
    both = summary(FederationResult(seconds=1.0, cross_site=cross), "/r", {}, assembled)
    assert "its coherence is scored by the server's judges on the joined test set, the " \
           "cross-site one by each site's own judges" in both
    alone = summary(FederationResult(seconds=1.0), "/r", {}, assembled)
    assert "server's judges" not in alone
