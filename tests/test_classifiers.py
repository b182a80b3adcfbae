"""Judges: reproducible training, augmented batches, ensembles (mmvm.classifiers)."""

import pytest
import torch

from mmvm.classifiers import (
    ClassifierConfig,
    Ensemble,
    ImageClassifier,
    build_classifier,
    train_classifier,
)


def test_ensemble_votes_by_mean_log_probability():
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    # two judges lean weakly to class 0, one strongly to class 1: the mean
    # log-probability prefers 1 although a majority vote would say 0
    ens = Ensemble([Fixed([0.2, 0.0]), Fixed([0.2, 0.0]), Fixed([0.0, 5.0])])
    out = ens(torch.zeros(2, 1))
    want = torch.stack([torch.tensor(v).log_softmax(-1)
                        for v in ([0.2, 0.0], [0.2, 0.0], [0.0, 5.0])]).mean(0)
    assert torch.allclose(out, want.expand(2, -1)) and out.argmax(1).tolist() == [1, 1]


def test_ensemble_members_train_from_consecutive_seeds():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 3, 28, 28, generator=g), torch.randint(0, 3, (40,), generator=g)
    cfg = ClassifierConfig(epochs=1, width=2, batch_size=20, seed=5, rotate=10.0, shift=1)
    ens = train_classifier(x, y, 3, ClassifierConfig(**{**cfg.__dict__, "members": 2}))
    assert isinstance(ens, Ensemble) and len(ens.members) == 2
    for i, member in enumerate(ens.members):
        alone = train_classifier(x, y, 3, ClassifierConfig(**{**cfg.__dict__, "seed": 5 + i}))
        for p, q in zip(member.state_dict().values(), alone.state_dict().values(),
                        strict=True):
            assert torch.equal(p, q)
    rebuilt = build_classifier((3, 28, 28), 3, 2, members=2)
    rebuilt.load_state_dict(ens.state_dict())  # the cache restores the same layout
    assert isinstance(rebuilt.members[0], ImageClassifier)
    with pytest.raises(ValueError, match="no labelled rows"):
        train_classifier(x[:0], y[:0], 3, cfg)
