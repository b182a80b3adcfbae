"""A window's loss metrics: the sums a site reports, and the per-sample means the
server makes of them.

Over the rows it trained in a window a site reports the summed reconstruction NLL
(``rec_nll``), regulariser (``reg``), its row count (``rows``), and the NLL sum of each
modality it holds (``rec_nll.<m>``). When every site answered, the window's
``rec_nll`` is the centralized one: the sites' sum over the window's rows.

When a site is away or refused, its modalities' terms are missing from that sum,
which would read as a dip in the loss curve. The server then scales each modality's
sum by the window's rows its holders hold over those its answering holders hold (the
absent holders' rows assumed like theirs), and marks the window ``estimated``. When
no holder of a modality answered, nothing stands for its terms: the window's
``rec_nll`` is NaN, a gap in the curve rather than a number that is not the loss.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from mmvm.federation.coordinator import FederationError

SUMS = ("rec_nll", "reg", "rows")  # what every window reply's metrics hold
WITHHELD = "losses_withheld"  # 1: the site's node config keeps its loss sums (zeros)
# the last window a site's state had when it answered a later one (its process
# restarted from a checkpoint): its own training since is lost
RESTORED = "restored_after"
SPLIT_TOL = 1e-4  # the per-modality sums add up to the total (float32 sums of one tensor)


def modality_key(m: str) -> str:
    """The metric that holds modality ``m``'s NLL sum."""
    return f"rec_nll.{m}"


def zero_sums(names: Sequence[str]) -> dict[str, float]:
    """A site's window sums before its first step (``names``: its modalities)."""
    return {"rec_nll": 0.0, "reg": 0.0, "rows": 0, "steps": 0, "ahead_s": 0.0,
            **{modality_key(m): 0.0 for m in names}}


def step_sums(names: Sequence[str], nll: Tensor, reg: Tensor, ahead_s: float) -> dict:
    """One step's sums: ``nll`` [B, M_own] the weighted negative log-likelihoods of the
    site's modalities ``names`` (0 where not observed), ``reg`` [B]."""
    per = nll.sum(0).tolist()
    return {"rec_nll": float(nll.sum().item()), "reg": float(reg.sum().item()),
            "rows": nll.shape[0], "steps": 1, "ahead_s": ahead_s,
            **{modality_key(m): float(v) for m, v in zip(names, per, strict=True)}}


def window_sums(reply, modalities: Sequence[str] = ()) -> dict[str, float]:
    """A window reply's metric sums (the totals, and the NLL of each of the site's
    ``modalities``); ``ValueError`` says what is wrong with them."""
    keys = (*SUMS, *map(modality_key, modalities))
    try:
        got = {k: float(reply.metrics[k]) for k in keys}
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"malformed metrics ({err!r})") from None
    if not all(math.isfinite(v) for v in got.values()) or got["rows"] < 0:
        raise ValueError(f"metrics {got} (not finite, or negative rows)")
    split = sum(got[modality_key(m)] for m in modalities)
    if modalities and abs(split - got["rec_nll"]) > SPLIT_TOL * (1.0 + abs(got["rec_nll"])):
        raise ValueError(f"metrics whose rec_nll per modality sum to {split}, not to its "
                         f"rec_nll {got['rec_nll']}")
    return got


def withhold_losses(metrics: dict) -> dict:
    """A window's metrics as a site that keeps its losses sends them: the sums
    zeroed (the reply keeps its shape), rows, steps and timings as they are."""
    lossy = ("rec_nll", "reg")
    return {**{k: 0.0 if k in lossy or k.startswith("rec_nll.") else v
               for k, v in metrics.items()}, WITHHELD: 1.0}


def as_now_allowed(reply, report_losses: bool):
    """A kept window ``reply``, sent again to a restarted server, as the site's node
    config allows now: its loss sums withheld where ``report-losses`` was turned off
    since (a review: the kept reply went out with them)."""
    if report_losses or reply.metrics.get(WITHHELD):
        return reply
    return dataclasses.replace(reply, metrics=withhold_losses(reply.metrics))


FRACTIONS = ("probe/", "majority/", "coherence/", "judge_accuracy/", "probe_label/",
             "chance/")  # hits / rows, or ranks over pairs of rows (AUROC)
FRACTION_STEP = 0.05  # what a site that keeps its sizes rounds its fractions to


def evaluation_withheld(metrics: dict) -> dict:
    """The final evaluation's metrics as a site that keeps its losses sends them:
    no reconstruction or imputation NLLs, nor any size (``n_test``, a score's
    count, the probe's rows), and its fractions rounded to :data:`FRACTION_STEP`:
    exact, 8/96 and 13/96 give the server 96 back as their smallest common
    denominator, and rounded to 0.01 a test set of 50 rows or fewer still mostly did
    (security reviews of 2026-12-06; one of 10 rows can still be read back)."""
    kept = {k: round(round(v / FRACTION_STEP) * FRACTION_STEP, 2)
            if k.startswith(FRACTIONS) else v
            for k, v in metrics.items()
            if not k.startswith(("recon_nll/", "impute", "constant_nll/", "probe_n/",
                                 "probe_groups/"))
            and k != "n_test" and not k.endswith("_n")}
    return {**kept, WITHHELD: 1.0}


def window_means(coord, w: int, replies: Mapping) -> dict:
    """``rec_nll`` and ``reg`` per sample of window ``w`` from the replies taken
    (``coord``: the :class:`~mmvm.federation.coordinator.Coordinator`), and whether
    ``rec_nll`` is ``estimated`` (1) or the sites' sum (0): see the module's docstring."""
    window = coord.plan[w]
    rows = sum(len(s.rows) for s in window.steps)
    got = {}
    for key, r in replies.items():
        try:
            sums = window_sums(r, coord.sites[key].modalities)
        except ValueError as err:
            raise FederationError(f"window {w}: site {coord.name(key)} sent {err}") from None
        if not r.metrics.get(WITHHELD):  # a site that keeps its losses counts as away
            got[key] = sums
    nan = float("nan")
    if not got:  # no site's reply was taken: no loss to report
        return {"rec_nll": nan, "reg": nan, "estimated": 0}
    reg = sum(g["reg"] for g in got.values()) / (sum(g["rows"] for g in got.values()) or 1.0)
    def rows_of(key: str) -> int:  # the window's rows site ``key`` holds
        return sum(int(coord.holds(key, s.rows.numpy()).sum()) for s in window.steps)

    if not any(rows_of(k) for k in coord.sites if k not in got):  # all with rows answered
        return {"rec_nll": sum(g["rec_nll"] for g in got.values()) / rows, "reg": reg,
                "estimated": 0}
    held = {key: rows_of(key) for key in coord.sites}
    total = 0.0
    for m, keys in coord.holders.items():
        answered = [k for k in keys if k in got]
        held_answered = sum(held[k] for k in answered)
        if not held_answered:
            if sum(held[k] for k in keys):  # m was trained in w, and nobody reported it
                return {"rec_nll": nan, "reg": reg, "estimated": 1}
            continue
        total += sum(got[k][modality_key(m)] for k in answered) \
            * sum(held[k] for k in keys) / held_answered
    return {"rec_nll": total / rows, "reg": reg, "estimated": 1}


def restored_after(reply, window: int) -> int | None:
    """The window whose state a site's reply to ``window`` was trained from, when it
    says it restarted from a checkpoint (-1: from attach); None otherwise, or when
    the number makes no sense."""
    value = reply.metrics.get(RESTORED)
    try:
        last = int(value) if value is not None and float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return last if last is not None and -1 <= last < window - 1 else None


def window_row(w: int, coord, replies: Mapping, nbytes: int,
               seconds: float) -> dict:
    """One line of ``metrics.csv``: per-sample means over the window's rows
    (:func:`mmvm.federation.window_metrics.window_means`), bytes and seconds."""
    window = coord.plan[w]
    return {"window": w, "windows": len(coord.plan), "epoch": window.steps[-1].epoch + 1,
            "step": window.steps[-1].step + 1, **window_means(coord, w, replies),
            "bytes": nbytes, "seconds": seconds, **site_seconds(replies)}


TIMINGS = ("train_s", "codec_s", "disk_s")  # what a site reports of its window's time


def site_seconds(replies: Mapping) -> dict:
    """The slowest site's seconds in the window (sites run concurrently, so the
    window waits for it): its total and the parts (training, message coding, disk);
    and the longest decoder half run ahead, while the server routed (``ahead_s``)."""
    def parts(r) -> dict:
        return {k: seconds_of(r.metrics.get(k)) for k in TIMINGS}

    slowest = max((parts(r) for r in replies.values()), key=lambda p: sum(p.values()),
                  default=dict.fromkeys(TIMINGS, 0.0))
    return {"site_s": sum(slowest.values()), **slowest, "ahead_s": max(
        (seconds_of(r.metrics.get("ahead_s")) for r in replies.values()), default=0.0)}


def seconds_of(value) -> float:
    """A reported time as seconds: 0 for what is not a finite positive number."""
    try:
        seconds = float(value or 0.0)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0
