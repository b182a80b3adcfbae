"""CUB image-captions end to end: prepare a tiny tree in the published layout at
64 x 64, train configs/cub.toml (cub_image + cub_text over the prepared vocabulary)
at width 4, then image-caption coherence judged by an image classifier and a token
classifier trained on the real data; one federated window with an image site and a
text site.

Two classes and six images: coherence is checked for being computed and in range,
not for beating chance.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mmvm.classifier_nets import TokenClassifier
from mmvm.classifiers import ClassifierConfig, load_or_train
from mmvm.config import load_config
from mmvm.data import check_token_classes, open_dataset
from mmvm.data.dataset import MultimodalDataset
from mmvm.data.prepare.cub import prepare_cub
from mmvm.data.sites import site_layout, split_sites
from mmvm.data.store import DataError, read_site_meta
from mmvm.evaluation import evaluate_run
from mmvm.federation.local import run_local
from mmvm.federation.settings import settings_for
from mmvm.training import train
from tests.support.published import cub_tree

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cub.toml"
NAMES = ["image", "text"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cub")
    cub_tree(root / "src")
    paths = prepare_cub(root / "src", root / "data", size=64)
    vocab = len(read_site_meta(paths["train"])["dataset"]["vocab"])
    return root / "data", vocab


def _cfg(data: Path, vocab: int, out: Path, *overrides: str):
    return load_config(CONFIG, [
        f"data.root={data}", f"train.out_dir={out}", "train.device=cpu",
        "model.latent_dim=8", "model.modalities.image.width=4",
        "model.modalities.text.width=4", f"model.modalities.text.classes={vocab}",
        "train.batch_size=8", "train.epochs=1", "train.lr=2e-3", *overrides])


def test_vocabulary_size_is_checked_against_the_prepared_data(prepared, tmp_path):
    data, vocab = prepared
    cfg = _cfg(data, vocab + 5, tmp_path)
    with pytest.raises(DataError, match=rf"modality 'text' was prepared with a vocabulary "
                                        rf"of {vocab} tokens, the config says classes = "
                                        rf"{vocab + 5}; set model\.modalities\.text\.classes"
                                        rf" = {vocab}"):
        check_token_classes(cfg.model.modalities, cfg.data.files("train"))
    check_token_classes(_cfg(data, vocab, tmp_path).model.modalities,
                        cfg.data.files("train"))
    small = _cfg(data, 3, tmp_path / "small")  # ids beyond the vocabulary: first batch
    with pytest.raises(ValueError, match=r"modality 'text': token ids must lie in \[0, 3\)"
                                         r".*model\.modalities\.text\.classes"):
        train(small, open_dataset(small.data.files("train"), NAMES, small.data),
              show_progress=False)


def test_central_training_then_image_caption_coherence(prepared, tmp_path):
    data, vocab = prepared
    cfg = _cfg(data, vocab, tmp_path / "run", "train.epochs=3")
    train_set = open_dataset(cfg.data.files("train"), NAMES, cfg.data)
    result = train(cfg, train_set, show_progress=False)
    losses = [r["loss"] for r in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    model = result.model
    captions = model.generate("text", torch.randn(4, 8))  # most likely token per position
    assert captions.shape == (4, 32)
    assert bool((captions == captions.round()).all() & (captions >= 0).all()
                & (captions < vocab).all())
    clfs = load_or_train(cfg.data.files("train"), cfg.data.files("test"), NAMES,
                         cfg=ClassifierConfig(epochs=3, width=4),
                         cache_dir=tmp_path / "clfs", tokens={"text": vocab})
    assert isinstance(clfs["text"], TokenClassifier)
    assert all(0.0 <= a <= 1.0 for a in clfs.test_accuracy.values())
    test = MultimodalDataset.from_parquet(cfg.data.files("test"), NAMES, cfg.data.label)
    ev = evaluate_run(cfg, model, train_set, test, clfs)
    coh = ev["coherence"]
    assert set(coh["pairs"]) == {f"{s}->{t}" for s in NAMES for t in NAMES}
    assert all(0.0 <= v <= 1.0 for v in coh["pairs"].values())
    assert 0.0 <= coh["mean"] <= 1.0  # mean of image->text and text->image
    assert all(0.0 <= ev["probe"][m] <= 1.0 for m in NAMES)  # bird-class probes
    # a second call reads the cached token classifier back
    again = load_or_train(cfg.data.files("train"), cfg.data.files("test"), ["text"],
                          cfg=ClassifierConfig(epochs=3, width=4),
                          cache_dir=tmp_path / "clfs", tokens={"text": vocab})
    assert again.test_accuracy["text"] == clfs.test_accuracy["text"]
    x = test.batch(range(4))["x"]["text"]
    torch.testing.assert_close(again["text"](x), clfs["text"](x))


def test_one_federated_window_with_an_image_site_and_a_text_site(prepared, tmp_path):
    data, vocab = prepared
    cfg = _cfg(data, vocab, tmp_path / "fed")
    split = split_sites([data / "train.parquet", data / "test.parquet"], tmp_path / "sites",
                        site_layout("vertical", NAMES))
    files = {name: (f["train"], f["test"]) for name, f in split.items()}
    res, sites = run_local(settings_for(cfg, exchange="round", float16=False), files)
    assert len(res.history) == 1
    for ev in res.evaluation.values():
        (m,) = ev["modalities"]
        assert math.isfinite(ev[f"recon_nll/{m}"]) and 0.0 <= ev[f"probe/{m}"] <= 1.0


def test_exchange_every_step_reproduces_centralized_parameters(prepared, tmp_path):
    """The BatchNorm layers of cub_image and cub_text see the same batches at their
    sites as in the centralized model, so per-step exchange keeps the parameters and
    the running statistics exact: a site's encoder pass for the posteriors it sends is
    the step's own (``mmvm.federation.lookahead``), which updates the statistics once,
    when the step runs, as the centralized model does."""
    data, vocab = prepared
    cfg = _cfg(data, vocab, tmp_path / "central", "train.epochs=1")
    split = split_sites([data / "train.parquet"], tmp_path / "sites",
                        site_layout("vertical", NAMES))
    files = {name: (f["train"], None) for name, f in split.items()}
    _, sites = run_local(settings_for(cfg, exchange="step", float16=False), files)
    assert all(s.forwards_reused > 0 for s in sites.values())
    fed = {k: v for s in sites.values() for m in s.names for k, v in s.weights(m).items()}
    joined = open_dataset([f for f, _ in files.values()], NAMES, cfg.data)
    model = train(cfg, joined, resume=False, show_progress=False).model
    central = {k: v for k, v in model.state_dict().items() if k in fed}
    assert set(central) == set(fed)
    buffers = [k for k in central if "running_" in k]
    assert buffers and all(float(abs(central[k]).max()) > 0 for k in buffers)
    for k in central:
        worst = float(abs(fed[k] - central[k].numpy()).max())
        assert worst < 1e-4, f"{k}: largest difference {worst}"
