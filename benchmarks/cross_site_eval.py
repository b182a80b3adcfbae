"""Cross-site evaluation against the server's evaluation of the collected model.

A plaintext run whose sites keep their weights (or a deployment whose server holds no
data) gets coherence and imputation only from the cross-site evaluation: each site
scores its own modalities from the other sites' test posteriors
(:mod:`mmvm.federation.cross_eval`). Do those numbers read like the ones a central
evaluation of the same weights gives? Per training seed, one federated run (in
process, exact windows, the sites' test files) is scored both ways: the cross-site
numbers of the run, and ``evaluate_run`` on the collected model with the joined data
(judges trained on the joined train split; the sites' judges on their own files).

    python benchmarks/cross_site_eval.py                       # hippocampus, ~6 min
    python benchmarks/cross_site_eval.py --config configs/polymnist_cpu.toml --epochs 4
    python benchmarks/cross_site_eval.py --secure psi          # test sets by PSI ring

``--secure pseudonym|psi`` runs the sites over sealed channels (generated keys, state
in a temporary folder): test ids travel as keyed pseudonyms or PSI tags, test
posteriors sealed to peers (:mod:`mmvm.federation.sealed_heldout`). The table also
gives what the evaluation's messages cost (heldout and evaluate: seconds, payload
bytes), which is where the modes differ.

The table: mean ± standard error over seeds of each reading, and of their paired
difference. Coherence differs by the judges (one per site against one on joined
data) and both readings by their draws of z; with ``--mode mean`` the imputation
must agree to float precision (the tests check that on PolyMNIST).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmvm.classifiers import classifiers_for  # noqa: E402
from mmvm.config import load_config  # noqa: E402
from mmvm.data.dataset import MultimodalDataset  # noqa: E402
from mmvm.data.default import ensure_default_sites  # noqa: E402
from mmvm.data.hippocampus_knobs import parse_knobs  # noqa: E402
from mmvm.evaluation import evaluate_run  # noqa: E402
from mmvm.federation.channel import PlainChannel  # noqa: E402
from mmvm.federation.endpoint import Endpoint  # noqa: E402
from mmvm.federation.local import LocalTransport  # noqa: E402
from mmvm.federation.loop import run_federation  # noqa: E402
from mmvm.federation.messages import SiteFailure, payload_bytes  # noqa: E402
from mmvm.federation.sealed_channel import SealedChannel  # noqa: E402
from mmvm.federation.settings import settings_for  # noqa: E402
from mmvm.federation.site import Site  # noqa: E402
from mmvm.help_format import DefaultsHelp  # noqa: E402
from mmvm.jsonfile import json_bytes  # noqa: E402
from mmvm.provenance import environment  # noqa: E402
from mmvm.reporting.stats import estimate  # noqa: E402
from mmvm.secure.keys import SiteKeys  # noqa: E402
from mmvm.secure.session import SiteSecrets  # noqa: E402
from mmvm.training import build_model  # noqa: E402

READINGS = ("coherence", "imputation")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelp)
    p.add_argument("--config", default=str(ROOT / "configs/hippocampus.toml"),
                   help="experiment config")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override section.key=value (repeatable)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--n-train", type=int, default=3000, help="PolyMNIST: training samples")
    p.add_argument("--n-test", type=int, default=1000, help="PolyMNIST: test samples")
    p.add_argument("--data-variant", default="soft",
                   help="PolyMNIST look-alike: soft | untranslated | translated")
    p.add_argument("--hippocampus", default="dense", type=parse_knobs,
                   help="hippocampus look-alike: default | dense | knobs")
    p.add_argument("--exchange", default="round", help="the run's exchange period")
    p.add_argument("--mode", default="draw", choices=("draw", "mean"),
                   help="cross-eval: one draw of z (as mmvm evaluate) or the means")
    p.add_argument("--secure", default="off", choices=("off", "pseudonym", "psi"),
                   help="plaintext sites, or sealed ones aligned by keyed pseudonyms or PSI")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds")
    p.add_argument("--data-dir", default=str(ROOT / "data"), help="data folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/cross_site_eval"),
                   help="results folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_config(args.config, args.overrides + [f"train.epochs={args.epochs}",
                                                      "train.device=cpu"])
    names = [m.name for m in base.model.modalities]
    sites, files = ensure_default_sites(args.data_dir, "vertical", n_train=args.n_train,
                                        n_test=args.n_test, seed=base.train.seed,
                                        modalities=tuple(names),
                                        variant=args.data_variant,
                                        hippocampus=args.hippocampus)
    full = Path(files[sites[0].name]["train"]).parents[2]
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, root=str(full)))
    train_set = MultimodalDataset.from_parquet(full / "train.parquet", names, cfg.data.label)
    test_set = MultimodalDataset.from_parquet(full / "test.parquet", names, cfg.data.label)
    print(f"data: {len(train_set)} train / {len(test_set)} test at {full}", flush=True)
    clfs = classifiers_for(cfg)
    rows = [run_seed(args, cfg, seed, sites, files, train_set, test_set, clfs)
            for seed in args.seeds]
    summary = {k: _estimate(rows, k) for k in rows[0] if k != "seed"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(json_bytes(
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
         "summary": summary, "environment": environment()}, indent=2))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(markdown(summary, len(rows)))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def run_seed(args, cfg0, seed, sites, files, train_set, test_set, clfs) -> dict:
    cfg = dataclasses.replace(cfg0, train=dataclasses.replace(cfg0.train, seed=seed))
    t0 = time.perf_counter()
    secure = {} if args.secure == "off" else {"secure": True, "align": args.secure}
    settings = settings_for(cfg, exchange=args.exchange, collect_model=True,
                            cross_eval=args.mode, **secure)
    paths = {s.name: (files[s.name]["train"], files[s.name]["test"]) for s in sites}
    with tempfile.TemporaryDirectory() as state:
        transport = Counting(_endpoints(settings, paths, args.secure, Path(state)))
        res = run_federation(transport, settings)
    model = build_model(cfg)
    model.load_state_dict({n: torch.as_tensor(v) for n, v in res.model_state.items()})
    ev = evaluate_run(cfg, model.eval(), train_set, test_set, clfs)
    cross = res.cross_site
    row = {"seed": seed,
           "coherence_central": ev.get("coherence", {}).get("mean", float("nan")),
           "coherence_cross": cross.get("coherence", {}).get("mean", float("nan")),
           "imputation_central": ev["imputation"]["total"],
           "imputation_cross": cross["imputation"]["total"],
           "eval_seconds": round(transport.seconds, 2), "eval_bytes": transport.bytes,
           "seconds": round(time.perf_counter() - t0, 1)}
    for k in READINGS:
        row[f"{k}_diff"] = row[f"{k}_cross"] - row[f"{k}_central"]
    print(seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
    return row


class Counting(LocalTransport):
    """Endpoints in this process; seconds and payload bytes of the evaluation's
    messages (heldout, evaluate), which the run's ``bytes_total`` leaves out."""

    seconds, bytes = 0.0, 0

    def exchange(self, requests, wait=None, need=1):
        t0 = time.perf_counter()
        out = super().exchange(requests, wait, need)
        if next(iter(requests.values())).kind in ("heldout", "evaluate"):
            self.seconds += time.perf_counter() - t0
            self.bytes += sum(payload_bytes(m) for m in (*requests.values(),
                                                          *out.values())
                              if not isinstance(m, SiteFailure))
        return out


def _endpoints(settings, paths: dict, secure: str, state: Path) -> dict:
    sites = {name: Site(settings.experiment, name, train, test,
                        overlap=settings.decode_ahead and secure == "off")
             for name, (train, test) in paths.items()}
    if secure == "off":
        return {name: Endpoint(site, PlainChannel()) for name, site in sites.items()}
    keys = {name: SiteKeys.generate(name) for name in sites}
    directory = {name: k.public for name, k in keys.items()}
    return {name: Endpoint(site, SealedChannel(SiteSecrets(
        keys[name], directory, "1", state / "run-1"), align=secure))
        for name, site in sites.items()}


def _estimate(rows: list[dict], key: str) -> dict:
    est = estimate(r[key] for r in rows)
    return {"mean": est.mean, "se": est.se or 0.0} if est else {}


def markdown(summary: dict, seeds: int) -> str:
    def pm(key: str, d: int) -> str:
        s = summary[key]
        return f"{s['mean']:.{d}f} ± {s['se']:.{d}f}" if s else "-"

    lines = [f"mean ± standard error over {seeds} seeds; difference = cross-site - "
             f"central, paired by seed", "",
             "| reading | central (collected model) | cross-site (weights stay) | "
             "difference |", "|---|---|---|---|"]
    for k, d, label in (("coherence", 3, "coherence (mean over pairs)"),
                        ("imputation", 1, "imputation NLL (total, from the rest)")):
        lines.append(f"| {label} | {pm(k + '_central', d)} | {pm(k + '_cross', d)} | "
                     f"{pm(k + '_diff', d)} |")
    cost = summary.get("eval_bytes") or {}
    lines += ["", f"evaluation messages (heldout, evaluate): {pm('eval_seconds', 2)} s, "
                  f"{cost.get('mean', 0) / 1e6:.2f} MB of payload"]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
