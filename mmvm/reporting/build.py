"""The report's content: tables and figures from collected runs.

Sections, in order: a summary table (one row per method, beta and other settings,
mean ± standard error over seeds), each method against MMVM (Welch's t-tests,
Holm-adjusted: :mod:`mmvm.reporting.versus`), the trade-off figures (reconstruction vs probe,
reconstruction vs coherence, coherence bars and matrices), a per-modality table, the
pictures (:mod:`mmvm.reporting.pictures`), the federated runs' details
(:mod:`mmvm.reporting.federated`), every run on its own, and the benchmarks' own
tables. A number a run lacks reads "not evaluated"; a figure that cannot be drawn is
replaced by a note saying why.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from mmvm.provenance import differences
from mmvm.reporting.collect import Collection, ResultsFile
from mmvm.reporting.document import Document, Figure, Paragraph, Section, Table
from mmvm.reporting.federated import federated_section
from mmvm.reporting.figures import (
    MAX_HEATMAPS,
    coherence_bars,
    coherence_heatmaps,
    scatter,
)
from mmvm.reporting.pictures import embed, picture_sections
from mmvm.reporting.runs import METRICS, Run, number, text
from mmvm.reporting.stats import (
    NOT_EVALUATED,
    Group,
    fmt,
    group_runs,
    modality_names,
    show,
    split_repeated_seeds,
    trainer,
    variants_of,
)
from mmvm.reporting.versus import versus_section
from mmvm.reporting.warning_kinds import warning_kinds

MAX_TABLE_ROWS = 200
MAX_TABLE_COLUMNS = 20
SE_NOTE = ("Numbers are mean ± standard error over seeds (sample standard deviation / "
           "√n); a group with one seed shows its number and \"(1 seed)\", with no error "
           "bar. \"not evaluated\": no run of the group has that number.")


def build(collection: Collection, title: str, inputs: Sequence[str],
          generate: bool = False) -> Document:
    if not collection.runs and not any(r.rows for r in collection.results):
        raise ValueError("no runs to report (the inputs hold no run and no results row)"
                         + "".join(f"; {n}" for n in collection.notes))
    # two runs of one seed are not two seeds: each on its own, as the plot does
    from mmvm.plots import tag_results_files  # rows of two results files stay apart

    groups, repeated = split_repeated_seeds(group_runs(tag_results_files(collection.runs)))
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc = Document(title, intro=[
        f"{_count(len(collection.runs), 'run')} in {_count(len(groups), 'group')}, "
        f"from: {', '.join(inputs)}.",
        f"Made by mmvm report on {now}.", SE_NOTE,
        *filter(None, [environment_note(collection.runs)])])  # qualifies every number
    if groups:
        doc.sections.append(summary_section(groups))
        versus = versus_section(groups)
        doc.sections += ([versus] if versus else []) + [tradeoff_section(groups),
                                                         modality_section(groups)]
        doc.sections += [s for s in [label_section(groups)] if s is not None]
        doc.sections += picture_sections(groups, generate)
        doc.sections += [federated_section(r) for r in collection.runs if r.federated]
        doc.sections.append(runs_section(collection.runs))
        warned = warnings_section(collection.runs)
        if warned:  # first, where a reader looks before trusting a number
            doc.sections.insert(0, warned)
    doc.sections += [results_section(r) for r in collection.results]
    if collection.notes or repeated:
        doc.sections.append(Section("Notes").add(
            *[Paragraph(n, note=True) for n in (*collection.notes, *repeated)]))
    return doc


def environment_note(runs: Sequence[Run]) -> str | None:
    """What differed between the environments that trained the runs (:func:`trainer`),
    and between those that evaluated them (code, torch, CPU, threads, device: the last digits of equal
    seeds differ with them), or None where they agree or runs do not say (written
    before it was recorded)."""
    parts = []
    for role, env_of in (("trained", trainer), ("evaluated", evaluator)):
        differ = differences((r.name, env_of(r)) for r in runs)
        parts += [f"{role} with {key} " + "; ".join(f"{value} ({_names(names)})"
                                                     for value, names in values.items())
                  for key, values in differ.items()]
    if not parts:
        return None
    sites = any(r.federated and r.environment for r in runs)
    return ("The runs were not all computed alike, so equal seeds need not give equal "
            "digits (README: What computed a number): " + " | ".join(parts) + "."
            + (" A federated run's sites trained it: each site's state file records its "
               "own host, the server's files only the server's." if sites else ""))


def evaluator(run: Run) -> dict | None:
    """The environment that evaluated ``run`` where that was not its trainer's process
    (mmvm evaluate, a federated server); a benchmark's row is said once, as trained."""
    apart = "trained" in run.environment or run.federated
    return run.environment.get("evaluated") if apart else None


def _names(names: Sequence[str], shown: int = 8) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _no_coherence(groups: Sequence[Group]) -> str:
    """Why no group has coherence: its runs were never evaluated, or were evaluated
    without it (no label column, no judges)."""
    runs = [r for g in groups for r in g.runs]
    unevaluated = [r.name for r in runs if r.metric_source == "not evaluated"]
    if len(unevaluated) == len(runs):
        return ("Coherence: not evaluated (no run here has an eval.json yet: "
                "mmvm evaluate --run RUN_DIR writes it).")
    return ("Coherence: not evaluated (no eval.json here has a coherence section: it "
            "needs a label column and the judges' modalities"
            + (f"; not evaluated at all: {', '.join(unevaluated[:4])}"
               f"{' ...' * (len(unevaluated) > 4)}" if unevaluated else "") + ").")


def _optional(groups: Sequence[Group], metrics: Sequence[str]) -> list[str]:
    """The metrics always shown, plus optional ones some group has."""
    always = ("probe", "coherence", "recon_nll")
    return [m for m in metrics if m in always or any(g.estimate(m) for g in groups)]


def probe_metric(runs: Sequence[Run]) -> str:
    names = {r.settings.get("eval.metric", "accuracy") for r in runs}
    return names.pop() if len(names) == 1 else "score"


def summary_section(groups: Sequence[Group]) -> Section:
    metrics = _optional(groups, list(METRICS))
    settings = any(g.settings or g.tag for g in groups)
    header = ["method", "beta"] + (["settings"] if settings else []) + ["runs (seeds)"]
    header += [METRICS[m][0] for m in metrics] + ["numbers from"]
    rows = []
    for g in groups:
        row = [g.method or "?", "?" if g.beta is None else f"{g.beta:g}"]
        row += [g.setting_text] if settings else []
        row += [g.seeds()] + [_cell(g, m) for m in metrics]
        row.append(", ".join(dict.fromkeys(r.metric_source for r in g.runs)))
        rows.append(row)
    metric = probe_metric([r for g in groups for r in g.runs])
    section = Section("Summary").add(Table(header, rows, caption=(
        f"One row per method, beta and settings. Probes: {metric}; reconstruction: "
        "lower is better. " + SE_NOTE)))
    variants = variants_of(groups)
    if variants:
        keys = list(dict.fromkeys(k for s in variants.values() for k in s))
        section.add(Table(["setting"] + [f"settings {v}" for v in variants],
                          [[k] + [s.get(k, "-") for s in variants.values()] for k in keys],
                          caption="The settings in which the groups differ (\"-\": "
                          "the run does not record it)."))
    return section


def _cell(g: Group, metric: str) -> str:
    """A summary cell; the chance level, a property of the test data, without an
    error bar where every seed saw the same ("0.341 ± 0.000" read as a measurement)."""
    est = g.estimate(metric)
    if metric == "chance" and est is not None and est.n > 1 and est.se == 0:
        return f"{fmt(est.mean)} (every seed)"
    return show(est, len(g.runs))


def tradeoff_section(groups: Sequence[Group]) -> Section:
    section = Section("Reconstruction vs representation and coherence")
    wanted = [("probe", "scatter-probe", "Reconstruction error vs latent probe: one "
               "point per method and beta (labels: beta), error bars ± standard error."),
              ("coherence", "scatter-coherence", "Reconstruction error vs coherence of "
               "conditional generations (m -> m', m != m').")]
    for metric, name, caption in wanted:
        png = scatter(groups, metric)
        section.add(Figure(name, png, caption) if png else Paragraph(
            f"Reconstruction vs {METRICS[metric][0]}: not drawn, no group has both "
            "numbers (not evaluated).", note=True))
    bars = coherence_bars(groups)
    section.add(Figure("coherence-bars", bars, "Coherence per method and beta (solid: "
                       "cross-modal, hatched: self; bars: ± standard error).") if bars
                else Paragraph(_no_coherence(groups), note=True))
    heat = coherence_heatmaps(groups)
    if heat:
        section.add(Figure("coherence-matrices", heat, "Coherence matrices, mean over "
                           "each group's seeds: row = source modality, column = the "
                           "modality generated from it."))
    with_matrix = sum(any(r.coherence_matrix for r in g.runs) for g in groups)
    if with_matrix > MAX_HEATMAPS:
        section.add(Paragraph(f"Coherence matrices of {with_matrix - MAX_HEATMAPS} "
                              "more groups left out (the summary table has their means).",
                              note=True))
    return section


def modality_section(groups: Sequence[Group]) -> Section:
    names = modality_names(groups)
    section = Section("Per modality")
    if not names:
        return section.add(Paragraph("No per-modality numbers in these runs.", note=True))
    rows = [[g.label, n, *(show(g.modality_estimate(n, m), len(g.runs))
                           for m in ("probe", "recon_nll", "imputed_nll", "recon_constant"))]
            for g in groups for n in names
            if any(n in r.per_modality for r in g.runs)]
    return section.add(Table(["group", "modality", "latent probe", "reconstruction NLL",
                              "imputed from the others: NLL", "NLL of a constant output"],
                             rows, caption="Each modality's own latent probe and test "
                             "reconstruction NLL; its NLL when it is left out and decoded "
                             "from the sample's other modalities (missing-modality "
                             "imputation); and the NLL of one constant output for every "
                             "sample (the training data's median or mean at each pixel or value: a "
                             "decoder that ignores its input). An imputation reads "
                             "between the constant (no information) and the "
                             "reconstruction (all of it). Mean ± standard error over "
                             "seeds."))


def label_section(groups: Sequence[Group]) -> Section | None:
    """Each label's probe per modality (``eval.labels``: MIMIC-CXR's findings), where
    the runs have them: the summary's probe is their mean, which hides a finding that
    no method reads, and one left out where it could not be scored."""
    names = sorted({m for g in groups for r in g.runs for m in r.per_label})
    if not names:
        return None
    labels = list(dict.fromkeys(c for g in groups for r in g.runs
                                for per in r.per_label.values() for c in per))
    rows = [[g.label, c, *(show(g.label_estimate(m, c), len(g.runs)) for m in names)]
            for g in groups for c in labels
            if any(c in r.per_label.get(m, {}) for r in g.runs for m in names)]
    metric = probe_metric([r for g in groups for r in g.runs])
    return Section("Per label").add(Table(
        ["group", "label", *names], rows[:MAX_TABLE_ROWS],
        caption=f"Each label column's latent probe ({metric}) per modality, mean ± "
                f"standard error over seeds. \"{NOT_EVALUATED}\": the label could not be "
                f"scored (one class in its train or test rows) and is left out of the "
                f"probe's mean."
                + (f" {len(rows) - MAX_TABLE_ROWS} more rows left out." if
                   len(rows) > MAX_TABLE_ROWS else "")))


def runs_section(runs: Sequence[Run]) -> Section:
    header = ["run", "kind", "method", "beta", "seed", "epoch", "probe", "coherence",
              "reconstruction NLL", "numbers from", "source"]
    rows = []
    for r in runs:
        cells = [r.metrics.get(m) for m in ("probe", "coherence", "recon_nll")]
        rows.append([r.name, r.kind, r.method or "?", _plain(r.beta), _plain(r.seed),
                     _plain(r.epoch)] + [NOT_EVALUATED if c is None else cell(c)
                                        for c in cells] + [r.metric_source, r.source])
    return Section("Runs").add(Table(header, rows, caption="Every run on its own."))


def warnings_section(runs: Sequence[Run]) -> Section | None:
    """What the evaluations said not to trust (a judge at chance, generations all
    one class, a probe left out): a number in a table does not say it. One line per
    kind of warning, with how often and in which runs (:func:`warning_kinds`)."""
    said = [(r.name, w) for r in runs for w in r.warnings]
    if not said:
        return None
    return Section("Warnings").add(*[Paragraph(line, note=True)
                                     for line in warning_kinds(said)])


def _plain(value) -> str:
    return "?" if value is None else f"{value:g}"


def cell(value) -> str:
    """A results-table cell: numbers rounded, lists and dicts as cut-short JSON."""
    v = number(value)
    if v is not None and not isinstance(value, dict):
        if v == int(v):
            return str(int(v))
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
    out = text(value)
    return out if len(out) <= 80 else out[:77] + "..."


def results_section(results: ResultsFile) -> Section:
    rows = results.rows[:MAX_TABLE_ROWS]
    columns = list(dict.fromkeys(str(k) for r in rows for k in r))
    shown = [c for c in columns if all(not isinstance(r.get(c), dict) or len(
        str(r.get(c))) < 200 for r in rows)][:MAX_TABLE_COLUMNS]
    section = Section(f"Benchmark table: {results.path}")
    if not rows:
        return section.add(Paragraph("The file lists no rows.", note=True))
    section.add(Table(shown, [[cell(r[c]) if c in r else "" for c in shown] for r in rows],
                      caption=f"The rows of {results.path.name} as the benchmark wrote "
                      "them."))
    cut = len(results.rows) - len(rows), len(columns) - len(shown)
    if any(cut):
        section.add(Paragraph(f"Left out: {cut[0]} rows and {cut[1]} columns (too many "
                              "or too large to show).", note=True))
    for path in results.images:
        section.add(embed(path, f"{path.name}, drawn by the benchmark (shipped with "
                          f"{results.path.name})"))
    return section
