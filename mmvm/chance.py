"""What an accuracy must clear, and when coherence says nothing.

A probe or a coherence score is only informative above what always answering the
test labels' commonest class scores (the *majority* rate, not 1 / classes: 15 of
100 test labels of one digit make 0.15 the floor). :func:`evaluation_warnings` names
the ways coherence can look like a result and be none: every generation of a source
judged one class, a mean at chance, a judge near chance on real data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


def chance_levels(labels: np.ndarray | Tensor, classes: int | None = None
                  ) -> dict[str, float]:
    """The floor an accuracy must clear on ``labels`` (-1 ignored): ``{"majority": share
    of the most frequent class, "majority_class": it, "uniform": 1 / classes}``.

    ``classes`` is how many the label has (e.g. counted over train and test): a small
    test split may hold only some of them, and 1 / (classes present) overstates chance
    (1.000 for a binary label whose test rows are all one class)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    y = y[y >= 0]
    if not len(y):
        return {"majority": math.nan, "majority_class": -1, "uniform": math.nan}
    counts = np.bincount(y)
    present = int((counts > 0).sum())
    return {"majority": float(counts.max() / len(y)), "majority_class": int(counts.argmax()),
            "uniform": 1.0 / max(present, classes or 0)}


def labelled_rows(dataset) -> int:
    """Rows of ``dataset`` (anything with ``.labels``) with a known label (-1: unknown)."""
    labels = getattr(dataset, "labels", None)
    return 0 if labels is None else int((np.asarray(labels) >= 0).sum())


def label_classes(*datasets) -> int:
    """Distinct known labels over ``datasets`` (train and test: a class absent from a
    small test split is still one a probe could have answered)."""
    seen = [np.asarray(d.labels).ravel() for d in datasets if d.labels is not None]
    y = np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64)
    return len(np.unique(y[y >= 0]))


def add_class_counts(counts: Tensor, labels: Tensor) -> Tensor:
    """``counts`` (per class) plus the classes of ``labels``, grown as needed."""
    new = torch.bincount(labels.cpu(), minlength=len(counts)).double()
    return new + torch.nn.functional.pad(counts, (0, len(new) - len(counts)))


def class_rates(right: Tensor, total: Tensor) -> dict[str, dict[str, float]]:
    """``{class id: {"coherence": right / total, "n": total}}`` of per-class counts
    (``right`` may be the shorter: classes never judged right)."""
    right = torch.nn.functional.pad(right, (0, len(total) - len(right)))
    return {str(k): {"coherence": float(right[k] / total[k]), "n": int(total[k])}
            for k in range(len(total)) if total[k] > 0}


def lost_classes(result: Mapping[str, Any]) -> list[str]:
    """Classes whose cross-modal generations are judged right far less often than the
    mean's (under a quarter of it, over 10 generations): a hospital's nodules were
    never generated, and 0.79 over four findings hid it."""
    coh = result.get("coherence", {})
    mean, names = coh.get("mean", math.nan), result.get("class_names") or []
    out = []
    for k, c in coh.get("per_class", {}).items():
        if mean >= 0.3 and c["n"] >= 10 and c["coherence"] < mean / 4:
            name = f"{names[int(k)]!r}" if int(k) < len(names) else k
            out.append(f"class {name}: coherence {c['coherence']:.2f} over {c['n']} "
                       f"cross-modal generations, against {mean:.2f} over all: its "
                       f"generations show another class (too few of its samples, or "
                       f"too small a sign, for the decoders yet)")
    return out


def independent_accuracy(truth: Tensor, judged: Tensor) -> float:
    """sum_k p(label k) p(judged k): the accuracy of judgements independent of the
    labels, with these frequencies."""
    k = max(len(truth), len(judged))
    p, q = (torch.nn.functional.pad(c, (0, k - len(c))) / c.sum() for c in (truth, judged))
    return float((p * q).sum())


JUDGE_MARGIN = 0.1  # a judge within this of the majority rate on real data says nothing
# what a modality no better than one constant output says: (one, several)
FLAT_RECON = (
    "the {m} reconstruction NLL {a} is {than} {b}, that of one constant output for every "
    "sample (the training data's median or mean at each pixel or value): the decoder "
    "reproduces the average sample, not this one",
    "the reconstruction NLLs {a} are {than} those of one constant output for every "
    "sample ({b}; the training data's median or mean at each pixel or value): the "
    "decoders reproduce the average sample, not this one")
WORSE_IMPUTED = (
    "{m} imputed from the other modalities scores {a}, worse than one constant output "
    "({b}): their latents tell {m}'s decoder nothing it can use about the sample (they "
    "share only a label, or training was short)",
    "imputed from the other modalities, {a} each score worse than one constant output "
    "({b}): their latents tell the decoders nothing they can use about the sample (they "
    "share only a label, or training was short)")
SWAP_P = 1e-3  # a pair this unlikely below label-independent judgements is swapped


def _below(coh: Mapping[str, Any], pair: str) -> bool:
    """Whether ``pair`` scores below label-independent judgements: by more than
    0.05 (or half their score, for many classes), and with probability under
    :data:`SWAP_P` for independent ones (binomial tail). False for NaN."""
    from scipy.stats import binom

    expected = coh.get("independent", {}).get(pair, math.nan)
    acc = coh.get("pairs", {}).get(pair, math.nan)
    n = coh.get("n", {}).get(pair.split("->", 1)[0], 0)
    return bool(n) and acc < expected - min(0.05, expected / 2) and \
        binom.cdf(round(acc * n), n, expected) < SWAP_P


def swapped_pairs(coh: Mapping[str, Any], pooled: float | None = None) -> list[str]:
    """One line per target whose generations from other modalities score below what
    judgements independent of the labels would (:func:`_below`). Where its own
    reconstructions (t -> t) score fine, the source and target latents arrange the
    classes differently (swapped or mirrored): the two share no latent space,
    whatever each one's probe says; where those are below too, t's decoder or its
    judge maps the classes elsewhere. ``pooled``: the pooled probe, quoted.

    It sees a whole arrangement gone wrong, not part of one: with four balanced
    classes of which two are swapped and two kept, a pair scores 0.5 against 0.25
    independent and is not flagged (the coherence matrix of ``mmvm report`` shows
    such a pair at half the others)."""
    low: dict[str, list[str]] = {}
    for pair in coh.get("independent", {}):
        src, tgt = pair.split("->", 1)
        if src != tgt and _below(coh, pair):
            low.setdefault(tgt, []).append(
                f"{src} {coh['pairs'][pair]:.3f} (independent "
                f"{coh['independent'][pair]:.3f})")
    probe = "" if pooled is None else f" (pooled probe {pooled:.3f})"
    return [f"coherence into {t} is below what generations independent of the labels "
            f"would score, from {'; '.join(s)}: "
            + (f"{t}'s own reconstructions are judged below it too, so its decoder or its "
               f"judge maps the classes elsewhere" if _below(coh, f"{t}->{t}") else
               f"these latents arrange the classes otherwise than {t}'s (swapped or "
               f"mirrored), so they share no latent space with it; the pooled probe, one "
               f"classifier over every modality's latents, can show it{probe}, each "
               f"modality's own probe cannot") for t, s in low.items()]


def evaluation_warnings(result: Mapping[str, Any]) -> list[str]:
    """One line per reason not to trust the coherence or reconstruction of
    ``result`` (an :func:`evaluate_run` result): sources whose generations were all
    judged one class, pairs below what label-independent generations would score
    (:func:`swapped_pairs`), a mean coherence within 0.02 of chance, a modality's
    reconstruction or imputation no better than a constant's
    (:func:`imputation_warnings`), judges near chance on real data."""
    out, judged, alike = [], {}, {}
    for pair, c in result.get("coherence", {}).get("judged_class", {}).items():
        src, tgt = pair.split("->", 1)
        judged.setdefault(src, {})[tgt] = c
    for src, classes in judged.items():  # sources alike in what each target got: a line
        alike.setdefault(tuple(classes.items()), []).append(src)
    for classes, srcs in alike.items():
        one, tgts = len(srcs) == 1, ", ".join(t for t, _ in classes)
        kinds = {c for _, c in classes}
        what = f"into {tgts} was judged class {classes[0][1]}" if len(kinds) == 1 else \
            "was judged one class per target modality (" + ", ".join(
                f"into {t} class {c}" for t, c in classes) + ")"
        out.append(f"every generation from {', '.join(srcs)} {what}: the decoder"
                   f"{'s' * (not one)} {'has' if one else 'have'} not learnt yet, or the "
                   f"judge{'s are' if not one else ' is'} weak")
    out += lost_classes(result)
    if result.get("method") != "independent":  # unaligned latents by design
        out += swapped_pairs(result.get("coherence", {}),
                             result.get("probe", {}).get("all"))
    floor = result.get("chance", {}).get("majority", math.nan)
    mean = result.get("coherence", {}).get("mean", math.nan)
    if mean <= floor + 0.02:  # False for NaN
        where = "at" if mean >= floor - 0.02 else "below"
        out.append(f"coherence {mean:.3f} is {where} chance ({floor:.3f}, majority "
                   "class): the generations do not carry their sample's label, or the "
                   "judges do not read it (see their accuracy)")
    recon, flat = result.get("reconstruction", {}), {}
    for m, floor_nll in recon.get("baseline", {}).items():
        nll = recon.get("per_modality", {}).get(m, math.nan)
        if nll >= floor_nll - 0.005 * abs(floor_nll):  # within 0.5%: False for NaN
            than = "no better than" if nll >= floor_nll else "within 0.5 % of"
            flat.setdefault(than, []).append((m, *apart(nll, floor_nll)))
    for than, rows in flat.items():  # one line for the modalities alike
        out += _alike(rows, FLAT_RECON, than=than)
    out += imputation_warnings(result)
    accuracy = result.get("classifier_accuracy", {})
    # near: within JUDGE_MARGIN of the way from chance to 1, and under twice chance
    # (a 200-class judge at 0.10 is weak but 17x chance; one at 0.995 over a 0.92
    # majority is good)
    near = {m for m, acc in accuracy.items()
            if acc < floor + JUDGE_MARGIN * (1 - floor) and acc < 2 * floor}  # NaN: no
    out += readier_than_real(result.get("coherence", {}),
                             {m: a for m, a in accuracy.items() if m not in near})
    for m, acc in accuracy.items():
        if m in near:
            out.append(f"the {m} judge scores {acc:.3f} on real test data, near chance "
                       f"({floor:.3f}, majority class): coherence through it is "
                       f"meaningless. A judge of few epochs may read more with more "
                       f"(eval.classifier_epochs: a few hundred images need tens); if "
                       f"more do not help, the label is barely readable from {m} itself "
                       f"(check a probe of its raw data), and no judge of {m} can tell "
                       f"coherent generations from chance")
    return out


def readier_than_real(coherence: Mapping, accuracy: Mapping[str, float],
                      margin: float = 0.1) -> list[str]:
    """A line per target whose judge reads generations from another modality better
    (by more than ``margin``) than real test data of it: the judge scores the
    decoder's mean output, free of the noise real data carry (a rat's spike counts,
    a noisy image), so that coherence says how readable the generated means are,
    not that they resemble real data (a walkthrough: 0.968 into a rat whose judge
    scores 0.463 on its real counts)."""
    high: dict[str, list[str]] = {}
    for pair, c in (coherence.get("pairs") or {}).items():
        src, tgt = pair.split("->", 1)
        acc = accuracy.get(tgt, math.nan)
        if src != tgt and c > acc + margin:  # NaN: False
            high.setdefault(tgt, []).append(f"{src} {c:.3f}")
    return [f"coherence into {t} ({', '.join(s)}) is above its judge's accuracy on real "
            f"test data ({accuracy[t]:.3f}): the judge reads the decoder's mean output, "
            f"free of the noise real {t} data carry, more easily than real {t}; it says "
            f"that the generations carry the label, not that they look like real {t}"
            for t, s in high.items()]


def _alike(rows: list[tuple[str, str, str]], said: tuple[str, str], **words: str
           ) -> list[str]:
    """The warning ``said`` (for one modality, for several) of ``rows`` (modality, its
    value, the constant's): several are one line listing each (``m0 1411.8, m1
    1201.6``)."""
    if len(rows) == 1:
        m, a, b = rows[0]
        return [said[0].format(m=m, a=a, b=b, **words)]
    a, b = (", ".join(f"{row[0]} {row[k]}" for row in rows) for k in (1, 2))
    return [said[1].format(a=a, b=b, **words)] if rows else []


def apart(a: float, b: float, most: int = 4) -> tuple[str, str]:
    """``a`` and ``b`` with one decimal, or as many more (up to ``most``) as it takes
    for them to read differently: a warning that 34.34 is worse than 34.31 should
    not print 34.3 and 34.3."""
    for places in range(1, most + 1):
        sa, sb = f"{a:.{places}f}", f"{b:.{places}f}"
        if sa != sb:
            break
    return sa, sb


def imputation_warnings(result: Mapping[str, Any], explode: float = 10.0) -> list[str]:
    """A line naming the modalities whose imputation from the others scores worse than
    one constant output (the others' latents tell their decoders nothing they can use:
    they share only a label, or training was short), and one naming the pairs whose
    imputation NLL exceeds ``explode`` times the constant's (a decoder's output
    running off on a latent it was not trained on: a lone PoE expert's draw)."""
    imp = result.get("imputation") or {}
    floor = (result.get("reconstruction") or {}).get("baseline") or {}
    rest = imp.get("rest") or {}
    rows = [(m, *apart(nll, floor[m])) for m, nll in rest.items()
            if m in floor and nll > floor[m]]  # False for NaN
    out = _alike(rows, WORSE_IMPUTED)
    wild = [f"{pair} {nll:,.0f}" for pair, nll in (imp.get("pairs") or {}).items()
            if (t := pair.split("->", 1)[1]) in floor  # above the constant by more than
            and nll - floor[t] > (explode - 1) * max(  # (explode - 1) of a scale that
                abs(floor[t]), abs(rest.get(t, 0.0)), 1.0)]  # a near-0 NLL cannot shrink
    if wild:
        out.append(f"imputation runs off for {'; '.join(wild[:4])}"
                   f"{' ...' * (len(wild) > 4)} (over {explode:g} times the constant's "
                   f"NLL): the decoder's output explodes on latents drawn from one "
                   f"source alone")
    return out
