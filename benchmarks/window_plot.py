"""Where a federated window's wall time falls: one histogram per ``flwr run`` row.

Flower's simulation engine hands stored messages to its workers only every 0.1 s
(``vce_api.add_messages_to_queue``), so an exact window (one optimiser step) lasts
the time from that pick-up to the server's next push, rounded up to the engine's next
poll: when that critical path takes 0.1-0.2 s the windows pile up near 0.2 s,
whatever the sites gain below it. The picture shows that next to the centralized
step and the goal (1.5x it); the mean alone does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmvm.plots import save_figure  # noqa: E402


def window_histogram(runs: Sequence[Mapping], path: str | Path, goal: float = 1.5
                     ) -> Path | None:
    """Histogram of the per-window seconds of every federated row (repeats pooled),
    with the mean centralized step and ``goal`` x it; None when no row has windows."""
    rows: dict[str, list[float]] = {}
    for r in runs:
        if r.get("window_seconds"):
            rows.setdefault(r["target"], []).extend(r["window_seconds"])
    if not rows:
        return None
    central = [r["per_step"] for r in runs if r["target"] == "central"]
    step = float(np.mean(central)) if central else None
    top = max(np.percentile(v, 99) for v in rows.values())
    bins = np.linspace(0.0, top * 1.05, 60)
    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 1.9 * len(rows) + 0.6),
                             sharex=True, squeeze=False)
    for ax, (name, seconds) in zip(axes[:, 0], rows.items(), strict=True):
        ax.hist(seconds, bins=bins, color="tab:blue", alpha=0.8)
        ax.axvline(float(np.mean(seconds)), color="tab:blue", ls="--", lw=1,
                   label=f"mean {np.mean(seconds):.3f} s")
        if step is not None:
            ax.axvline(step, color="black", lw=1.2, label=f"central step {step:.3f} s")
            ax.axvline(goal * step, color="tab:red", lw=1.2, ls=":",
                       label=f"{goal:g}x central")
        ax.set_title(f"{name} ({len(seconds)} windows)", fontsize=9, loc="left")
        ax.set_ylabel("windows")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds per window")
    return save_figure(fig, path)
