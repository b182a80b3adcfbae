"""Federated run settings: the Flower run config, read once and checked.

Keys are kebab-case as in ``[tool.flwr.app.config]``; an unknown exchange mode, a
negative period or a config override that names no field fails here, before any
site starts training, with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmvm.config import ConfigError, ExperimentConfig, load_config
from mmvm.data.sites import LAYOUTS
from mmvm.federation.plan import EXCHANGES

APP_DIR = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FederationSettings:
    experiment: ExperimentConfig
    num_sites: int
    layout: str
    shards: int
    missing: float
    exchange: str
    exchange_steps: int
    local_epochs: int
    warmup: bool
    delta_tol: float | None
    float16: bool
    data_dir: str
    n_train: int
    n_test: int
    out_dir: str
    state_dir: str
    collect_model: bool
    reply_timeout: float


def _get(rc, key, kind):
    if key not in rc:
        raise ConfigError(f"run config: missing key {key!r} (see [tool.flwr.app.config])")
    value = rc[key]
    try:
        return kind(value) if kind is not bool else _as_bool(value, key)
    except (TypeError, ValueError):
        raise ConfigError(f"run config: {key} = {value!r} is not a valid "
                          f"{kind.__name__}") from None


def _as_bool(v, key) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("true", "1", "yes"):
        return True
    if str(v).lower() in ("false", "0", "no"):
        return False
    raise ConfigError(f"run config: {key} = {v!r} is not a boolean")


def load_settings(rc: dict) -> FederationSettings:
    """Parse a Flower ``context.run_config`` into settings (paths expanded)."""
    cfg_path = Path(_get(rc, "config", str))
    if not cfg_path.is_absolute():  # relative to the app (the FAB ships configs/)
        cfg_path = next((p for p in (APP_DIR / cfg_path, Path.cwd() / cfg_path)
                         if p.exists()), APP_DIR / cfg_path)
    overrides = [s.strip() for s in _get(rc, "set", str).split(";") if s.strip()]
    experiment = load_config(cfg_path, overrides)
    s = FederationSettings(
        experiment=experiment, num_sites=_get(rc, "num-sites", int),
        layout=_get(rc, "layout", str), shards=_get(rc, "shards", int),
        missing=_get(rc, "missing", float), exchange=_get(rc, "exchange", str),
        exchange_steps=_get(rc, "exchange-steps", int),
        local_epochs=_get(rc, "local-epochs", int), float16=_get(rc, "float16", bool),
        warmup=_get(rc, "exchange-warmup", bool),
        delta_tol=(lambda t: t if t >= 0 else None)(_get(rc, "delta-tol", float)),
        data_dir=str(Path(_get(rc, "data-dir", str)).expanduser()),
        n_train=_get(rc, "n-train", int), n_test=_get(rc, "n-test", int),
        out_dir=str(Path(_get(rc, "out-dir", str)).expanduser()),
        state_dir=str(Path(_get(rc, "state-dir", str)).expanduser()),
        collect_model=_get(rc, "collect-model", bool),
        reply_timeout=_get(rc, "reply-timeout", float))
    if s.exchange not in EXCHANGES:
        raise ConfigError(f"run config: exchange = {s.exchange!r}; choose one of "
                          f"{list(EXCHANGES)}")
    if s.layout not in LAYOUTS:
        raise ConfigError(f"run config: layout = {s.layout!r}; choose one of {list(LAYOUTS)}")
    if s.exchange_steps < 1 or s.local_epochs < 1 or s.num_sites < 1 or s.shards < 1:
        raise ConfigError("run config: num-sites, shards, exchange-steps and local-epochs "
                          "must be >= 1")
    if not 0.0 <= s.missing < 1.0:
        raise ConfigError(f"run config: missing = {s.missing} must be in [0, 1)")
    return s
