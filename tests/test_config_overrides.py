"""mmvm.config: --set overrides, and a clear error naming the key for every typo or wrong type."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmvm.config import (
    ConfigError,
    config_from_dict,
    load_config,
)

POLYMNIST = Path(__file__).resolve().parents[1] / "configs" / "polymnist.toml"


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
    # a run config's set='...' with two overrides and no ';' between them
    ("train.epochs=5 train.num_threads=1", r"holds two or more: separate them with ';'"),
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


def test_several_typos_in_a_table_are_named_at_once(tmp_path):
    """Five typos took five runs to find, one error each (the walkthrough)."""
    bad = tmp_path / "typos.toml"
    bad.write_text(POLYMNIST.read_text().replace("[train]\n", "[train]\nepochz = 3\n"
                                                 "lerning_rate = 0.1\n", 1))
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(
        f"{bad}: 2 unknown keys: 'train.epochz'; did you mean 'train.epochs'? | "
        f"'train.lerning_rate'")


def test_a_misspelt_modalities_table_is_suggested(tmp_path):
    """``[model.modalites.rat2]`` beside correct modality tables listed the model's
    keys without ``modalities`` (read apart from the others) and suggested nothing."""
    bad = tmp_path / "lab.toml"
    bad.write_text(POLYMNIST.read_text() + '\n[model.modalites.rat2]\nkind = "vector"\n')
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == (
        f"{bad}: unknown key 'model.modalites'; did you mean 'model.modalities'? "
        f"(valid: latent_dim, method, modalities, private_dim)")


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
