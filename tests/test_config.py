"""mmvm.config: strict TOML loading, --set overrides, clear errors for every mistake."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

from mmvm.config import (
    CHECKOUT,
    ConfigError,
    ExperimentConfig,
    ModalitySpec,
    config_from_dict,
    config_to_dict,
    load_config,
)
from mmvm.config_ranges import MAX_SEED

ROOT = Path(__file__).resolve().parents[1]
POLYMNIST = ROOT / "configs" / "polymnist.toml"
HIPPOCAMPUS = ROOT / "configs" / "hippocampus.toml"
CELEBA = ROOT / "configs" / "celeba.toml"
CUB = ROOT / "configs" / "cub.toml"
MIMIC = ROOT / "configs" / "mimic_cxr.toml"


def _minimal(**train) -> dict:
    return {"model": {"latent_dim": 8, "modalities": {
        "a": {"kind": "vector", "shape": [3]},
        "b": {"kind": "image", "shape": [1, 28, 28], "width": 4}}},
        "train": dict(train)}


# ----------------------------------------------------------------------------- files
def test_polymnist_config_values():
    cfg = load_config(POLYMNIST)
    assert cfg.source == str(POLYMNIST)
    assert [m.name for m in cfg.model.modalities] == ["m0", "m1", "m2"]
    for m in cfg.model.modalities:
        assert (m.kind, m.shape, m.likelihood, m.scale, m.width) == (
            "image", (3, 28, 28), "laplace", 0.75, 16)
        assert m.weight == 1.0  # the default, w_m = 1 for images (reference note)
    assert cfg.model.method == "mmvm" and cfg.model.latent_dim == 64
    assert cfg.train.epochs == 10 and cfg.train.batch_size == 128
    assert cfg.train.lr == pytest.approx(5e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.beta == 1.0 and isinstance(cfg.train.beta, float)  # TOML 1.0 ok
    assert cfg.train.alpha == 0.0 and cfg.train.alpha_schedule == "constant"
    assert cfg.data.root == "data/polymnist" and cfg.data.train == "train.parquet"
    assert cfg.eval.probe_train == 10000


def test_hippocampus_config_values():
    cfg = load_config(HIPPOCAMPUS)
    shapes = {m.name: m.shape for m in cfg.model.modalities}
    # the five rats' unit counts (reference note, section 4) x 10 bins
    assert shapes == {"rat1": (92, 10), "rat2": (79, 10), "rat3": (104, 10),
                      "rat4": (49, 10), "rat5": (46, 10)}
    assert all(m.kind == "vector" and m.likelihood == "mse" and m.width == 0
               and m.layers == 2 for m in cfg.model.modalities)
    assert cfg.model.latent_dim == 2 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.checkpoint_every == 10


def test_defaults_without_file_need_modalities():
    with pytest.raises(ConfigError, match=r"model\.modalities"):
        load_config(None)
    cfg = load_config(None, ['model.modalities.a.kind="vector"', "model.modalities.a.shape=[5]"])
    assert cfg.source == "<defaults>"
    assert cfg.model.modalities == (ModalitySpec("a", "vector", (5,)),)
    assert cfg.train == ExperimentConfig().train


def test_missing_file_and_invalid_toml(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml")
    # a checkout's config named from another folder: where it is
    monkeypatch.chdir(tmp_path)
    relative = Path("configs/polymnist.toml")
    with pytest.raises(ConfigError) as info:
        load_config(relative)
    assert str(info.value) == (
        f"config file {relative} does not exist (relative to {tmp_path}); this mmvm "
        f"checkout has {CHECKOUT / relative} (run from {CHECKOUT}, where its data paths "
        f"point too, or give that path)")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)


# ------------------------------------------------------------------------- overrides
def test_overrides_scalar_nested_and_string_forms():
    cfg = load_config(POLYMNIST, [
        "train.epochs=3", "train.lr=1", "model.modalities.m1.width=8",
        "model.modalities.m2.weight=2.5", "train.out_dir=runs/x",  # bare string
        'model.method="poe"', "model.latent_dim = 16"])
    assert cfg.train.epochs == 3
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int -> float
    widths = {m.name: m.width for m in cfg.model.modalities}
    assert widths == {"m0": 16, "m1": 8, "m2": 16}
    assert [m.weight for m in cfg.model.modalities] == [1.0, 1.0, 2.5]
    assert cfg.train.out_dir == "runs/x"
    assert cfg.model.method == "poe" and cfg.model.latent_dim == 16
    # the later of two overrides of the same key wins
    assert load_config(POLYMNIST, ["train.epochs=3", "train.epochs=7"]).train.epochs == 7


def test_override_adds_a_modality_and_shape_list():
    cfg = load_config(POLYMNIST, ['model.modalities.txt.kind="vector"',
                                  "model.modalities.txt.shape=[4, 2]"])
    assert [m.name for m in cfg.model.modalities] == ["m0", "m1", "m2", "txt"]
    assert cfg.model.modalities[-1].shape == (4, 2)


@pytest.mark.parametrize("item, match", [
    ("train.epochs", r"'train\.epochs' must look like section\.key=value"),
    ("train.epochs.x=3", r"'epochs' is a value, not a section"),
])
def test_malformed_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config(POLYMNIST, [item])


# ----------------------------------------------------------------------------- typos
@pytest.mark.parametrize("item, key, hint", [
    ("train.epochz=1", "train.epochz", "train.epochs"),
    ("trian.epochs=1", "trian", "train"),
    ("model.latnt_dim=4", "model.latnt_dim", "model.latent_dim"),
    ("model.modalities.m0.widht=4", "model.modalities.m0.widht", "model.modalities.m0.width"),
    ("data.max_trian=4", "data.max_trian", "data.max_train"),
    ("epochs=2", "epochs", "train.epochs"),          # the section left out
    ("latent_dim=8", "latent_dim", "model.latent_dim"),
])
def test_override_typo_names_key_and_suggests(item, key, hint):
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, [item])
    msg = str(info.value)
    assert f"unknown key '{key}'" in msg
    assert f"did you mean '{hint}'?" in msg
    assert f"{POLYMNIST}, override '{item}': unknown key" in msg  # the typo is not the file's


def test_file_typo_names_file_key_and_suggestion(tmp_path):
    text = POLYMNIST.read_text().replace("checkpoint_every = 1", "checkpoint_evry = 1")
    text = text.replace('likelihood = "laplace"\nscale = 0.75\nwidth = 16\n\n[model.modalities.m2]',
                        'likelihood = "laplace"\nscael = 0.75\nwidth = 16\n\n[model.modalities.m2]')
    bad = tmp_path / "typo.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    msg = str(info.value)
    # modalities are checked first: the m1 typo is reported
    assert str(bad) in msg and "'model.modalities.m1.scael'" in msg
    assert "did you mean 'model.modalities.m1.scale'?" in msg
    bad.write_text(text.replace("scael", "scale"))
    with pytest.raises(ConfigError, match=r"typo\.toml: unknown key 'train\.checkpoint_evry'; "
                                          r"did you mean 'train\.checkpoint_every'\?"):
        load_config(bad)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, ["train.zzzz=1"])
    msg = str(info.value)
    assert "'train.zzzz'" in msg and "did you mean" not in msg
    assert "valid: " in msg and "epochs" in msg and "batch_size" in msg


def test_name_key_inside_a_modality_table_is_rejected():
    # the table key names the modality; a 'name' field would silently rename it
    with pytest.raises(ConfigError, match=r"model\.modalities\.m0\.name"):
        load_config(POLYMNIST, ['model.modalities.m0.name="zz"'])


# ----------------------------------------------------------------------------- types
@pytest.mark.parametrize("item, match", [
    ('train.epochs="3"', r"train\.epochs must be int, got str '3'"),
    ("train.epochs=3.5", r"train\.epochs must be int, got float 3\.5"),
    ("train.epochs=true", r"train\.epochs must be int, got bool True"),
    ("train.lr=true", r"train\.lr must be float, got bool"),
    ("train.device=3", r"train\.device must be str, got int 3"),
    ("model.latent_dim=[8]", r"model\.latent_dim must be int, got list"),
    ("model.modalities.m0.shape=3", r"model\.modalities\.m0\.shape must be a list of integers"),
    ('model.modalities.m0.shape=[3, "28", 28]', r"m0\.shape must be a list of integers"),
    ("train=3", r"\[train\] must be a table"),
    # a section given as a value, and a table where a value belongs: no TypeError
    ("model=1", r": \[model\] must be a table \(key = value pairs\), got int 1$"),
    ("model.modalities.m0=1",
     r": \[model\.modalities\.m0\] must be a table \(key = value pairs\), got int 1$"),
    ("model.modalities.m1=[1, 2]", r"\[model\.modalities\.m1\] must be a table .*got list"),
    ('data="x"', r"\[data\] must be a table \(key = value pairs\), got str 'x'$"),
    ("train.epochs={a=1}", r"train\.epochs must be int, got dict \{'a': 1\}$"),
    ("model.method={a=1}", r"model\.method must be str, got dict"),
    ("model.modalities.m0.scale={x=1}", r"model\.modalities\.m0\.scale must be float"),
])
def test_wrong_types_name_the_key(item, match):
    with pytest.raises(ConfigError, match=match):
        load_config(POLYMNIST, [item])


def test_a_section_given_as_a_value_names_the_override_and_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, ["model=1"])
    assert str(info.value) == (f"{POLYMNIST}, override 'model=1': [model] must be a "
                               f"table (key = value pairs), got int 1")
    bad = tmp_path / "flat.toml"
    bad.write_text('model = 3\n[train]\nepochs = 2\n')
    with pytest.raises(ConfigError, match=r"flat\.toml: \[model\] must be a table"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"^<dict>: the config must be a table"):
        config_from_dict([("model", {})])  # a run's config.json holding a list


# ---------------------------------------------------------------------- bad values
@pytest.mark.parametrize("item, match", [
    ('model.method="mvae"', r"model\.method = 'mvae' is unknown; choose one of .*'mmvm'"),
    ('train.alpha_schedule="step"', r"train\.alpha_schedule = 'step'; choose constant, linear"),
    ("model.modalities.m0.shape=[3, 32, 32]",
     r"modality 'm0': network 'conv28' takes \[C, 28, 28\], got shape \[3, 32, 32\] "
     r"\(other image networks: .*res_image takes \[C, 64, 64\] or \[C, 224, 224\]"),
    ("model.modalities.m1.shape=[3, 28]",
     r"modality 'm1': network 'conv28' takes \[C, 28, 28\], got shape \[3, 28\]"),
    ("model.modalities.m0.shape=[3, 32, 32]", r"polymnist_resnet takes \[C, 28, 28\]"),
    ('model.modalities.m0.network="res_image"',
     r"modality 'm0': network 'res_image' takes \[C, 64, 64\] or \[C, 224, 224\] "
     r"\(no other size\), got shape \[3, 28, 28\]"),
    ('model.modalities.m0.network="mlp"',
     r"modality 'm0': network 'mlp' is for kind 'vector', not 'image'; image networks: "
     r"\['conv28', 'cub_image', 'polymnist_resnet', 'res_image'\]"),
    ('model.modalities.m0.network="vit"', r"modality 'm0': unknown network 'vit'; choose "),
    ('model.modalities.m0.kind="tokens"',
     r"modality 'm0': kind 'tokens' needs likelihood = 'categorical' and classes >= 2"),
    ("model.modalities.m0.classes=10", r"modality 'm0': classes is the vocabulary of a "
                                       r"'tokens' modality; kind 'image' takes classes = 0"),
    ("model.modalities.m0.scale=0", r"modality 'm0': scale must be > 0"),
    ("model.modalities.m2.scale=-0.5", r"modality 'm2': scale must be > 0"),
    ("model.modalities.m0.weight=-1", r"modality 'm0': .*weight >= 0"),
    ('model.modalities.m0.kind="audio"', r"modality 'm0': kind must be 'image', 'vector' or 'tokens'"),
    ('model.modalities.m0.likelihood="negbinom"', r"modality 'm0': unknown likelihood 'negbinom'"),
    ('model.modalities.m0.likelihood="poisson"',
     r"modality 'm0': likelihood 'poisson' is for counts, a 'vector' modality"),
    ("model.modalities.m0.shape=[0, 28, 28]", r"modality 'm0': shape must be .*positive"),
    ("model.modalities.m0.width=0", r"modality 'm0': width must be >= 1"),
    ("train.checkpoint_every=0", r"train\.checkpoint_every must be >= 1, got 0"),
    ("train.batch_size=0", r"train\.batch_size must be >= 1"),
    ("train.epochs=0", r"train\.epochs must be >= 1"),
    ("train.lr=-1e-3", r"train\.lr must be > 0"),
    ("train.alpha=1.5", r"train\.alpha must be in \[0, 1\]"),
    ("model.latent_dim=0", r"model\.latent_dim must be >= 1"),
    ("data.max_train=-1", r"data\.max_train must be >= 0"),
    ('eval.metric="f1"', r"eval\.metric = 'f1'; choose accuracy, auroc, ap"),
    ('eval.metric="auroc"', r"eval\.metric = 'auroc' scores per-label probes; name their "
                            r"columns in eval\.labels"),
    ("data.folders=[1]", r"data\.folders must be a list of strings"),
    ("model.modalities.m0.layers=1000000", r"modality 'm0': layers must be 0\.\.64"),
    ("model.modalities.m1.width=-4", r"modality 'm1': layers .* and width >= 0"),
])
def test_invalid_values_raise_naming_what(item, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(POLYMNIST, [item])
    assert str(POLYMNIST) in str(info.value)


@pytest.mark.parametrize("item, message", [
    # torch.set_num_threads(10**8) segfaulted in OpenMP at the first matrix product
    ("train.num_threads=100000000",
     "train.num_threads must be in 0..1024 (0: torch's default), got 100000000"),
    ("train.num_threads=-1", "train.num_threads must be in 0..1024 (0: torch's default), "
                             "got -1"),
    # seed * 100_003 + epoch overflowed torch's generator at the first epoch
    ("train.seed=9223372036854775807", f"train.seed must be in 0..{MAX_SEED} (derived "
                                       f"generator seeds must fit 64 bits), got "
                                       f"9223372036854775807"),
    (f"train.seed={MAX_SEED + 1}", f"train.seed must be in 0..{MAX_SEED} (derived generator "
                                   f"seeds must fit 64 bits), got {MAX_SEED + 1}"),
    ("train.seed=-1", f"train.seed must be in 0..{MAX_SEED} (derived generator seeds must "
                      f"fit 64 bits), got -1"),
])
def test_threads_and_seed_are_bounded_at_load(item, message):
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, [item])
    assert str(info.value) == f"{POLYMNIST}, override {item!r}: {message}"


@pytest.mark.parametrize("item", [f"train.seed={MAX_SEED}", "train.seed=4294967296",
                                  "train.num_threads=1024",
                                  "train.num_threads=0", "train.seed=0"])
def test_the_bounds_themselves_load(item):
    load_config(POLYMNIST, [item])


def test_the_largest_seed_runs_the_schedule_and_the_noise():
    from mmvm.noise import modality_noise
    from mmvm.schedule import epoch_batches, epoch_batches_grouped

    seed = MAX_SEED
    assert sum(len(b) for b in epoch_batches(10, 4, seed, 10_000)) == 10
    assert sum(len(b) for b in epoch_batches_grouped([[0, 1], [2, 3]], 2, seed, 10_000)) == 4
    assert modality_noise(seed, 10**9, 7, 2, 3).isfinite().all()


@pytest.mark.parametrize("item, key, value", [
    ("train.beta=inf", "train.beta", "inf"),  # passed ">= 0", then a loss of inf at step 0
    ("train.beta=nan", "train.beta", "nan"),
    ("train.lr=inf", "train.lr", "inf"),
    ("train.grad_clip=inf", "train.grad_clip", "inf"),
    ("train.alpha=nan", "train.alpha", "nan"),
    ("model.modalities.m0.scale=nan", "model.modalities.m0.scale", "nan"),  # no comparison fails
    ("model.modalities.m1.weight=inf", "model.modalities.m1.weight", "inf"),
    ("eval.classifier_rotate=nan", "eval.classifier_rotate", "nan"),
    ("train.lr=-inf", "train.lr", "-inf"),
])
def test_non_finite_float_settings_are_refused_at_load(item, key, value):
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, [item])
    assert str(info.value) == (f"{POLYMNIST}, override {item!r}: {key} must be a finite "
                               f"number, got {value}")


@pytest.mark.parametrize("item", ['train.out_dir=""', "train.out_dir=", 'train.out_dir="  "'])
def test_an_empty_out_dir_is_refused(item):
    """An empty train.out_dir wrote the run into the current folder, over a
    checkpoint.pt there."""
    with pytest.raises(ConfigError, match=r"train\.out_dir must be a folder, e\.g\. "
                       r"\"runs/my-run\" \(an empty one would write the run's checkpoint\.pt "
                       r"into the current folder\)"):
        load_config(POLYMNIST, [item])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_names_mmvm_knows_load(device):
    """Whether this machine has the device is asked when training starts, not here
    (a config is written on one machine and trained on another)."""
    assert load_config(POLYMNIST, [f'train.device="{device}"']).train.device == device


@pytest.mark.parametrize("device, hint", [
    ("tpu", ""), ("CPU", "; did you mean 'cpu'?"), ("Cuda:1", "; did you mean 'cuda:1'?"),
    ("cuda:", ""), ("cuda:one", ""), (" cpu", "; did you mean 'cpu'?"), ("", ""),
])
def test_unknown_device_names_are_refused_at_load(device, hint):
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, [f'train.device="{device}"'])
    assert str(info.value).endswith(
        f"train.device = {device!r} is not a device; choose auto, cpu, cuda, cuda:<n> or "
        f"mps{hint}")


def test_missing_required_shape_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.modalities\.x.*shape"):
        load_config(POLYMNIST, ['model.modalities.x.kind="vector"'])


def test_vector_width_zero_is_allowed_and_any_shape():
    cfg = config_from_dict(_minimal())
    a = cfg.model.modalities[0]
    assert a.kind == "vector" and a.width == 32
    cfg = load_config(HIPPOCAMPUS, ["model.modalities.rat1.shape=[7]"])
    assert cfg.model.modalities[0].shape == (7,) and cfg.model.modalities[0].width == 0


def test_paper_dataset_configs_name_their_networks_likelihoods_and_metrics():
    celeba, cub, mimic = load_config(CELEBA), load_config(CUB), load_config(MIMIC)
    img, attrs = celeba.model.modalities
    assert (img.network, img.shape, attrs.network, attrs.likelihood) == (
        "res_image", (3, 64, 64), "mlp", "bernoulli")
    assert attrs.weight == pytest.approx(64 * 64 / 40)  # pixels / modality size
    assert (celeba.eval.labels, celeba.eval.metric) == (("label.*",), "ap")
    img, text = cub.model.modalities
    assert (img.network, text.network, text.kind, text.shape) == (
        "cub_image", "cub_text", "tokens", (32,))
    assert text.weight == 64 * 64 / 32 and text.classes >= 2
    assert [m.shape for m in mimic.model.modalities] == [(1, 224, 224)] * 2
    assert mimic.model.latent_dim == 256 and mimic.eval.metric == "auroc"
    assert len(mimic.eval.labels) == 14
    root = Path(mimic.data.root)
    assert mimic.data.files("test") == [root / "frontal" / "test.parquet",
                                        root / "lateral" / "test.parquet"]
    assert celeba.data.files("train") == [Path(celeba.data.root) / "train.parquet"]


def test_network_and_layers_defaults_are_written_into_the_spec():
    cfg = config_from_dict(_minimal())
    vec, img = cfg.model.modalities
    assert (vec.network, vec.layers, img.network, img.layers) == ("mlp", 2, "conv28", 2)
    cfg = load_config(HIPPOCAMPUS, ["model.modalities.rat1.layers=3"])
    assert cfg.model.modalities[0].layers == 3
    body = config_to_dict(load_config(POLYMNIST))["model"]["modalities"]["m0"]
    assert (body["network"], body["classes"]) == ("conv28", 0)


# ------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("path", [POLYMNIST, HIPPOCAMPUS, CELEBA, CUB, MIMIC])
def test_config_to_dict_round_trip(path):
    first = next(iter(tomllib.loads(path.read_text())["model"]["modalities"]))
    cfg = load_config(path, ["train.epochs=2", f"model.modalities.{first}.weight=3"])
    d = config_to_dict(cfg)
    assert d["source"] == str(path)
    mods = d["model"]["modalities"]
    assert list(mods) == [m.name for m in cfg.model.modalities]
    assert all("name" not in body and isinstance(body["shape"], list) for body in mods.values())
    plain = json.loads(json.dumps(d))  # JSON-able, as written to config.json
    plain.pop("source")
    again = config_from_dict(plain, source=cfg.source)
    assert again == cfg
    assert config_to_dict(again) == d


def test_configs_are_frozen():
    cfg = load_config(POLYMNIST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_an_override_is_blamed_only_when_it_makes_the_error(tmp_path):
    """The override after which the config fails is named; one that merely shares a
    name with the file's typo is not, and a bad file with overrides names the file."""
    text = POLYMNIST.read_text()
    assert "\nepochs = " in text
    for typo in (text + "\n[traim]\nepochs = 2\n", text.replace("\nepochs = ", "\nepochz = ")):
        bad = tmp_path / "bad.toml"
        bad.write_text(typo)
        with pytest.raises(ConfigError) as info:
            load_config(bad, ["train.epochs=3"])
        assert str(info.value).startswith(f"{bad}: unknown key")
        assert ", override '" not in str(info.value)
    with pytest.raises(ConfigError) as info:  # fails only with both: the first is named
        load_config(POLYMNIST, ["train.lr=0.01", "model.method=mmvaeplus"])
    assert str(info.value).startswith(f"{POLYMNIST}, override 'model.method=mmvaeplus': "
                                      f"model.private_dim = 0")
    for item in ("foo=(", "a(b=1", "train.epochs=["):
        with pytest.raises(ConfigError):
            load_config(POLYMNIST, [item])
    # the search re-checks the config after each override (quadratic): beyond
    # CULPRIT_SEARCH overrides the error is the config's own, the override unnamed
    many = [f"model.modalities.x{i}={{kind=\"vector\", shape=[1]}}" for i in range(40)]
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, [*many, "train.lr=-1"])
    assert ", override '" not in str(info.value) and "lr" in str(info.value)
    with pytest.raises(ConfigError, match=r"override 'train.lr=-1'"):
        load_config(POLYMNIST, [*many[:3], "train.lr=-1"])


def test_an_empty_data_root_is_refused_and_dot_is_the_current_folder():
    """data.root = "" (an unset variable in a generated config) read the current
    folder's train.parquet without saying so."""
    with pytest.raises(ConfigError, match=r"data\.root must be the folder of "
                                          r"train\.parquet / test\.parquet"):
        load_config(POLYMNIST, ['data.root=""'])
    assert load_config(POLYMNIST, ['data.root="."']).data.root == "."


@pytest.mark.parametrize("name, hint", [("m9", ""), ("M0", " (did you mean 'm0'?)"),
                                        ("m00", " (did you mean 'm0'?)")])
def test_an_override_of_a_modality_the_config_lacks_names_the_configs_modalities(
        name, hint):
    with pytest.raises(ConfigError) as info:
        load_config(POLYMNIST, [f"model.modalities.{name}.width=4"])
    msg = str(info.value)
    assert f"[model.modalities.{name}] has no kind and no shape" in msg
    assert msg.endswith(f"the config's modalities are m0, m1, m2{hint}")
