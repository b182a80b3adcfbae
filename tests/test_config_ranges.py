"""mmvm.config_ranges: values out of range, non-finite or unknown are refused at load, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmvm.config import (
    ConfigError,
    load_config,
)
from mmvm.config_ranges import MAX_SEED

POLYMNIST = Path(__file__).resolve().parents[1] / "configs" / "polymnist.toml"


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
    section, _, rest = item.partition(".")
    key, _, value = rest.partition("=")
    assert getattr(getattr(load_config(POLYMNIST, [item]), section), key) == int(value)


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
