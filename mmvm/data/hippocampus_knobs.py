"""The hippocampus look-alike's knobs: defaults, meanings, the dense v1 preset, checks.

Kept apart from :mod:`mmvm.data.hippocampus` (numpy, Arrow) so that the command line
can show them in its help without importing the simulation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

# knob: (default, meaning); the CLI's help shows them. The defaults give per-rat raw odor
# decoding of about 0.5 (chance 0.25): docs/hippocampus-lookalike.md, with the sources
KNOBS: dict[str, tuple[float, str]] = {
    "tuned_fraction": (0.2, "share of each rat's neurons that are odor-tuned (a random "
                             "subset per rat; the others fire alike for every odor)"),
    "tuning": (0.5, "SD of a tuned neuron's log-rate odor response, drawn per rat and "
                    "neuron (rat-specific code; at 2.0 a few neurons fire dozens of spikes "
                    "a bin: a clear code, not physiological rates)"),
    "gain_sd": (0.2, "SD of the log of the trial-to-trial gain shared by a rat's neurons"),
    "noise_sd": (0.5, "SD of per-trial, per-neuron log-rate noise (overdispersion)"),
}
DEFAULTS: dict[str, float] = {k: v for k, (v, _) in KNOBS.items()}
# the first look-alike: every neuron strongly tuned, little trial-to-trial variability
DENSE_V1: dict[str, float] = {"tuned_fraction": 1.0, "tuning": 1.0, "gain_sd": 0.2,
                              "noise_sd": 0.0}


def check_knobs(tuned_fraction: float, tuning: float, gain_sd: float,
                noise_sd: float) -> dict[str, float]:
    """The knobs as floats, or ValueError naming the bad one."""
    out = {"tuned_fraction": tuned_fraction, "tuning": tuning, "gain_sd": gain_sd,
           "noise_sd": noise_sd}
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{k} must be a number, got {v!r}")
        out[k] = float(v)
    if not 0.0 <= out["tuned_fraction"] <= 1.0:
        raise ValueError(f"tuned_fraction must be in [0, 1] (a share of the neurons), "
                         f"got {tuned_fraction}")
    for k in ("tuning", "gain_sd", "noise_sd"):
        if not (math.isfinite(out[k]) and out[k] >= 0.0):
            raise ValueError(f"{k} is a standard deviation: it must be finite and >= 0, "
                             f"got {out[k]}")
    return out


def preset_name(knobs: Mapping[str, float]) -> str:
    """``"default"``, ``"dense (v1)"`` or ``"custom"``: which preset ``knobs`` are."""
    knobs = {k: float(knobs[k]) for k in KNOBS}
    return ("default" if knobs == DEFAULTS else "dense (v1)" if knobs == DENSE_V1
            else "custom")


def resolve_knobs(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """:data:`DEFAULTS` with ``overrides`` (names with ``-`` or ``_``), checked."""
    out = dict(DEFAULTS)
    for k, v in (overrides or {}).items():
        name = str(k).replace("-", "_")
        if name not in KNOBS:
            raise ValueError(f"unknown hippocampus knob {k!r}; the knobs are "
                             f"{', '.join(KNOBS)}")
        out[name] = v
    return check_knobs(**out)


def parse_knobs(text: str) -> dict[str, float]:
    """Knobs from text: ``"default"``, ``"dense"`` (:data:`DENSE_V1`) or
    ``"name=value,..."`` over the defaults (e.g. ``"tuning=1.0,tuned-fraction=0.5"``)."""
    text = text.strip()
    if text in ("", "default"):
        return dict(DEFAULTS)
    if text in ("dense", "v1", "dense-v1"):
        return dict(DENSE_V1)
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            pairs[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: expected name=number (or 'default', 'dense'), "
                             f"names {', '.join(KNOBS)}") from None
    return resolve_knobs(pairs)


def knobs_tag(knobs: Mapping[str, float]) -> str:
    """Short folder-name tag of the knobs, e.g. ``f0.2-t0.5-g0.2-n0.5``."""
    k = resolve_knobs(knobs)
    return (f"f{k['tuned_fraction']:g}-t{k['tuning']:g}-g{k['gain_sd']:g}"
            f"-n{k['noise_sd']:g}")
