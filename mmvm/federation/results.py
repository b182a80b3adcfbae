"""What a federated run leaves behind, in the same shapes as a centralized run.

``checkpoint.pt`` (when the sites hand in their weights) has the centralized
checkpoint's keys, so ``mmvm evaluate --run DIR`` works on it unchanged.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import torch

from mmvm.checkpoint import atomic_write_bytes, save_checkpoint
from mmvm.config import config_to_dict

WINDOW_FIELDS = ["window", "epoch", "step", "rec_nll", "reg", "bytes", "seconds"]


def write_results(out_dir: str | Path, settings, result) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=WINDOW_FIELDS)
    writer.writeheader()
    writer.writerows(result.history)
    atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())
    s = {k: v for k, v in asdict(settings).items() if k != "experiment"}
    summary = {"settings": s, "config": config_to_dict(settings.experiment),
               "sites": result.sites, "evaluation": result.evaluation,
               "bytes_total": result.bytes_total, "seconds": result.seconds,
               "windows": len(result.history)}
    probes = [v for ev in result.evaluation.values() for k, v in ev.items()
              if k.startswith("probe/")]
    if probes:
        summary["probe_mean"] = sum(probes) / len(probes)
    atomic_write_bytes(out / "results.json", json.dumps(summary, indent=2, default=str).encode())
    paths = {"metrics": str(out / "metrics.csv"), "results": str(out / "results.json")}
    if result.model_state:
        last = result.history[-1] if result.history else {"epoch": 0, "step": 0}
        save_checkpoint(out / "checkpoint.pt", {
            "config": config_to_dict(settings.experiment),
            "model": {k: torch.as_tensor(v) for k, v in result.model_state.items()},
            "epoch": last["epoch"], "step": last["step"], "history": result.history,
            "federated": summary})
        paths["checkpoint"] = str(out / "checkpoint.pt")
    paths["curves"] = str(_plot_curves(out / "curves.png", result.history))
    return paths


def _plot_curves(path: Path, history: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = [r["step"] for r in history]
    for ax, key, label in zip(axes, ("rec_nll", "reg", "bytes"),
                              ("reconstruction NLL / sample", "regulariser / sample",
                               "bytes per window")):
        ax.plot(steps, [r[key] for r in history], marker="." if len(steps) < 50 else None)
        ax.set_xlabel("optimiser step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
