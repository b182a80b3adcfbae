"""The report's pictures of runs: generation grids, latents and training curves.

One generation grid and one latent plot per group (its first run that has one: the
seeds of a group look alike). Existing ``generations.png`` / ``latents.png`` of the
run folders are embedded; with ``--generate`` a group without one gets it drawn from
its checkpoint (:mod:`mmvm.reporting.generate`), provided the data is reachable.
Otherwise the section says what is missing and how to get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mmvm.metrics_csv import read_metrics
from mmvm.plots import curve_axis
from mmvm.reporting.document import Block, Figure, Paragraph, Section
from mmvm.reporting.figures import curves as draw_curves
from mmvm.reporting.generate import Loaded, NotGenerated, generations, latents, load
from mmvm.reporting.media import read_png
from mmvm.reporting.runs import Run
from mmvm.reporting.stats import Group

CURVE_KEYS = ("loss", "rec_nll", "reg")


def slug(text: str) -> str:
    """A file-name stem from any string: letters, digits and dashes."""
    out = "".join(c if c.isascii() and c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in out.split("-") if p)[:60] or "figure"


def embed(path: Path, caption: str) -> Block:
    data, why = read_png(path)
    if data is None:
        return Paragraph(f"{caption}: left out, {why}.", note=True)
    return Figure(slug(f"{path.parent.name}-{path.stem}"), data, caption)


class Drawer:
    """Pictures drawn from checkpoints, each run's model loaded at most once."""

    def __init__(self) -> None:
        self.loaded: dict[str, Loaded | NotGenerated] = {}

    def draw(self, run: Run, kind: str) -> bytes:
        if run.source not in self.loaded:
            try:
                self.loaded[run.source] = load(run)
            except NotGenerated as err:
                self.loaded[run.source] = err
        got = self.loaded[run.source]
        if isinstance(got, NotGenerated):
            raise got
        try:
            if kind == "generations":
                return generations(got)
            return latents(got, f"{run.name} ({got.method})")
        except (RuntimeError, ValueError, IndexError) as err:  # model and data disagree
            raise NotGenerated(f"drawing failed ({err})") from None


def _group_picture(group: Group, kind: str, drawer: Drawer | None) -> tuple[Block | None, str]:
    """The group's picture of ``kind``, or None and why there is none."""
    reasons = []
    for run in group.runs:
        if kind in run.images:
            data, why = read_png(run.images[kind])
            if data is not None:
                return Figure(slug(f"{run.name}-{kind}"), data,
                              f"{group.label}: {kind} of run {run.name}"), ""
            reasons.append(f"{run.name}: {why}")
    if not any(r.folder for r in group.runs):
        return None, "results rows only (no run folder)"
    if drawer is None:
        if kind == "generations" and not reasons and all(map(_no_images, group.runs)):
            return None, ("its modalities are no images (vectors, tokens), which mmvm "
                          "evaluate pictures by their latents, not as generations "
                          "(--generate draws them anyway)")
        found = "; ".join(reasons) or f"no {kind}.png in its run folders"
        return None, f"{found} (--generate draws one)"
    for run in (r for r in group.runs if r.checkpoint):
        try:
            png = drawer.draw(run, kind)
        except NotGenerated as err:
            reasons.append(f"{run.name}: {err}")
            continue
        return Figure(slug(f"{run.name}-{kind}"), png,
                      f"{group.label}: {kind} drawn from the checkpoint of {run.name}"), ""
    return None, "; ".join(reasons) or "no checkpoint.pt in its run folders"


def _no_images(run: Run) -> bool:
    """Whether the run's config names modalities, none of them an image (vectors,
    tokens): mmvm evaluate draws generations.png only for images."""
    kinds = [v for k, v in run.settings.items()
             if k.startswith("model.modalities.") and k.endswith(".kind")]
    return bool(kinds) and all(v != "image" for v in kinds)


def picture_section(title: str, kind: str, groups: Sequence[Group],
                    drawer: Drawer | None, intro: str) -> Section:
    section = Section(title).add(Paragraph(intro))
    missing: dict[str, list[str]] = {}  # why -> groups
    for group in groups:
        block, why = _group_picture(group, kind, drawer)
        if block is None:
            missing.setdefault(why, []).append(group.label)
        else:
            section.add(block)
    for why, labels in missing.items():
        section.add(Paragraph(f"Not shown for {', '.join(labels)}: {why}.", note=True))
    return section


def picture_sections(groups: Sequence[Group], draw: bool) -> list[Section]:
    drawer = Drawer() if draw else None
    return [
        picture_section("Generation grids", "generations", groups, drawer,
                        "Per source modality: the input row, then each modality "
                        "generated from it (one grid per group, from its first run)."),
        picture_section("Latent representations", "latents", groups, drawer,
                        "Posterior means of test samples in two dimensions (first two "
                        "principal components when the latent is larger), coloured by "
                        "label."),
        curves_section(groups),
    ]


def curves_section(groups: Sequence[Group]) -> Section:
    """Training curves, one figure per method (a line per run); a run whose
    metrics.csv cannot be read is named in a note and left out of its figure."""
    section = Section("Training curves")
    by_method: dict[str, list[Run]] = {}
    for g in groups:
        by_method.setdefault(g.method or "?", []).extend(r for r in g.runs if r.metrics_csv)
    for method, runs in by_method.items():
        readable, cols, tables = [], set(), []
        for run in runs:
            try:
                tables.append(read_metrics(run.metrics_csv))
                cols |= set(tables[-1])
            except (ValueError, OSError) as err:
                section.add(Paragraph(f"{method}: {run.name}'s metrics.csv is left out: "
                                      f"{err}.", note=True))
                continue
            readable.append(run)
        keys = [k for k in CURVE_KEYS if k in cols]
        if not (readable and keys):
            continue
        try:
            png = draw_curves([r.metrics_csv for r in readable],
                              [r.name[:30] for r in readable], keys)
        except (ValueError, KeyError) as err:  # e.g. a metrics.csv without epochs
            section.add(Paragraph(f"{method}: no training curves ({err}).", note=True))
            continue
        section.add(Figure(slug(f"curves-{method}"), png,
                           f"{method}: {', '.join(keys)} per "
                           + ("optimiser step (a federated run's row per window)"
                              if curve_axis(tables) == "step" else "epoch")
                           + ", one line per run."))
    if not section.blocks:
        section.add(Paragraph("No metrics.csv in these runs.", note=True))
    return section
