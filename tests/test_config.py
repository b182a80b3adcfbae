"""mmvm.config: strict TOML loading of the shipped configs, their specs and round trip."""

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
    # the five rats' unit counts (docs/protocol.md, "The paper's settings") x 10 bins
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
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist; the folder has "
                                          r"no \.toml file$"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "hippocampus.toml").write_text("")
    (tmp_path / "polymnist.toml").write_text("")
    with pytest.raises(ConfigError, match=r"hipocampus\.toml does not exist; did you mean "
                                          r"'hippocampus\.toml'\?$"):  # mmvm train too
        load_config(tmp_path / "hipocampus.toml")
    with pytest.raises(ConfigError, match=r"celeba\.toml does not exist; the folder has "
                                          r"hippocampus\.toml, polymnist\.toml$"):
        load_config(tmp_path / "celeba.toml")
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
