"""Inputs for the report tests (evaluated run folders as ``evaluate_run`` writes them)
and a reader of the page they make: tags closed in order, tables, embedded pictures."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import statistics
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from mmvm.cli import main

ROOT = Path(__file__).resolve().parents[2]
POLYMNIST = str(ROOT / "configs" / "polymnist.toml")
NAMES = ["m0", "m1", "m2"]
PROBES = {"mmvm": [0.5, 0.6, 0.7], "poe": [0.30, 0.35, 0.40]}
RECON = {"mmvm": [100.0, 110.0, 120.0], "poe": [90.0, 95.0, 97.0]}
COHERENCE = {"mmvm": [0.40, 0.45, 0.50], "poe": [0.20, 0.22, 0.30]}
VOID = {"meta", "img", "br", "hr", "link", "input"}


# ------------------------------------------------------------------ inputs
def eval_result(method, seed, probe, recon, coh) -> dict:
    pairs = {f"{a}->{b}": coh for a in NAMES for b in NAMES}
    return {"method": method, "beta": 1.0, "alpha": 0.0, "latent_dim": 8, "seed": seed,
            "n_probe_train": 100, "n_test": 50, "probe_metric": "accuracy",
            "probe": {**{m: probe for m in NAMES}, "mean": probe, "all": probe - 0.05},
            "probe_aggregated": {**{m: probe for m in NAMES}, "mean": probe + 0.01},
            "reconstruction": {"per_modality": {m: recon / 3 for m in NAMES},
                               "total": recon},
            "coherence": {"pairs": pairs, "matrix": [[coh] * 3 for _ in NAMES],
                          "names": NAMES, "mean": coh, "self": coh + 0.1},
            "classifier_accuracy": {m: 0.9 for m in NAMES},
            "a_key_from_a_newer_version": {"nested": [1, 2, 3]}}


def fake_run(folder: Path, result: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(result))
    config = {"model": {"method": result["method"], "latent_dim": 8},
              "train": {"beta": result["beta"], "seed": result["seed"], "epochs": 3}}
    (folder / "config.json").write_text(json.dumps(config))
    rows = [{"epoch": e, "step": 3 * e, "loss": 200 - 10 * e, "rec_nll": 190 - 10 * e,
             "reg": 10.0, "alpha": 0.0, "seconds": 1.0} for e in (1, 2, 3)]
    with open(folder / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


# ------------------------------------------------------------------ reading the page
class Page(HTMLParser):
    """Checks that every opened tag is closed in order; keeps tables and images."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def write_report(tmp_path, *inputs, extra=()) -> tuple[str, Page]:
    out = tmp_path / "report.html"
    assert main(["report", *map(str, inputs), "--out", str(out), *extra]) == 0
    text = out.read_text()
    page = Page(text)
    assert page.errors == [] and page.stack == []
    return text, page


def summary_row(page: Page, method: str, runs: str = "") -> dict[str, str]:
    """The summary row of ``method`` whose "runs (seeds)" starts with ``runs``."""
    header, *rows = page.tables[0]
    found = [dict(zip(header, r, strict=True)) for r in rows if r[0] == method]
    return next(r for r in found if r["runs (seeds)"].startswith(runs))


def mean_se(values) -> str:
    return f"{statistics.mean(values):.3f} ± " \
           f"{statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def decoded(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):])))
    image.load()
    return image
