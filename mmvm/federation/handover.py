"""What the server takes of the sites' final evaluation: their metrics (finite numbers
under short names; anything else is left out and said), and with ``collect-model``
their weights, assembled into one model only where they agree with the federation.

A site is not trusted with the other sites' share of the model: it may hand in only
its own modalities' parameters, and of a modality several sites share, the tensors
FedAvg averages must be the average every holder loaded for the evaluation (the last
holder to answer would otherwise decide that modality's weights alone)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mmvm.federation.messages import model_arrays

MAX_METRIC_NAME = 200


def checked_metrics(metrics: Mapping) -> tuple[dict, list[str]]:
    """``(kept, problems)``: the metrics that are finite numbers under a string name of
    at most :data:`MAX_METRIC_NAME` characters, and what was wrong with the rest."""
    kept, problems = {}, []
    for k, v in metrics.items():
        name = k if isinstance(k, str) and len(k) <= MAX_METRIC_NAME else None
        if name is None:
            problems.append(f"a metric name that is not a short string ({str(k)[:40]!r})")
        elif isinstance(v, bool) or not isinstance(v, int | float) \
                or not math.isfinite(v):
            problems.append(f"metric {name!r} = {str(v)[:40]!r} is not a finite number")
        elif name.startswith(("probe/", "majority/", "probe_label/", "chance/")) \
                and not 0 <= v <= 1:
            problems.append(f"metric {name!r} = {v!r} is not a fraction in [0, 1]")
        else:
            kept[name] = float(v) if isinstance(v, float) else v
    return kept, problems


def assemble(sites: Mapping[str, tuple[str, tuple[str, ...]]],
             handed: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
             shared: Mapping[str, list[str]], averaged: Mapping[str, Mapping]
             ) -> tuple[dict[str, np.ndarray], str | None]:
    """The model from ``handed[site key][modality]`` (``sites[key]``: its name and
    modalities; ``shared[m]``: the keys of the sites that hold m), or why not."""
    state: dict[str, np.ndarray] = {}
    first: dict[str, tuple[str, Mapping[str, np.ndarray]]] = {}  # m -> a holder's
    for key in sorted(handed):
        name, own = sites[key]
        for m, arrays in handed[key].items():
            if m not in own or any(not n.startswith((f"encoders.{m}.", f"decoders.{m}."))
                                   for n in arrays):
                return {}, f"site {name} handed in parameters of {m!r}, not its own"
            if len(shared.get(m, ())) > 1:
                if m in averaged:
                    odd = _differ(arrays, model_arrays(averaged[m]))
                    if odd:
                        return {}, (f"site {name} handed in weights of shared modality "
                                    f"{m!r} other than the average every holder loaded "
                                    f"({odd})")
                else:  # never averaged: holders may differ, and then no one model
                    other, ref = first.setdefault(m, (name, arrays))
                    if other != name and _differ(arrays, _floats(ref)):
                        return {}, (f"shared modality {m!r} was never averaged, and its "
                                    f"holders {other} and {name} keep different weights: "
                                    f"no single model")
            state.update({n: np.asarray(v) for n, v in arrays.items()})
    for m, holders in sorted(shared.items()):
        if len(holders) > 1 and not any(m in handed.get(k, {}) for k in holders):
            return {}, (f"no holder of shared modality {m!r} handed in its weights "
                        f"(secure holders hand in only a mean they loaded and confirmed"
                        + ("; it was never averaged)" if m not in averaged else ")"))
    return state, None


def _floats(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: v for n, v in arrays.items() if np.asarray(v).dtype.kind == "f"}


def _differ(arrays: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> str:
    """The first tensor of ``arrays`` that is not ``ref``'s (a float tensor of the same
    shape and values, compared as float32: what a float32 model loaded), or of a
    float kind ``ref`` lacks; "" if none. By ``ref``'s names, whatever dtype a site
    claims for them: an integer array would otherwise pass unchecked and be cast."""
    for n, want in ref.items():
        got = np.asarray(arrays[n]) if n in arrays else None
        if got is None or got.dtype.kind != "f" or got.shape != np.shape(want) or \
                not np.array_equal(got.astype(np.float32), np.asarray(want, np.float32)):
            return n
    return next((n for n, v in arrays.items()
                 if n not in ref and np.asarray(v).dtype.kind == "f"), "")
