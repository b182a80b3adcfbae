"""What a person reads on the console during and after a federated run.

One line per exchange window (``window k/K``, the window's loss terms, bytes and
time, and an estimate of the time left), and at the end a table by site: each own
modality's probe accuracy against chance, its test reconstruction error, then the
assembled model's evaluation where the server had data for one, bytes, wall time and
where the files are. Pure functions of the loop's records: the ServerApp prints them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from mmvm.data.coupling import uncoupled_warning, weak_coupling_note
from mmvm.federation.server_state import STATE_FILE
from mmvm.federation.window_metrics import seconds_of


def duration(seconds: float) -> str:
    """``"2 min 05 s"`` / ``"41 s"``."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def size(n: float, digits: int = 2) -> str:
    """Bytes as MB, or kB below 0.1 MB (a small run's "0.00 MB" read as nothing sent)."""
    return f"{n / 1e6:.{digits}f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def window_line(row: Mapping, total: int, elapsed: float, done: int | None = None) -> str:
    """The progress line of window ``row`` out of ``total``; ``elapsed``: seconds the
    last ``done`` windows took (default: all so far), from which the time left is
    extrapolated (set-up and, after a resume, the windows before it left out)."""
    k = row["window"] + 1
    left = elapsed / (done or k) * (total - k)
    tail = f"  ~{duration(left)} of training left" if k < total else \
        "  (last window: no posteriors to send on)"
    refused = row.get("refused") or {}
    left = row.get("left_out") or []
    silent = [n for n in row.get("missed", []) if n not in refused and n not in left]
    away = f"  (without {', '.join(silent)}: no reply)" if silent else ""
    away += f"  (without {', '.join(left)}: excluded)" if left else ""
    away += "".join(f"  (without {n}: refused, {why})" for n, why in refused.items())
    away += "".join(f"  ({n} answers again after missing {_windows(ws)})"
                    for n, ws in (row.get("back") or {}).items())
    away += "".join(f"  ({n} restarted from its state after {_after(last)}: its own "
                    f"training since is lost)" for n, last in (row.get("restored") or {}).items())
    away += "".join(f"  ({n} excluded from the rest of the run: it {why})"
                    for n, why in (row.get("excluded") or {}).items())
    why = row.get("unaveraged_why") or {}
    kept = [m for m in row.get("unaveraged") or [] if m not in why]
    away += (f"  ({', '.join(kept)} not averaged: too few holders answered or "
             f"unmasked; its holders go on from its last mean, or from their own "
             f"weights if it has none)") if kept else ""
    away += "".join(f"  ({m} not averaged this window: {r})" for m, r in why.items())
    rec = _num(row["rec_nll"], 1)
    if row.get("estimated") and rec != "-":  # some sites' terms estimated from the others'
        rec = "~" + rec
    return (f"window {k}/{total}  epoch {row['epoch']}  rec_nll {rec}  "
            f"reg {row['reg']:.2f}  {size(row['bytes'])}  "
            f"{row['seconds']:.1f} s" + tail + away)


def alignment_line(al: Mapping, num_sites: int) -> str:
    """How many samples the sites share (an id scheme that does not match shows here)."""
    per = ", ".join(f"{m} {n}" for m, n in al["per_modality"].items())
    line = (f"mmvm: aligned {al['samples']} samples across {num_sites} sites ({per}); "
            f"{al['multimodal']} have two or more modalities, {al['complete']} all")
    alone = uncoupled_warning(al["per_modality"], al.get("coupled"))
    note = weak_coupling_note(al["per_modality"], al.get("coupled"))
    return line + (f"\nmmvm: warning: {alone}" if alone else "") + (
        f"\nmmvm: note: {note}" if note else "")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``k`` right of ``n`` (scipy's): honest at
    0 or n right, where the normal one collapses to a point."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _probe_cell(ev: Mapping, m: str) -> str:
    """``0.743 (chance 0.15; 95 % 0.68-0.80 of 200)``: the probe, its chance and,
    where the site sent how many test rows it scored, the interval a test set that
    size leaves (a lab's 39 trials read 1.000, which is 0.91-1.00). Rows that come in
    groups (a trial's windows, a patient's images; the site sent how many groups)
    count as their groups: the interval of 88 windows of 22 trials is that of 22,
    the most it can claim when one trial's windows may all be right or all wrong."""
    metric = next((k.partition("/")[2] for k in ev if k.startswith("probe_metric/")), None)
    if metric is not None and f"probe_labels/{m}" in ev:  # per-label probes: their mean
        return (f"{_num(ev.get(f'probe/{m}'))} ({metric}, mean of "
                f"{int(ev[f'probe_labels/{m}'])} labels; chance "
                f"{_num(ev.get(f'chance/{m}'), 2)})")
    acc, majority, n, groups = (ev.get(f"{k}/{m}") for k in
                                ("probe", "majority", "probe_n", "probe_groups"))
    said = [f"chance {majority:.2f}"] if majority is not None else []
    if acc is not None and n:
        if groups and groups < n:
            low, high = wilson(round(acc * groups), int(groups))
            said.append(f"95 % {low:.2f}-{high:.2f} of {int(groups)} groups, "
                        f"{int(n)} rows")
        else:
            low, high = wilson(round(acc * n), int(n))
            said.append(f"95 % {low:.2f}-{high:.2f} of {int(n)}")
    return _num(acc) + (f" ({'; '.join(said)})" if said else "")


def _num(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _spans(windows: list[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``"3-5, 8"`` (1-based, as the progress lines count)."""
    out, start = [], None
    for i, w in enumerate(windows):
        if start is None:
            start = w
        if i + 1 == len(windows) or windows[i + 1] != w + 1:
            out.append(f"{start + 1}" if start == w else f"{start + 1}-{w + 1}")
            start = None
    return ", ".join(out)


def summary(result, run_dir: str, paths: Mapping[str, str], assembled: Mapping | None
            ) -> str:
    """The closing summary of a run (see the module docstring)."""
    rows = []
    for ev in sorted(result.evaluation.values(), key=lambda e: e["site"]):
        for m in ev["modalities"]:
            probe = "withheld (the site's eval-labels)" if ev.get("probes_withheld") \
                else "- (no data.label column at the site)" if ev.get("unlabelled") \
                else _probe_cell(ev, m)
            constant = ev.get(f"constant_nll/{m}")
            recon = "withheld (report-losses)" if ev.get("losses_withheld") \
                else _num(ev.get(f"recon_nll/{m}"), 1) + (
                    f" (constant {_num(constant, 1)})" if constant is not None else "")
            rows.append([ev["site"], m, probe, recon])
    n = len(result.history)
    before = result.resumed_after  # the time is the whole run's, over its resumes
    resumed = f"; {before} of them before this resume" if before else ""
    # the set-up (Ray, the sites asked, aligned, attached) is most of a short run: a
    # walkthrough read "20 windows in 15 s" against the windows' "~4 s left"
    windows = sum(seconds_of(r.get("seconds")) for r in result.history)
    setup = max(0.0, result.seconds - windows)
    lines = [f"mmvm: trained {n} window{'s' if n != 1 else ''} in {duration(result.seconds)} "
             f"({duration(windows)} of windows, {duration(setup)} of set-up and state "
             f"saving; the evaluation after them not included{resumed}); "
             f"{size(result.bytes_total, 1)} exchanged", ""]
    per_label = any(k.startswith("probe_metric/") for ev in result.evaluation.values()
                    for k in ev)
    lines += _table(["site", "modality", "probe" if per_label else "probe accuracy",
                     "test recon NLL"], rows)
    lines += cross_site_lines(result.cross_site, result.cross_notes,
                              (assembled or {}).get("warnings", []))
    if assembled:
        both = (result.cross_site.get("coherence") or {}).get("mean") is not None and \
            (assembled.get("coherence") or {}).get("mean") is not None
        lines += ["", "assembled model, evaluated by the server: " + _assembled(assembled),
                  "(its reconstruction NLLs decode z drawn by the server: they differ from "
                  "the sites' own draws above by that noise"
                  + ("; its coherence is scored by the server's judges on the joined test "
                     "set, the cross-site one by each site's own judges on its own test "
                     "rows: the same model, other judges and draws" if both else "")
                  + ")"]
        lines += _judges(assembled.get("classifier_accuracy"))
        lines += [f"warning: {w}" for w in assembled.get("warnings", [])]
    if result.missed:
        lines += ["", "windows missed (the run went on without the site): " + "; ".join(
            f"{site} {_spans(ws)}" for site, ws in sorted(result.missed.items()))]
    refused = refusals(result.history)
    if refused:
        lines += ["", "windows refused (the site failed them or sent what the server "
                      "does not take; the run went on without it): " + "; ".join(
                          f"{site} {_spans([r['window'] for r in rs])} (last: "
                          f"{rs[-1]['reason']})" for site, rs in sorted(refused.items()))]
    out = excluded(result.history)
    if out:
        lines += ["", "sites excluded from the rest of the run (more than max-refused "
                      "windows in a row): " + "; ".join(
                          f"{site} after window {e['window'] + 1}" for site, e in
                          sorted(out.items()))]
    restored = restarts(result.history)
    if restored:
        lines += ["", "sites restarted from a checkpoint (their own training between it "
                      "and the window was lost): " + "; ".join(
                          f"{site} at window " + ", ".join(
                              f"{r['window'] + 1} (from its state after {_after(r['after'])})"
                              for r in rs) for site, rs in sorted(restored.items()))]
    if result.not_evaluated:
        lines += ["", f"sites {result.not_evaluated} did not answer the final evaluation: "
                      f"they keep their weights, no assembled model"]
    lines += [f"  {site} {'failed it' if site in result.not_evaluated else 'evaluated'}: "
              f"{why}" for site, why in result.evaluation_errors.items()]
    if result.model_refused:
        lines += ["", f"no assembled model: {result.model_refused}"]
    if result.kept_weights:
        lines += ["", f"sites {sorted(result.kept_weights)} kept their final weights, "
                      f"each in its state file (collect-model = false, the site's "
                      f"policy allow-collect = false, or, secure, a shared modality "
                      f"it was sent no mean of): no assembled model"]
    al = result.alignment or {}  # said at the start too, among the sites' lines
    if alone := uncoupled_warning(al.get("per_modality") or {}, al.get("coupled")):
        lines += ["", f"warning: {alone}"]
    written = {str(p).rsplit("/", 1)[-1] for p in paths.values()}
    if (Path(run_dir) / STATE_FILE).is_file():  # what a resume continues from
        written.add(STATE_FILE)
    lines += ["", f"files in {run_dir}: " + ", ".join(sorted(written))]
    return "\n".join(lines)


def cross_site_lines(cross: Mapping, notes: Mapping[str, str], said: list[str] = ()
                     ) -> list[str]:
    """The cross-site evaluation (each site scored its modalities from the others'
    test posteriors): coherence against its chance, imputation NLL per target
    modality, the sites left out of it, and its warnings but those the assembled
    model's evaluation ``said`` as well (printed below it)."""
    imp, coh = cross.get("imputation") or {}, cross.get("coherence") or {}
    if not (imp or coh or notes or cross.get("warnings")):
        return []
    lines = ["", "cross-site evaluation (each site scored its own modalities from the "
                 "other sites' test posteriors; results.json cross_site):"]
    names = list((coh or imp).get("names") or [])
    every = len(names) * (len(names) - 1)  # source -> target pairs, s != t
    if coh:
        pairs = [k for k in coh.get("pairs", {}) if len(set(k.split("->"))) == 2]
        chance = (cross.get("chance") or {}).get("majority")
        lines.append(f"  coherence {_num(coh.get('mean'))} (mean over {len(pairs)} of "
                     f"{every} source -> target pairs"
                     + (f", chance {_num(chance)}" if chance is not None else "")
                     + f"; target from itself {_num(coh.get('self'))})")
        lines += _judges(cross.get("classifier_accuracy"), "  ", sites=True)
    if imp:
        per = ", ".join(f"{m} {_num(v, 1)}{_sources(imp, m, names)}"
                        for m, v in imp.get("rest", {}).items())
        z = "posterior means" if "means" in str(imp.get("scoring")) else "one draw of z"
        lines.append(f"  imputation NLL from the other modalities: {per} (total "
                     f"{_num(imp.get('total'), 1)}; {z} per source)")
    lines += [f"  {site}: not part of it ({why})" for site, why in sorted(notes.items())]
    lines += [f"  warning: {w}" for w in cross.get("warnings") or [] if w not in said]
    return lines


def _judges(accuracy: Mapping | None, indent: str = "", sites: bool = False
            ) -> list[str]:
    """The coherence judges' accuracy on real test data (what a coherence near chance
    is read against; ``sites``: each site's judge on its own test data, a modality's
    the mean over its sites), or nothing without a measured one."""
    shown = {m: a for m, a in (accuracy or {}).items()
             if isinstance(a, (int, float)) and math.isfinite(a)}
    if not shown:
        return []
    whose = ("the sites' coherence judges, accuracy on their own real test data (a "
             "modality's: the mean over its sites): " if sites else
             "coherence judges, accuracy on real test data: ")
    return [indent + whose + ", ".join(f"{m} {_num(a)}" for m, a in shown.items())]


def _sources(imp: Mapping, target: str, names: list[str]) -> str:
    """`` (from m0 only)`` where fewer than all other modalities were scored into
    ``target`` (a site left out, or a pair under a site's floor)."""
    got = [k.split("->", 1)[0] for k in imp.get("pairs", {}) if k.endswith(f"->{target}")]
    return f" (from {', '.join(got)} only)" if got and len(got) < len(names) - 1 else ""


def refusals(history: list[Mapping]) -> dict[str, list[dict]]:
    """``{site: [{"window", "reason"}, ...]}`` of the windows whose reply the server
    refused (each history row keeps them, so a resumed run still has them)."""
    out: dict[str, list[dict]] = {}
    for row in history:
        for site, why in (row.get("refused") or {}).items():
            out.setdefault(site, []).append({"window": row["window"], "reason": why})
    return out


def excluded(history: list[Mapping]) -> dict[str, dict]:
    """``{site: {"window", "reason"}}``: the sites excluded from the rest of the run,
    after which window and why (not one that a resumed run took back, and that
    answered a later window)."""
    out: dict[str, dict] = {}
    for row in history:
        for site in [s for s in out if s not in row.get("missed", [])]:
            del out[site]  # back (a resumed run sends it windows again)
        for site, why in (row.get("excluded") or {}).items():
            out[site] = {"window": row["window"], "reason": why}
    return out


def unaveraged(history: list[Mapping]) -> dict[str, list[int]]:
    """``{modality: [windows]}``: the windows in which a shared modality was not
    averaged (too few holders answered, the unmask step failed, or the unmasked mean
    failed its checks)."""
    out: dict[str, list[int]] = {}
    for row in history:
        for m in row.get("unaveraged") or []:
            out.setdefault(m, []).append(row["window"])
    return out


def restarts(history: list[Mapping]) -> dict[str, list[dict]]:
    """``{site: [{"window", "after"}, ...]}``: the windows a site answered from an
    older state than its last window's (its process restarted from a checkpoint;
    ``after``: the last window that state had, -1 for attach)."""
    out: dict[str, list[dict]] = {}
    for row in history:
        for site, last in (row.get("restored") or {}).items():
            out.setdefault(site, []).append({"window": row["window"], "after": last})
    return out


def _windows(ws: list[int]) -> str:
    """``"window 3"`` / ``"windows 3-5"`` of indices from 0."""
    return f"window {ws[0] + 1}" if len(ws) == 1 else f"windows {_spans(ws)}"


def _after(last: int) -> str:
    return "attach" if last < 0 else f"window {last + 1}"


def _assembled(ev: Mapping) -> str:
    """The assembled model's evaluation in one line: probes (each label's with
    ``eval.labels``, against their chance), coherence, reconstruction."""
    probe, coh = ev.get("probe", {}), ev.get("coherence", {})
    recon = f"reconstruction NLL {_num(ev.get('reconstruction', {}).get('total'), 1)}"
    per_label = ev.get("probe_labels")
    if per_label:
        metric = per_label.get("metric")
        rows = [r for labels in per_label.get("labels", {}).values() for r in labels.values()]
        chance = [r["chance"] for r in rows  # of the labels the probe mean counts
                  if all(isinstance(r.get(k), float) and not math.isnan(r[k])
                         for k in ("chance", metric))]
        mean_chance = f", chance {_num(sum(chance) / len(chance))}" if chance else ""
        n = len({c for labels in per_label.get("labels", {}).values() for c in labels})
        return (f"probe {_num(probe.get('mean'))} ({metric}, mean over "
                f"{n} labels{mean_chance}; eval.json probe_labels), coherence "
                f"{_num(coh.get('mean'))}, {recon}")
    if not probe:
        return f"no probes (no label column), {recon}"
    return (f"probe {_num(probe.get('mean'))} (pooled over all modalities "
            f"{_num(probe.get('all'))}), coherence {_num(coh.get('mean'))}, {recon}"
            + (f"; chance {_num(ev['chance'].get('majority'))}" if ev.get("chance") else ""))
