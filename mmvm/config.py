"""Experiment configuration: frozen dataclasses read once from TOML, strictly.

A config file (``configs/*.toml``) has the sections ``[data]``, ``[model]`` with one
``[model.modalities.<name>]`` table per modality, ``[train]`` and ``[eval]``. Any value
can be overridden as ``section.key=value`` (``--set train.epochs=3``); values are
parsed as TOML, so ``3`` is an int and ``"a"``/``a`` a string. Unknown keys and values
of the wrong type raise :class:`ConfigError` naming the key and the file (or override),
with the closest valid key."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmvm.config_ranges import range_problem
from mmvm.config_tables import (
    ConfigError,
    apply_override,
    build_table,
    check_table,
    reject_unknown_sections,
)

# deeper is no network's need, and each layer is a Python module to build: a run
# config asking for 10^6 would keep a site busy for minutes before training
MAX_LAYERS = 64
# an error names the override that caused it by re-checking the config after each of
# the first this many (quadratic: a submitter's `set` of hundreds is not searched)
CULPRIT_SEARCH = 32


@dataclass(frozen=True)
class ModalitySpec:
    """One modality: its tensor shape, network and likelihood.

    ``network`` names an entry of :mod:`mmvm.networks` ("" = the kind's default:
    image -> ``conv28``, vector -> ``mlp``, tokens -> ``cub_text``); the network
    decides which shapes it takes. ``layers`` 0 = the network's default depth. Both
    are filled in on construction, so a saved config names what was built.
    """

    name: str
    kind: str  # "image" [C, H, W], "vector" (any shape) or "tokens" (ids [positions])
    shape: tuple[int, ...]
    likelihood: str = "laplace"
    scale: float = 0.75  # likelihood scale (Laplace b, Gaussian sigma)
    weight: float = 1.0  # w_m in the loss
    width: int = 32  # base channels (image, tokens) or hidden units (vector; 0 = input size)
    layers: int = 0  # MLP hidden layers; residual nets: blocks per stage; 0 = default
    network: str = ""  # see mmvm.networks; "" = the kind's default
    classes: int = 0  # tokens: categories per position (the vocabulary size)

    def __post_init__(self) -> None:
        from mmvm.likelihoods import get_likelihood
        from mmvm.networks import KINDS, NetworkError, resolve

        where = f"modality {self.name!r}"
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind must be {', '.join(map(repr, KINDS[:-1]))} "
                              f"or {KINDS[-1]!r}, got {self.kind!r}")
        try:
            get_likelihood(self.likelihood)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        if self.scale <= 0 or self.weight < 0:
            raise ConfigError(f"{where}: scale must be > 0 and weight >= 0")
        if not self.shape or any(isinstance(d, bool) or d < 1 for d in self.shape):
            raise ConfigError(f"{where}: shape must be a non-empty list of positive "
                              f"integers, got {list(self.shape)}")
        if self.kind == "tokens" and (self.likelihood != "categorical" or self.classes < 2):
            raise ConfigError(f"{where}: kind 'tokens' needs likelihood = 'categorical' "
                              f"and classes >= 2 (the vocabulary size), got "
                              f"{self.likelihood!r} and classes={self.classes}")
        if self.likelihood == "poisson" and self.kind != "vector":
            raise ConfigError(f"{where}: likelihood 'poisson' is for counts, a 'vector' "
                              f"modality (image decoders end in a sigmoid, and pixels are "
                              f"stored scaled to 0..1); got kind {self.kind!r}")
        if not 0 <= self.layers <= MAX_LAYERS or self.width < 0:
            raise ConfigError(f"{where}: layers must be 0..{MAX_LAYERS} (0 = the network's "
                              f"default) and width >= 0, got layers={self.layers}, "
                              f"width={self.width}")
        if self.kind != "tokens" and self.classes != 0:
            raise ConfigError(f"{where}: classes is the vocabulary of a 'tokens' modality; "
                              f"kind {self.kind!r} takes classes = 0, got {self.classes}")
        try:
            network, layers = resolve(self)
        except NetworkError as err:
            raise ConfigError(str(err)) from None
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "layers", layers)


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/polymnist"  # folder with train.parquet / test.parquet
    train: str = "train.parquet"
    test: str = "test.parquet"
    label: str = "label"
    max_train: int = 0  # 0 = all rows; else N at random, by sample id (mmvm.subsample)
    max_test: int = 0
    # streaming = true: the trainer reads the train file row group by row group
    # (mmvm.data.streaming.StreamingDataset), holding at most cache_row_groups decoded
    # groups, so the data need not fit in memory; same batches, same results.
    streaming: bool = False
    cache_row_groups: int = 8
    # streaming with a folder: the tensors decoded once into .npy files there, which
    # batches read row by row (random rows at disk speed; mmvm.data.decoded). A
    # deployed site's is <state>/decoded whenever it streams (its node config's)
    decoded_dir: str = ""
    # permutation: the full seeded permutation (exact, shared with federation);
    # grouped (needs streaming): shuffle row groups, and rows within windows of
    # schedule_window groups, so batches touch few groups (mmvm.schedule).
    schedule: str = "permutation"
    schedule_window: int = 4
    # sub-folders of root whose train / test files are joined by sample id, e.g.
    # ["frontal", "lateral"] (MIMIC-CXR: <root>/frontal/train.parquet, ...); () = none
    folders: tuple[str, ...] = ()

    def files(self, split: str) -> list[Path]:
        """The Parquet files of ``split`` ("train" or "test"), joined by sample id."""
        name = {"train": self.train, "test": self.test}[split]
        root = Path(self.root)
        return [root / f / name for f in self.folders] if self.folders else [root / name]


@dataclass(frozen=True)
class ModelConfig:
    method: str = "mmvm"
    latent_dim: int = 64
    private_dim: int = 0  # MMVAE+ only: modality-specific latent size (shared = latent_dim)
    modalities: tuple[ModalitySpec, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    beta: float = 1.0
    alpha: float = 0.0  # final alpha (0 = pure MMVM)
    alpha_schedule: str = "constant"  # constant | linear | cosine | exponential
    alpha_start: float = 1.0
    alpha_steps: int = 150_000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out_dir: str = "runs/default"
    checkpoint_every: int = 1  # epochs
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    amp: str = "off"  # off | bf16 (CPU or CUDA) | fp16 (CUDA): autocast of the forward pass
    channels_last: bool = False  # NHWC images (faster convolutions on oneDNN / cuDNN)
    compile: bool = False  # torch.compile each encoder and decoder (needs a C++ compiler)
    adam: str = "fused"  # fused | foreach | loop: torch's Adam kernels (same update)
    grad_clip: float = 0.0  # > 0: cut each modality's gradient to this norm (accel.step)


@dataclass(frozen=True)
class EvalConfig:
    probe_train: int = 10_000  # samples used to fit the latent probes
    classifier_epochs: int = 3  # epochs of the coherence classifiers
    # image judges: at least this many batches (a few hundred images need tens of
    # epochs; mmvm.classifiers.recipe_for_rows)
    classifier_min_image_steps: int = 100
    classifier_shift: int = 0  # image judges train on copies shifted up to this many px
    classifier_width: int = 16  # judges' base width (image: channels w, 2w, 4w)
    classifier_rotate: float = 0.0  # image judges train on copies turned up to this many degrees
    classifier_members: int = 1  # judges per modality, voting as an ensemble
    classifier_batch_size: int = 128  # judges' batches (ClassifierConfig's default)
    classifier_lr: float = 3e-3  # peak of the judges' one-cycle learning rate (AdamW)
    batch_size: int = 256
    # label columns for per-label latent probes ("label.*" style patterns allowed);
    # () = one probe of data.label, scored by accuracy
    labels: tuple[str, ...] = ()
    metric: str = "accuracy"  # per-label probe score: accuracy | auroc | ap
    # the paper's protocol: probes on raw latent means, coherence from sampled z
    probe_standardize: bool = False  # true: StandardScaler before the probe
    coherence_sample: bool = True  # false: decode the posterior mean instead


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = "<defaults>"


# the settings a site's node config may decide for itself (mmvm.federation.policy)
SITE_CHOSEN = (("train", "device"), ("train", "compile"), ("data", "streaming"),
               ("data", "cache_row_groups"), ("data", "decoded_dir"))


def shared_settings(cfg: ExperimentConfig) -> dict:
    """The settings sites must share (not ``source``, nor :data:`SITE_CHOSEN`: where a
    site trains, whether it compiles, how it reads its files, its node config's to
    decide, none of which changes the results), JSON-able."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "source"}
    for section, key in SITE_CHOSEN:
        settings[section].pop(key, None)
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def config_digest(cfg: ExperimentConfig) -> str:
    """SHA-256 of :func:`shared_settings`: sites check with it that they train alike."""
    text = json.dumps(shared_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_changes(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """``"train.lr: 0.001 -> 0.002"`` for each dotted key whose value differs
    (``(unset)`` where one side lacks the key)."""
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        old, new = saved.get(key, "(unset)"), now.get(key, "(unset)")
        if isinstance(old, dict) and isinstance(new, dict):
            out += config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {_shown(old)} -> {_shown(new)}")
    return out


def _shown(value: Any) -> str:
    return value if value == "(unset)" else json.dumps(value, default=str)


# ----------------------------------------------------------------------------- loading
CHECKOUT = Path(__file__).resolve().parents[1]  # the source tree this package runs from


def _nearby(path: Path) -> str:
    """What the existing folder of a missing config file holds: the closest name to
    it, else its first .toml files."""
    if not path.parent.is_dir():
        return ""
    there = {p.stem: p.name for p in sorted(path.parent.glob("*.toml"))}
    close = difflib.get_close_matches(path.stem, list(there), n=1)  # not ".toml"
    shown = list(there.values())[:10] + ["..."] * (len(there) > 10)
    return f"; did you mean {there[close[0]]!r}?" if close else \
        f"; the folder has {', '.join(shown) or 'no .toml file'}"


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                base: tuple[dict, str] | None = None) -> ExperimentConfig:
    """Read a TOML config and apply ``section.key=value`` overrides, strictly.
    ``base``: instead of a file, a config dict and where it came from (a run's)."""
    raw: dict[str, Any] = copy.deepcopy(base[0]) if base else {}
    source = base[1] if base else "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            where = f" (relative to {Path.cwd()})" * (not path.is_absolute())
            shipped = CHECKOUT / path
            if not path.is_absolute() and shipped.is_file():
                where += (f"; this mmvm checkout has {shipped} (run from {CHECKOUT}, "
                          f"where its data paths point too, or give that path)")
            if path.is_dir():
                held = sorted(p.name for p in path.glob("*.toml"))[:5]
                raise ConfigError(f"config file {path} is a folder; give a .toml file"
                                  + (f" (it holds {', '.join(held)})" if held else ""))
            raise ConfigError(f"config file {path} does not exist{where}{_nearby(path)}")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        except OSError as err:
            raise ConfigError(f"config file {path}: {err.strerror}") from None
    merged = copy.deepcopy(raw)
    for item in overrides or []:
        apply_override(merged, item)
    try:
        return config_from_dict(merged, source)
    except ConfigError as err:  # say so when the culprit is an override, not the file
        if len(overrides or []) > CULPRIT_SEARCH:  # each try re-checks the whole config
            raise
        item = _culprit(raw, overrides or [], source, str(err))
        if item is None:
            raise
        raise ConfigError(str(err).replace(source, f"{source}, override {item!r}", 1)) from None


def _culprit(raw: dict, overrides: list[str], source: str, error: str) -> str | None:
    """The override that makes a valid file fail with ``error`` (applied one by one:
    the first after which it fails so; else the first after which it fails), or None
    when the file fails without them."""
    failed = []
    for k in range(len(overrides) + 1):
        if k:
            apply_override(raw, overrides[k - 1])
        try:
            config_from_dict(raw, source)
        except ConfigError as err:
            if not k:
                return None
            if str(err) == error:
                return overrides[k - 1]
            failed.append(overrides[k - 1])
    return failed[0] if failed else None


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    raw = dict(check_table(raw, "", source))
    model_raw = dict(check_table(raw.pop("model", {}), "model", source))
    mods_raw = model_raw.pop("modalities", {})
    if not isinstance(mods_raw, dict) or not mods_raw:
        raise ConfigError(f"{source}: [model.modalities.<name>] tables are required")
    for name, body in mods_raw.items():
        if "name" in check_table(body, f"model.modalities.{name}", source):
            raise ConfigError(
                f"{source}: model.modalities.{name}.name: a modality is named by its "
                f"table key ({name!r}); remove the 'name' key"
            )
        missing = [k for k in ("kind", "shape") if k not in body]
        if missing:  # most often an override's typo: model.modalities.m9.width=4
            others = [n for n, b in mods_raw.items() if "kind" in b and "shape" in b]
            near = [n for n in others if n.lower() == name.lower()] or \
                difflib.get_close_matches(name, others, n=1)
            raise ConfigError(
                f"{source}: [model.modalities.{name}] has no {' and no '.join(missing)}: "
                f"a modality of its own needs both"
                + (f"; the config's modalities are {', '.join(others)}" if others else "")
                + (f" (did you mean {near[0]!r}?)" if near else ""))
    specs = tuple(
        build_table(ModalitySpec, {"name": name, **body}, f"model.modalities.{name}", source)
        for name, body in mods_raw.items()
    )
    sections = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
    reject_unknown_sections(raw, {**sections, "model": ModelConfig}, source)
    built = {k: build_table(cls, raw.get(k, {}), k, source) for k, cls in sections.items()}
    model = build_table(ModelConfig, model_raw, "model", source, extra={"modalities": specs})
    from mmvm.aggregation import available_methods, has_private_latent

    if model.method not in available_methods():
        raise ConfigError(
            f"{source}: model.method = {model.method!r} is unknown; choose one of {available_methods()}"
        )
    if has_private_latent(model.method) != (model.private_dim > 0) or model.private_dim < 0:
        raise ConfigError(
            f"{source}: model.private_dim = {model.private_dim}: MMVAE+ (method "
            f"'mmvaeplus') needs a modality-specific latent (private_dim >= 1); every "
            f"other method needs private_dim = 0")
    from mmvm.accel import ADAM_KERNELS, AMP_MODES

    for key, choices in (("amp", AMP_MODES), ("adam", ADAM_KERNELS)):
        value = getattr(built["train"], key)
        if value not in choices:
            raise ConfigError(f"{source}: train.{key} = {value!r}; choose "
                              f"{', '.join(choices[:-1])} or {choices[-1]}")
    if built["train"].alpha_schedule not in ("constant", "linear", "cosine", "exponential"):
        raise ConfigError(f"{source}: train.alpha_schedule = {built['train'].alpha_schedule!r}"
                          f"; choose constant, linear, cosine or exponential")
    from mmvm.schedule import SCHEDULES

    if built["data"].schedule not in SCHEDULES:
        raise ConfigError(
            f"{source}: data.schedule = {built['data'].schedule!r}; choose "
            f"{' or '.join(SCHEDULES)}"
        )
    if built["data"].schedule == "grouped" and not built["data"].streaming:
        raise ConfigError(
            f"{source}: data.schedule = 'grouped' follows Parquet row groups and needs "
            "data.streaming = true"
        )
    from mmvm.probes import METRICS

    if built["eval"].metric not in METRICS:
        raise ConfigError(f"{source}: eval.metric = {built['eval'].metric!r}; choose "
                          f"{', '.join(METRICS)}")
    if built["eval"].metric != "accuracy" and not built["eval"].labels:
        raise ConfigError(f"{source}: eval.metric = {built['eval'].metric!r} scores "
                          "per-label probes; name their columns in eval.labels")
    cfg = ExperimentConfig(model=model, source=source, **built)
    problem = range_problem(cfg)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """A plain dict (JSON/TOML-able) of the config, modalities keyed by name."""
    d = dataclasses.asdict(cfg)
    d["model"]["modalities"] = {m.pop("name"): {
        k: list(v) if isinstance(v, tuple) else v for k, v in m.items()}
        for m in d["model"]["modalities"]}
    return d
