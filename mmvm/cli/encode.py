"""mmvm encode: a dataset's latent representation, as one Parquet table.

From a trained run (--run: a centralized run, or a federated run's folder with the
assembled model) or, after a federated run, from one site's own encoders
(--site-state <state>/run-<id>/<site>.pt with the run's --config and --set
overrides; after a resumed run, <id> is the first run's): per sample sample_id,
mu.<m> and logvar.<m> for each modality the data holds (null where a sample lacks
it) and every label column of the data (label, label.<name>; null where unknown),
joined by sample id. Nothing leaves the machine; the output is written atomically,
as Parquet (a CSV cannot hold the per-modality vectors; read it with
pyarrow.parquet.read_table(...), installed with mmvm, or any Parquet reader).

    mmvm encode --run runs/polymnist-mmvm data/polymnist/test.parquet --out latents.parquet
    mmvm encode --site-state /var/lib/mmvm/hospital-a/run-7/hospital-a.pt \\
        --config configs/mimic_cxr_64.toml /srv/mmvm/mimic/frontal/train.parquet \\
        --out frontal-latents.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmvm.cli import add_config_arguments
from mmvm.cli.outputs import check_file_out, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "encode", help="write each sample's latent posterior (mu, logvar) to Parquet",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="a run folder with checkpoint.pt")
    src.add_argument("--site-state", metavar="FILE",
                     help="a site's <site>.pt after a federated run (needs --config)")
    p.add_argument("data", nargs="+", metavar="FILE",
                   help="site .parquet files (several are joined by sample id)")
    p.add_argument("--out", required=True,
                   help="output .parquet file: new, or an earlier mmvm encode output "
                   "(never a site's data file)")
    add_config_arguments(p, None)
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda | mps (default: auto, CUDA when present, as "
                   "train.device)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="samples per forward pass (default %(default)s)")
    p.add_argument("--no-progress", "--quiet", action="store_true",
                   help="no progress bar (--quiet, as mmvm data takes it)")
    p.set_defaults(func=_encode)


def _model(args: argparse.Namespace, device: str):
    """The model on ``device``, its config (``[data]``: label column, streaming) and
    where it came from."""

    from mmvm.config import config_from_dict, load_config
    from mmvm.finite import nonfinite_tensor
    from mmvm.training import build_model, load_trained_model

    if args.run:
        if args.config or args.overrides:
            raise ValueError("--run takes the model and its config from the run's "
                             "checkpoint; --config/--set are for --site-state")
        if not (Path(args.run) / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"no checkpoint.pt in {args.run}" if Path(args.run)
                                    .is_dir() else f"--run {args.run}: no such folder")
        model, state = load_trained_model(args.run, device=device)
        raw = {k: v for k, v in state["config"].items() if k != "source"}
        return model, config_from_dict(raw, source=str(args.run)), {
            "run": str(args.run), "epoch": state.get("epoch")}
    if not args.config:
        raise ValueError("--site-state needs --config (and the run's --set overrides): "
                         "the state file holds weights, not the model's shapes")
    cfg = load_config(args.config, args.overrides)
    state = _site_state(Path(args.site_state))
    names = [str(n) for n in state["names"]]
    ours = [m.name for m in cfg.model.modalities]
    if not names or not set(names) <= set(ours):
        raise ValueError(f"{args.site_state}: the state holds modalities {names}, the "
                         f"config {args.config} has {ours}; give the run's --config and "
                         f"--set")
    try:
        model = build_model(cfg, names)  # a state from before attach holds no weights:
        weights = state.get("model")  # they are the seed's, as built here (untrained)
        why = _unlike(model.state_dict(), weights) if weights is not None else ""
        if weights is not None and not why:
            model.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        why = f"{type(err).__name__}: {str(err)[:300]}"
    if why:
        raise ValueError(f"{args.site_state}: not a site state of this config's model "
                         f"({why}); give the run's --config and --set") from None
    bad = nonfinite_tensor(model.state_dict())
    if bad:
        raise ValueError(f"{args.site_state}: the site's weight {bad}; its training "
                         "diverged before the state was written")
    return model.to(device), cfg, {
        "site_state": str(args.site_state), "config": str(args.config),
        "overrides": list(args.overrides), "windows_done": state.get("windows_done")}


def _unlike(ours: dict, theirs) -> str:
    """How a state dict differs from the model's: its first tensor of another shape,
    or the names one has and the other lacks; "" when they fit."""
    if not isinstance(theirs, dict):
        return "its model is not a state dict"
    for name, want in ours.items():
        got = theirs.get(name)
        if got is not None and tuple(getattr(got, "shape", ())) != tuple(want.shape):
            return (f"{name} is {list(got.shape)} in the state, {list(want.shape)} in "
                    f"the config's model")
    lacking, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    return "; ".join([f"the state lacks {', '.join(lacking[:3])}"] * bool(lacking)
                     + [f"the config's model has no {', '.join(map(str, extra[:3]))}"]
                     * bool(extra))


def _site_state(path: Path) -> dict:
    """A site's ``<site>.pt``, loaded as plain tensors and values (weights_only)."""
    from mmvm.checkpoint import load_torch

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such site state file (a site keeps it as "
                                f"<state>/run-<id>/<site>.pt)")
    try:
        state = load_torch(path)  # its bytes checked against their CRCs
    except Exception as err:  # noqa: BLE001 - not a torch file, or not plain values
        raise ValueError(f"{path}: not a readable state file ({type(err).__name__}: "
                         f"{str(err)[-100:]}); a "
                         f"site keeps its state as <state>/run-<id>/<site>.pt") from None
    if not isinstance(state, dict) or not {"names", "model"} <= set(state):
        run = isinstance(state, dict) and "config" in state
        raise ValueError(f"{path}: not a site's state" + (
            " but a run's checkpoint: use --run with its folder" if run else ""))
    return state


def _encode(args: argparse.Namespace) -> int:
    from mmvm.data import check_data_fits, open_dataset
    from mmvm.data.groups import read_groups
    from mmvm.data.label_names import label_names_for
    from mmvm.finite import finite_latents
    from mmvm.latents import data_labels, latent_table, write_latents
    from mmvm.progress import progress_bar
    from mmvm.training import resolve_device

    _check_out(args.out, args.data)
    device = str(resolve_device(args.device))
    model, cfg, source = _model(args, device)
    if source.get("windows_done") == 0:  # saved at attach, before any training
        print(f"mmvm encode: note: {args.site_state} has trained no window yet: these "
              f"are the latents of its initial weights", file=sys.stderr)
    # a file of another image size or vocabulary: refused from its metadata, naming it
    check_data_fits([s for s in cfg.model.modalities if s.name in model.names],
                    args.data, cfg.source)
    # the config's reader: data.streaming reads row groups on demand (large data)
    data = open_dataset(args.data, None, cfg.data)
    labels = data_labels(args.data, data.sample_ids)
    where = str(Path(args.run) / "checkpoint.pt") if args.run else str(args.site_state)
    with progress_bar(not args.no_progress) as bar, finite_latents(model, where):
        task = bar.add_task("encoding", total=len(data))
        table = latent_table(model, data, args.batch_size, device,
                             step=lambda done, total: bar.update(task, completed=done),
                             labels=labels, groups=read_groups(args.data, data.sample_ids))
    named = {c: names for c in labels if (names := label_names_for(args.data, c))}
    meta = {**source, "data": [str(p) for p in args.data],
            "latent_dim": model.latent_dim, "modalities": model.names,
            "labels": list(labels), "label_names": named}
    out = write_latents(args.out, table, meta)
    held = [c.split(".", 1)[1] for c in table.column_names if c.startswith("mu.")]
    counts = ", ".join(f"{m} {table.column(f'mu.{m}').length() - table.column(f'mu.{m}').null_count:,}"
                       for m in held)
    print(f"wrote {out}: {table.num_rows:,} samples, latent {model.latent_dim}; "
          f"encoded per modality: {counts}")
    return 0


def _check_out(out: str, data: list[str]) -> None:
    """--out must be a .parquet file (the table is Parquet whatever its name), no data
    file, and new or an earlier ``mmvm encode`` output: never a site's data."""
    path = check_file_out(
        out, (".parquet", ".pq"), "Parquet (a CSV cannot hold the per-modality "
        "vectors; read it with pyarrow.parquet.read_table)", data, writer="mmvm encode")
    if path.exists():
        _refuse_foreign(path)


def _refuse_foreign(path: Path) -> None:
    """Refuse an existing ``path`` that is not an earlier output (``mmvm.latents`` in
    its schema metadata), naming a site data file (``mmvm.tensor.*`` keys) as such."""
    import pyarrow.parquet as pq

    from mmvm.data.store_format import TENSOR_KEY
    from mmvm.latents import LATENTS_KEY

    try:
        keys = set(pq.read_schema(path).metadata or {})
    except Exception:  # noqa: BLE001 - whatever it holds, it is not ours to replace
        keys = set()
    if any(k.startswith(TENSOR_KEY.encode()) for k in keys):
        raise ValueError(f"--out {path}: is a site data file (its schema has "
                         f"{TENSOR_KEY}* keys); write the latents elsewhere")
    if LATENTS_KEY not in keys:
        raise ValueError(f"--out {path}: exists and is not an earlier mmvm encode "
                         f"output (no {LATENTS_KEY.decode()} metadata); write the "
                         f"latents elsewhere, or remove it first")
