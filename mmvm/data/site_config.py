"""A whole experiment config drafted from prepared site folders (``mmvm data config``).

Copying a shipped config and pasting the preparer's printed sections into it went
wrong for users: an image site pasted into ``polymnist_cpu.toml`` got ``res_image``
at its default width with that config's beta and latent size, and a first epoch's
regulariser of 3.4 million; mixed vector and image data had no template at all. Here
the modalities come from the files (kind, shape, a network that takes the shape,
counts or not), the training and evaluation settings from the shipped config made for
data of that kind (:func:`base_for`), and the settings a small table needs (a batch
that gives several steps an epoch, judges trained long enough) are set from the row
count. The draft is checked by the same loader that ``mmvm train`` uses.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# the shipped config for data of each kind: image size -> config; no image: vectors
IMAGE_BASES = {224: "mimic_cxr.toml", 64: "mimic_cxr_64.toml", 28: "polymnist_cpu.toml"}
VECTOR_BASE = "hippocampus.toml"
VECTOR_DEFAULTS = {"width": 0, "layers": 2}  # hidden units = input size (the paper's MLP)
MIN_STEPS = 8  # optimiser steps an epoch a small table's batch size leaves at least
JUDGE_SAMPLES = 10_000  # samples a coherence judge sees in training, at least


@dataclass
class Draft:
    raw: dict  # the config as a TOML table
    base: Path
    notes: list[str] = field(default_factory=list)


@dataclass
class Modality:
    name: str
    kind: str
    shape: list[int]
    counts: bool


def shipped_config(name: str) -> Path:
    """A config the project ships (``configs/<name>``), from the working directory's
    checkout or beside the installed package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "configs" / name).is_file():
            return root / "configs" / name
    raise FileNotFoundError(f"configs/{name}: not found here or beside the mmvm package; "
                            f"give --base")


def site_modalities(folders: Sequence[Path]
                    ) -> tuple[dict[str, Modality], int, list[list[str]]]:
    """The modalities the folders' ``train.parquet`` files hold, the most training rows
    of any folder, and each folder's label columns."""
    import pyarrow.parquet as pq

    from mmvm.data.labels import all_label_columns
    from mmvm.data.store import DataError, read_site_meta

    found: dict[str, Modality] = {}
    rows, files = 0, []
    for folder in folders:
        path = Path(folder) / "train.parquet"
        if not path.is_file():
            raise DataError(f"{folder}: no train.parquet (prepare the site's data first: "
                            f"mmvm data prepare ... --out {folder})")
        meta = read_site_meta(path)
        counted = set((meta.get("dataset") or {}).get("counts") or [])
        for m, t in meta["tensors"].items():
            shape = [int(v) for v in t["shape"]]
            image = t["dtype"] == "uint8" and len(shape) == 3 and shape[0] in (1, 3)
            new = Modality(m, "image" if image else "vector", shape, m in counted)
            if m in found and found[m].shape != shape:
                raise DataError(f"modality {m!r} is {found[m].shape} at one folder and "
                                f"{shape} in {path}: sites that hold one modality must "
                                f"prepare it alike")
            found.setdefault(m, new)
        rows = max(rows, pq.ParquetFile(path).metadata.num_rows)
        files.append(path)
    return found, rows, [all_label_columns([f]) for f in files]


def base_for(mods: dict[str, Modality]) -> Path:
    """The shipped config made for such data: the largest image size's, else vectors'."""
    sizes = [m.shape[-1] for m in mods.values() if m.kind == "image"]
    return shipped_config(IMAGE_BASES.get(max(sizes), IMAGE_BASES[64]) if sizes
                          else VECTOR_BASE)


def network_for(m: Modality) -> str:
    """The first network that takes the shape: the kind's default, then the preparer's
    preferred ones; none: an error naming what each takes."""
    from mmvm.data.prepare.snippet import PREFERRED
    from mmvm.data.store import DataError
    from mmvm.networks import DEFAULT_NETWORK, available_networks, get_network

    names = dict.fromkeys([DEFAULT_NETWORK[m.kind], *PREFERRED.get(m.kind, ()),
                           *available_networks(m.kind)])
    fits = [n for n in names if get_network(n).accepts(tuple(m.shape))]
    if not fits:
        takes = "; ".join(f"{n} takes {get_network(n).takes}" for n in names)
        raise DataError(f"modality {m.name!r} {m.shape}: no {m.kind} network takes it "
                        f"({takes})")
    return fits[0]


def modality_table(m: Modality, base_mods: dict) -> dict:
    """``[model.modalities.<m>]``: the base's settings for a modality of its kind and
    network (width, likelihood, scale), the files' kind and shape."""
    net = network_for(m)
    alike = [b for b in base_mods.values() if b.get("kind") == m.kind]
    template = next((b for b in alike if b.get("network", "") == net), None) or \
        (alike[0] if alike else VECTOR_DEFAULTS)
    table = {k: v for k, v in template.items() if k not in ("kind", "shape", "network")}
    table = {"kind": m.kind, "shape": m.shape, "network": net, **table}
    if m.kind == "vector":
        table.setdefault("likelihood", "mse")
        if m.counts:
            table["likelihood"] = "poisson"  # counts as counts (the paper's: mse)
        for k, v in VECTOR_DEFAULTS.items():
            table.setdefault(k, v)
    return table


def draft_config(folders: Sequence[str | os.PathLike], base: str | os.PathLike | None,
                 name: str) -> Draft:
    """The config for training on ``folders`` (joined by sample id), named ``name``
    (its run folder ``runs/<name>``), from ``base`` or the shipped config for the data."""

    folders = [Path(f).resolve() for f in folders]
    again = sorted({str(f) for f in folders if folders.count(f) > 1})
    if again:  # a config listing it twice trained on nothing of the sites left out
        raise ValueError(f"{again[0]} is given twice; give each site folder once")
    mods, rows, held = site_modalities(folders)
    base_path = Path(base) if base else base_for(mods)
    raw = _base_config(base_path)
    notes: list[str] = []
    base_mods = raw.get("model", {}).get("modalities", {})
    model = {**raw.get("model", {}),
             "modalities": {m.name: modality_table(m, base_mods) for m in mods.values()}}
    kept = {k: v for k, v in model.items() if k not in ("modalities", "method")}
    if kept:  # the base's model settings, tuned for its data: said, not hidden
        notes.append(f"[model] {', '.join(f'{k} = {v}' for k, v in sorted(kept.items()))} "
                     f"from {base_path.name}; tune them for your data (e.g. a larger "
                     f"latent_dim)")
    out = {"data": data_table(raw.get("data", {}), folders, held, notes), "model": model,
           "train": train_table(raw.get("train", {}), rows, name, notes)}
    evals = eval_table(raw.get("eval", {}), rows,
                       list(dict.fromkeys(c for cols in held for c in cols)), notes)
    return Draft(out | ({"eval": evals} if evals else {}), base_path, notes)


def _base_config(path: Path) -> dict:
    """The base config's TOML, checked as a config of its own first: its errors name
    it, not the draft they would otherwise be found in."""
    import tomllib

    from mmvm.config import ConfigError, config_from_dict

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as err:
        raise ConfigError(f"--base {path}: {err.strerror or err}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--base {path}: not a TOML config ({err})") from None
    config_from_dict(raw, source=str(path))
    return raw


def data_table(base: dict, folders: list[Path], held: list[list[str]],
               notes: list) -> dict:
    """``[data]``: the folders joined by sample id under their common parent, every
    row, and a label column (``label``, else the first) that every folder holds (each
    site's probe and judge read it in a federated run), else any, said."""
    root = Path(os.path.commonpath([f.parent for f in folders]))
    data = {**base, "root": str(root), "max_train": 0, "max_test": 0,
            "folders": [str(f.relative_to(root)) for f in folders]}
    labels = list(dict.fromkeys(c for cols in held for c in cols))
    common = [c for c in labels if all(c in cols for cols in held)]
    if labels and not common:
        notes.append("warning: no label column is held by every folder ("
                     + "; ".join(f"{f.name}: {', '.join(c) or 'none'}"
                                 for f, c in zip(folders, held, strict=True))
                     + "): in a federated run a site without data.label gets no probe "
                       "and no judge; name the label alike (prepare ... --label "
                       "NAME=COLUMN)")
    labels = common or labels
    if not labels:  # the base's own column (label.no_finding) would be refused
        data.pop("label", None)
        notes.append("the files hold no label column: training needs none, probes and "
                     "coherence do (mmvm data prepare ... --label)")
        return data
    data["label"] = "label" if "label" in labels else labels[0]
    if len(labels) > 1:
        notes.append(f"data.label = {data['label']!r}: the probes' label; the files also "
                     f"hold {', '.join(c for c in labels if c != data['label'])} "
                     f"(eval.labels = [...] probes each)")
    return data


def train_table(base: dict, rows: int, name: str, notes: list) -> dict:
    """``[train]``: the base's, its run folder named, and a batch that gives at least
    :data:`MIN_STEPS` steps an epoch over ``rows``."""
    train = {**base, "out_dir": f"runs/{name}"}
    batch = int(train.get("batch_size", 128))
    if rows // batch < MIN_STEPS:
        train["batch_size"] = max(4, 2 ** int(math.log2(max(rows // MIN_STEPS, 1))))
        notes.append(f"train.batch_size = {train['batch_size']} (the base's {batch} would "
                     f"give {rows // batch or 'under 1'} steps an epoch over {rows} rows)")
    return train


def eval_table(base: dict, rows: int, labels: list[str], notes: list) -> dict:
    """``[eval]``: the base's, without label columns the files lack, and judges
    trained on at least :data:`JUDGE_SAMPLES` samples' worth of epochs."""
    evals = dict(base)
    if "labels" in evals:  # the base's own label columns (MIMIC-CXR's 14 findings)
        evals["labels"] = [c for c in evals["labels"] if fnmatch.filter(labels, c)]
        if not evals["labels"]:
            del evals["labels"]
            evals.pop("metric", None)  # its per-finding AUROC: accuracy, the default
    judge = math.ceil(JUDGE_SAMPLES / max(rows, 1))
    if judge > int(evals.get("classifier_epochs", 3)):
        evals["classifier_epochs"] = min(judge, 50)
        notes.append(f"eval.classifier_epochs = {evals['classifier_epochs']} (coherence "
                     f"judges trained on {rows} rows need more epochs than the base's)")
    return evals
