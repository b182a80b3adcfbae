"""Federated run settings: the Flower run config, read once and checked.

Keys are kebab-case as in ``[tool.flwr.app.config]`` (``pyproject.toml`` holds the
only defaults); an unknown exchange mode, a negative period or a config override
that names no field fails here, before any site starts training, with a message
naming the key. The server reads them once per run, a site once per run and process.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mmvm.config import ConfigError, ExperimentConfig, load_config
from mmvm.data.hippocampus_knobs import parse_knobs
from mmvm.data.sites import LAYOUTS
from mmvm.federation.booleans import as_bool
from mmvm.federation.delta import UNITS
from mmvm.federation.plan import EXCHANGES, QUANTIZE, Plan, PlanArgs, checkpoint_windows
from mmvm.federation.site_dirs import parse_site_dirs

APP_DIR = Path(__file__).resolve().parents[2]
ALIGN_MODES = ("pseudonym", "psi")  # secure mode's id alignment (sealed_align.py)
CROSS_EVAL = ("draw", "mean", "off")  # plaintext runs' cross-site evaluation (cross_eval.py)
# folders that must be named: "" read as Path("") is the folder a process runs in
FOLDERS = {"out-dir": ("results (<out-dir>/run-<id>/)", "~/.mmvm/runs"),
           "state-dir": ("the sites' model and optimizer state", "~/.mmvm/state"),
           "data-dir": ("the simulation's default data", "~/.mmvm/data")}
# folders where "" is documented to mean none: a blank one is a mistyped value
OPTIONAL_FOLDERS = {"keys-dir": "no keys (a deployment's come from its node config)",
                    "eval-data": "no server-side evaluation"}


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
    connect_timeout: float
    site_timeout: float
    min_sites: int
    pause_timeout: float
    resume: str
    eval_data: str
    secure: bool
    keys_dir: str
    align: str
    data_variant: str
    hippocampus: dict  # the simulation's hippocampus look-alike knobs
    checkpoint_every: int = 0  # windows between checkpoints; 0: as train.checkpoint_every
    site_hosts: bool = True  # simulation: each site stays in memory in its own process
    decode_ahead: bool = True  # a resident site runs its next decoder half after replying
    max_refused: int = 2  # windows in a row a site may fail, or have its reply refused
    max_site_rows: int = 10_000_000  # samples one site may describe (server's memory)
    quantize: str = "none"  # posterior values: none | fp16 (= float16) | int8
    delta_unit: str = "latent"  # delta-tol in latent units or posterior stds (delta.py)
    site_dirs: tuple[str, ...] = ()  # simulation: the sites' own folders (site_dirs.py)
    cross_eval: str = "draw"  # plaintext: cross-site imputation, coherence (cross_eval.py)
    reply_poll: float = 0.0  # s between the server's reply polls; 0: 5 ms sim, 20 ms deployed

    def first_run(self, run_id: int | str) -> str:
        """The run whose state this one continues: ``resume``'s, else ``run_id`` (a
        resumed run keeps writing, and its sites keep reading, the first run's)."""
        return self.resume or str(run_id)

    def checkpoints(self, plan: Plan) -> set[int]:
        """Windows the server checkpoints after; secure runs: every window (a site
        never goes back to a snapshot, so it must never be ahead of one)."""
        every = 1 if self.secure else self.checkpoint_every
        return checkpoint_windows(plan, every, self.experiment.train.checkpoint_every)

    @property
    def modalities(self) -> list[str]:
        return [m.name for m in self.experiment.model.modalities]

    def plan_args(self) -> PlanArgs:
        t = self.experiment.train
        return PlanArgs(batch_size=t.batch_size, seed=t.seed, epochs=t.epochs,
                        exchange=self.exchange, k=self.exchange_steps,
                        local_epochs=self.local_epochs, warmup=self.warmup,
                        quantize=self.quantize, delta_unit=self.delta_unit)


def _get(rc: Mapping, key: str, kind: type):
    if key not in rc:
        raise ConfigError(f"run config: missing key {key!r} (see [tool.flwr.app.config])")
    value = rc[key]
    if kind is bool:
        if (flag := as_bool(value)) is None:
            raise ConfigError(f"run config: {key} = {value!r} is not a boolean (true or "
                              f"false; yes/no, on/off, 1/0 also do)")
        return flag
    # flwr passes numbers as TOML gives them: 3.7 or true for an int would be cut to 3
    # or 1 without a word, and NaN compares false with everything (delta-tol=nan: off)
    if kind in (int, float) and isinstance(value, bool) or kind is int and \
            isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"run config: {key} = {value!r} is not a valid {kind.__name__}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"run config: {key} = {value!r} is not a valid "
                          f"{kind.__name__}") from None
    if kind is float and out != out:
        raise ConfigError(f"run config: {key} = {value!r} is not a number")
    return out


def _path(rc: Mapping, key: str) -> str:
    value = _get(rc, key, str)
    return str(Path(value).expanduser()) if value else ""


def config_path(text: str, app_only: bool, app: Path = APP_DIR) -> Path:
    """The experiment config a run config's ``config`` names. ``app_only`` (a deployed
    site): a file inside ``app`` (the installed app; ``mmvm run`` asks of the app it
    submits), refused otherwise."""
    path = Path(text)
    if app_only:
        try:
            inside = (app / path).resolve()
        except (OSError, ValueError):  # a NUL, a symlink loop
            inside = None
        if path.is_absolute() or inside is None or \
                not inside.is_relative_to(app.resolve()):
            raise ConfigError(f"run config: config = {text!r}: a site reads only the "
                              f"app's own config files (a path inside the app, e.g. "
                              f"'configs/hippocampus.toml')")
        if not inside.is_file():  # named as given: not where the app is installed
            raise ConfigError(f"run config: config = {text!r} is not a file of the app")
        return inside
    if path.is_absolute():
        return path
    # relative to the app (the FAB ships configs/), else to where the run started
    return next((p for p in (APP_DIR / path, Path.cwd() / path) if p.exists()),
                APP_DIR / path)


MAX_OVERRIDES = 256  # in a run config's `set`
MAX_SET_CHARS = 16_384  # a set's length: each site parses it (~1 ms a modality) per message


def _experiment(path: Path, overrides: list[str]) -> ExperimentConfig:
    """The experiment config; its errors name the app's files as the run config does
    (``configs/x.toml``), not the staged copy Flower runs (``~/.flwr/apps/<hash>/``),
    with the nearest of the app's configs when the file is not there. Every site
    parses it at every message, before any node config check: a ``set`` of more than
    ``MAX_OVERRIDES``, or longer than ``MAX_SET_CHARS``, is refused."""
    chars = sum(map(len, overrides))
    if chars > MAX_SET_CHARS:
        raise ConfigError(f"run config: set is {chars:,} characters long; at most "
                          f"{MAX_SET_CHARS:,} (write the experiment into a config file "
                          f"of the app)")
    if len(overrides) > MAX_OVERRIDES:
        raise ConfigError(f"run config: set has {len(overrides)} overrides; at most "
                          f"{MAX_OVERRIDES} (write the experiment into a config file of "
                          f"the app)")
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"{APP_DIR}{os.sep}", "")) from None


def _hippocampus(rc: Mapping) -> dict:
    text = _get(rc, "hippocampus", str)
    try:
        return parse_knobs(text)
    except ValueError as err:
        raise ConfigError(f"run config: hippocampus = {text!r}: {err}") from None


def _encoding(rc: Mapping) -> dict:
    """float16, quantize and delta-unit; ``float16 = true`` is ``quantize = "fp16"``."""
    float16, quantize = _get(rc, "float16", bool), _get(rc, "quantize", str)
    unit = _get(rc, "delta-unit", str)
    if quantize not in QUANTIZE or unit not in UNITS:
        raise ConfigError(f"run config: quantize = {quantize!r}, delta-unit = {unit!r}; "
                          f"choose from {list(QUANTIZE)} and {list(UNITS)}")
    if float16 and quantize == "int8":
        raise ConfigError("run config: float16 = true and quantize = 'int8' disagree; "
                          "set float16 = false")
    return {"float16": float16 or quantize == "fp16", "quantize": quantize,
            "delta_unit": unit}


def run_id_text(text: str) -> str:
    """A run id as Flower prints it ('042' is run 42: the folders are named so)."""
    text = text.strip()  # (not int(): it refuses more than 4,300 digits, unsaid)
    return (text.lstrip("0") or "0") if text.isascii() and text.isdigit() else text


def load_settings(rc: Mapping, app_only: bool = False) -> FederationSettings:
    """Parse a Flower ``context.run_config`` into settings (paths expanded).

    ``app_only``: the experiment config must be one of the app's own files (a
    deployment site: whoever submits the run must not make it read, and echo
    errors about, any file of the site's)."""
    cfg_path = config_path(_get(rc, "config", str), app_only)
    overrides = [s.strip() for s in _get(rc, "set", str).split(";") if s.strip()]
    tol = _get(rc, "delta-tol", float)
    eval_data = _get(rc, "eval-data", str)
    # a deployment site's files are its node config's: it never reads site-dirs
    dirs = () if app_only else parse_site_dirs(_get(rc, "site-dirs", str))
    s = FederationSettings(
        experiment=_experiment(cfg_path, overrides),
        num_sites=_get(rc, "num-sites", int), site_dirs=dirs,
        layout=_get(rc, "layout", str), shards=_get(rc, "shards", int),
        missing=_get(rc, "missing", float), exchange=_get(rc, "exchange", str),
        exchange_steps=_get(rc, "exchange-steps", int),
        local_epochs=_get(rc, "local-epochs", int),
        warmup=_get(rc, "exchange-warmup", bool), delta_tol=tol if tol >= 0 else None,
        data_dir=_path(rc, "data-dir"), n_train=_get(rc, "n-train", int),
        n_test=_get(rc, "n-test", int), out_dir=_path(rc, "out-dir"),
        state_dir=_path(rc, "state-dir"), collect_model=_get(rc, "collect-model", bool),
        reply_timeout=_get(rc, "reply-timeout", float),
        connect_timeout=_get(rc, "connect-timeout", float),
        site_timeout=_get(rc, "site-timeout", float), min_sites=_get(rc, "min-sites", int),
        pause_timeout=_get(rc, "pause-timeout", float), resume=run_id_text(_get(rc, "resume", str)),
        eval_data=eval_data if eval_data == "default" else _path(rc, "eval-data"),
        secure=_get(rc, "secure", bool), keys_dir=_path(rc, "keys-dir"),
        align=_get(rc, "align", str), data_variant=_get(rc, "data-variant", str),
        hippocampus=_hippocampus(rc), checkpoint_every=_get(rc, "checkpoint-every", int),
        site_hosts=_get(rc, "site-hosts", bool),
        decode_ahead=_get(rc, "decode-ahead", bool), max_refused=_get(rc, "max-refused", int),
        max_site_rows=_get(rc, "max-site-rows", int),
        cross_eval=_get(rc, "cross-eval", str), reply_poll=_get(rc, "reply-poll", float),
        **_encoding(rc))
    _check(s)
    return s


def _check_folders(s: FederationSettings) -> None:
    """Refuse an empty out-dir, state-dir or data-dir (their files would land in the
    current folder of whichever process reads them) and a blank keys-dir or
    eval-data (where "" means none, "  " is neither that nor a folder)."""
    values = {"out-dir": s.out_dir, "state-dir": s.state_dir, "data-dir": s.data_dir,
              "keys-dir": s.keys_dir, "eval-data": s.eval_data}
    for key, (what, example) in FOLDERS.items():
        if not values[key].strip():
            raise ConfigError(f"run config: {key} = {values[key]!r} names no folder: "
                              f"{what} would be written into the current folder of "
                              f"whichever process runs; give a folder, e.g. "
                              f"{key}='{example}'")
    for key, none in OPTIONAL_FOLDERS.items():
        if values[key] and not values[key].strip():
            raise ConfigError(f"run config: {key} = {values[key]!r} is blank; give a "
                              f"folder, or '' for {none}")


def check_federable(cfg: ExperimentConfig) -> None:
    """Refuse an experiment no federation trains: an aggregated method, whose joint
    posterior needs every encoder in one graph, or a schedule of its own (the sites
    follow the server's shared permutation). The server checks at start, each site
    again."""
    from mmvm.aggregation import can_federate, federated_methods

    if not can_federate(cfg.model.method):
        raise ConfigError(
            f"{cfg.source}: model.method = {cfg.model.method!r} cannot train federated: "
            f"its joint posterior needs every encoder in one graph; use one of "
            f"{federated_methods()} (the aggregated baselines train centrally with "
            f"`mmvm train`)")
    if cfg.data.schedule != "permutation":
        raise ConfigError(f"{cfg.source}: data.schedule = {cfg.data.schedule!r}: "
                          f"federated sites follow the server's shared permutation "
                          f"schedule; use 'permutation'")


def _check(s: FederationSettings) -> None:
    _check_folders(s)
    check_federable(s.experiment)
    if s.exchange not in EXCHANGES:
        raise ConfigError(f"run config: exchange = {s.exchange!r}; choose one of "
                          f"{list(EXCHANGES)}")
    if s.cross_eval not in CROSS_EVAL:
        raise ConfigError(f"run config: cross-eval = {s.cross_eval!r}; choose one of "
                          f"{list(CROSS_EVAL)}")
    if s.layout not in LAYOUTS:
        raise ConfigError(f"run config: layout = {s.layout!r}; choose one of {list(LAYOUTS)}")
    if s.exchange_steps < 1 or s.local_epochs < 1 or s.num_sites < 1 or s.shards < 1:
        raise ConfigError("run config: num-sites, shards, exchange-steps and local-epochs "
                          "must be >= 1")
    if s.site_dirs and len(s.site_dirs) != s.num_sites:
        raise ConfigError(f"run config: site-dirs lists {len(s.site_dirs)} folders and "
                          f"num-sites = {s.num_sites}: set num-sites={len(s.site_dirs)} "
                          f"(one simulated site per folder)")
    if s.layout in ("horizontal", "hybrid") and s.shards < 2:
        one = "a single site with every modality" if s.layout == "horizontal" else \
            "layout = 'vertical'"
        raise ConfigError(f"run config: layout = {s.layout!r} needs shards >= 2 (got "
                          f"{s.shards}); one shard is {one}")
    if s.n_train < 1 or s.n_test < 1:
        raise ConfigError(f"run config: n-train = {s.n_train} and n-test = {s.n_test} "
                          f"(the simulation's default data) must be >= 1")
    if not 0.0 <= s.missing < 1.0:
        raise ConfigError(f"run config: missing = {s.missing} must be in [0, 1)")
    if not s.reply_timeout > 0 or not s.connect_timeout > 0:
        raise ConfigError(f"run config: reply-timeout = {s.reply_timeout} and "
                          f"connect-timeout = {s.connect_timeout} must be > 0")
    if not (s.site_timeout > 0 and s.pause_timeout > 0):
        raise ConfigError(f"run config: site-timeout = {s.site_timeout} and "
                          f"pause-timeout = {s.pause_timeout} must be > 0")
    if s.resume and not (s.resume.isascii() and s.resume.isdigit()
                         and int(s.resume[:21]) < 2**64):  # Flower's ids: 64 bits
        raise ConfigError(f"run config: resume = {s.resume[:40]!r} is not a run id (the "
                          f"number `flwr ls` shows, or '' to start a new run)")
    if s.checkpoint_every < 0:
        raise ConfigError(f"run config: checkpoint-every = {s.checkpoint_every} must be "
                          f">= 0 (0: every train.checkpoint_every epochs)")
    if s.max_refused < 0:
        raise ConfigError(f"run config: max-refused = {s.max_refused} must be >= 0 (0: the "
                          f"first window a site fails, or whose reply is refused, "
                          f"excludes it from the run)")
    if s.max_site_rows < 1:
        raise ConfigError(f"run config: max-site-rows = {s.max_site_rows} must be >= 1")
    if not (s.reply_poll == 0.0 or 0.005 <= s.reply_poll <= 1.0):
        raise ConfigError(f"run config: reply-poll = {s.reply_poll} must be 0 (5 ms in a "
                          f"simulation, 20 ms in a deployment) or in [0.005, 1] seconds")
    if s.min_sites < 1:
        raise ConfigError(f"run config: min-sites = {s.min_sites} must be >= 1 (values "
                          f"above num-sites mean every site)")
    if s.data_variant not in ("translated", "untranslated", "soft"):
        raise ConfigError(f"run config: data-variant = {s.data_variant!r}; choose "
                          f"'translated', 'untranslated' or 'soft'")
    if s.align not in ALIGN_MODES:
        raise ConfigError(f"run config: align = {s.align!r}; choose one of "
                          f"{list(ALIGN_MODES)}")
    if s.secure and s.quantize == "int8":
        raise ConfigError("run config: quantize = 'int8' is not available with secure = "
                          "true (use float16)")
    if s.secure and s.delta_tol is not None:
        raise ConfigError("run config: delta-tol (event-triggered exchange) is not "
                          "available with secure = true")


def app_run_config(**overrides) -> dict:
    """``[tool.flwr.app.config]`` of this app with ``overrides`` (underscores in the
    names become dashes): how tests and benchmarks build settings without Flower."""
    with open(APP_DIR / "pyproject.toml", "rb") as fh:
        rc = dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    for k, v in overrides.items():
        key = k.replace("_", "-")
        if key not in rc:
            raise ConfigError(f"run config: unknown key {key!r}")
        rc[key] = v
    return rc


def settings_for(experiment: ExperimentConfig, **overrides) -> FederationSettings:
    """Settings of an in-process run (tests, benchmarks): this app's run config with
    ``overrides``, training ``experiment``; the cross-site evaluation off unless
    ``cross_eval`` asks for it (its judges train at every site: seconds each, which
    runs measuring something else need not spend)."""
    overrides.setdefault("cross_eval", "off")
    return dataclasses.replace(load_settings(app_run_config(**overrides)),
                               experiment=experiment)
