"""A federated run's own page section: how it ran, each site's evaluation, its curves.

From the run's ``results.json`` (:func:`mmvm.federation.results.write_results`): the
federation settings, bytes and time, and per site its modalities and the probe and
reconstruction of its own modalities; ``curves.png`` (reconstruction, regulariser and
bytes per window) when present; the cross-site evaluation's coherence and imputation
(each site scoring its modalities from the others' test posteriors) where the run had
one.
"""

from __future__ import annotations

from collections.abc import Mapping

from mmvm.reporting.cross_site import cross_site_table
from mmvm.reporting.document import Paragraph, Section, Table
from mmvm.reporting.runs import FEDERATED_SETTINGS, Run, number, text

RUN_FACTS = (("bytes_total", "bytes exchanged"), ("seconds", "wall time (s)"),
             ("windows", "exchange windows"), ("missed_windows", "missed windows"),
             ("refused_windows", "refused windows"),
             ("restarted_sites", "sites restarted from a checkpoint"),
             ("not_evaluated", "sites not evaluated"), ("alignment", "alignment"))


def _value(v) -> str:
    n = number(v)
    if n is not None:
        return f"{n:,.0f}" if abs(n) >= 1000 else f"{n:g}"
    return text(v) if len(text(v)) <= 120 else text(v)[:117] + "..."


def _fact(key: str, v) -> str:
    """A run fact: seconds to a tenth (a walkthrough read "22.0624"), the alignment's
    counts by name (its JSON was cut short), the rest as :func:`_value` shows it."""
    if key == "seconds" and number(v) is not None:
        return f"{number(v):,.1f}"
    if key == "alignment" and isinstance(v, Mapping):
        counts = [f"{k} {_value(x)}" for k, x in v.items()
                  if not isinstance(x, Mapping | list) and number(x) is not None]
        return ", ".join(counts) or _value(v)
    return _value(v)


def settings_table(summary: Mapping) -> Table:
    settings = summary.get("settings")
    settings = settings if isinstance(settings, Mapping) else {}
    rows = [[k, _value(settings[k])] for k in FEDERATED_SETTINGS if k in settings]
    rows += [[label, _fact(k, summary[k])] for k, label in RUN_FACTS
             if k in summary and summary[k] not in (None, [], {})]
    return Table(["setting", "value"], rows, caption="How the federation ran.")


def sites_table(summary: Mapping) -> Table | None:
    evaluation = summary.get("evaluation")
    sites = summary.get("sites")
    evaluation = evaluation if isinstance(evaluation, Mapping) else {}
    sites = sites if isinstance(sites, Mapping) else {}
    rows = []
    for node, info in sites.items():
        info = info if isinstance(info, Mapping) else {}
        ev = evaluation.get(node) if isinstance(evaluation.get(node), Mapping) else {}
        mods = info.get("modalities") if isinstance(info.get("modalities"), list) else []
        # one precision per kind (a walkthrough read "1,238" beside "748.012")
        scores = [f"{k}: {number(v):.3f}" if str(k).startswith("probe/")
                  else f"{k}: {number(v):,.1f}" for k, v in ev.items()
                  if str(k).startswith(("probe/", "recon_nll/")) and number(v) is not None]
        rows.append([text(info.get("site", node)), ", ".join(map(text, mods)),
                     _value(info.get("n", "?")), "; ".join(scores) or "not evaluated"])
    if not rows:
        return None
    return Table(["site", "modalities", "samples", "own evaluation"], rows,
                 caption="Each site's probe and test reconstruction NLL of its own "
                 "modalities, computed at the site.")


def federated_section(run: Run) -> Section:
    from mmvm.reporting.pictures import embed

    summary = run.federated or {}
    section = Section(f"Federated run {run.name}").add(settings_table(summary))
    sites = sites_table(summary)
    section.add(sites or Paragraph("No per-site records in results.json.", note=True))
    cross = cross_site_table(summary)
    if cross is not None:
        section.add(cross)
    if "curves" in run.images:
        section.add(embed(run.images["curves"], f"{run.name}: reconstruction, "
                          "regulariser and bytes per exchange window"))
    if run.metric_source.startswith("eval.json"):
        section.add(Paragraph("The summary's numbers for this run are the assembled "
                              "model's, evaluated by the server (eval.json)."))
    return section
