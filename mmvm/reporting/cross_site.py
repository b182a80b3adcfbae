"""A federated run's cross-site evaluation in the report: each site scored its own
modalities from the other sites' test posteriors (results.json ``cross_site``,
:mod:`mmvm.federation.cross_eval`), the numbers a run whose weights stayed at the
sites has in place of an assembled model's eval.json."""

from __future__ import annotations

from collections.abc import Mapping

from mmvm.reporting.document import Table
from mmvm.reporting.runs import Run, coherence_matrix, number, text


def _value(v) -> str:
    n = number(v)
    return text(v) if n is None else f"{n:,.1f}" if abs(n) >= 10 else f"{n:.3f}"


def cross_site_metrics(run: Run, summary: Mapping) -> None:
    """A federated run without eval.json: its cross-site coherence and imputation
    (results.json ``cross_site``) as the run's numbers, in eval.json's places."""
    cross = summary.get("cross_site")
    cross = cross if isinstance(cross, Mapping) else {}
    coh = cross.get("coherence") if isinstance(cross.get("coherence"), Mapping) else {}
    imp = cross.get("imputation") if isinstance(cross.get("imputation"), Mapping) else {}
    found = {"coherence": number(coh.get("mean")), "coherence_self": number(coh.get("self")),
             "imputation_nll": number(imp.get("total"))}
    found = {k: v for k, v in found.items() if v is not None}
    rest = imp.get("rest") if isinstance(imp.get("rest"), Mapping) else {}
    for name, value in rest.items():
        if number(value) is not None:
            run.per_modality.setdefault(str(name), {})["imputed_nll"] = number(value)
    if coh:
        run.coherence_matrix = coherence_matrix(coh)
    chance = cross.get("chance") if isinstance(cross.get("chance"), Mapping) else {}
    if number(chance.get("majority")) is not None and "chance" not in run.metrics:
        run.metrics["chance"] = number(chance["majority"])
    said = cross.get("warnings")
    run.warnings += [f"cross-site: {w}" for w in said if isinstance(w, str)] \
        if isinstance(said, list) else []
    if found:
        run.metrics.update(found)
        run.metric_source = (run.metric_source + "; " if run.metric_source else "") + \
            "cross-site coherence and imputation (results.json)"


def cross_site_table(summary: Mapping) -> Table | None:
    """Per source -> target pair: coherence and imputation NLL scored at the target's
    site from the source's test posteriors."""
    cross = summary.get("cross_site")
    cross = cross if isinstance(cross, Mapping) else {}
    sections = {k: cross.get(k) for k in ("coherence", "imputation")}
    pairs = {k: (v.get("pairs") if isinstance(v, Mapping) else None) or {}
             for k, v in sections.items()}
    keys = list(dict.fromkeys([*pairs["coherence"], *pairs["imputation"]]))
    if not keys:
        return None
    rows = [[*k.split("->", 1), _value(pairs["coherence"].get(k, "-")),
             _value(pairs["imputation"].get(k, "-"))] for k in keys]
    notes = summary.get("cross_site_notes")
    left = "; left out: " + "; ".join(f"{s} ({why})" for s, why in notes.items()) \
        if isinstance(notes, Mapping) and notes else ""
    return Table(["source", "target", "coherence", "imputation NLL"], rows,
                 caption="Cross-site evaluation: the target's site decoded its modality "
                 "from the source's test posteriors and scored it (its own judge, its "
                 "own data); the weights stayed at the sites" + left + ".")
