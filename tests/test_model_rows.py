"""mmvm.model runs a modality's networks on its present rows only.

A sample that lacks modality m holds filler in x[m]. With BatchNorm in training mode,
running the network on the whole batch would put that filler into the batch
statistics (so into every present row's output and gradient) and into the running
averages; a federated site, which holds only its own rows, would then normalise
over other rows than the centralized model. These tests fill the absent rows with
zeros, noise or huge values and ask for the very same outputs, statistics and
gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mmvm.config import ModalitySpec
from mmvm.model import MultimodalVAE
from mmvm.objectives import compute_loss

torch.set_num_threads(1)
D, B = 4, 6
IMG = ModalitySpec("img", "image", (1, 64, 64), width=2, network="res_image")
TXT = ModalitySpec("txt", "tokens", (32,), likelihood="categorical", classes=7, width=2)
VEC = ModalitySpec("vec", "vector", (5,), likelihood="gaussian", scale=1.0, width=6)
# rows 1 and 4 lack img, row 2 lacks txt, rows 0 and 5 lack vec; every row has one
MASK = torch.tensor([[True, True, False], [False, True, True], [True, False, True],
                     [True, True, True], [False, True, True], [True, True, False]])
FILLERS = ("zeros", "noise", "huge")


def _model(method_private: int = 0) -> MultimodalVAE:
    return MultimodalVAE([IMG, TXT, VEC], D, seed=0, private_dim=method_private).train()


def _x(filler: str) -> dict[str, torch.Tensor]:
    """The same present rows; absent rows hold ``filler``."""
    g = torch.Generator().manual_seed(0)
    x = {"img": torch.rand(B, 1, 64, 64, generator=g),
         "txt": torch.randint(0, 7, (B, 32), generator=g).float(),
         "vec": torch.randn(B, 5, generator=g)}
    f = torch.Generator().manual_seed(1)
    for m, name in enumerate(("img", "txt", "vec")):
        absent = ~MASK[:, m]
        shape = (int(absent.sum()), *x[name].shape[1:])
        if name == "txt":  # token ids: filler must stay a valid id or the row raises
            fill = {"zeros": torch.zeros(shape), "noise": torch.randint(0, 7, shape, generator=f),
                    "huge": torch.full(shape, 6.0)}[filler]
        else:
            fill = {"zeros": torch.zeros(shape), "noise": torch.randn(shape, generator=f),
                    "huge": torch.full(shape, 1e6)}[filler]
        x[name][absent] = fill.float()
    return x


def _first_norm(module: torch.nn.Module) -> torch.nn.BatchNorm2d:
    return next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_encoder_outputs_and_running_stats_ignore_absent_rows():
    base = _model()
    outs, stats = {}, {}
    for filler in FILLERS:
        model = copy.deepcopy(base)
        outs[filler] = model.encode(_x(filler), MASK)
        stats[filler] = {k: v.clone() for k, v in model.named_buffers() if "running" in k}
    for filler in FILLERS[1:]:
        for a, b in zip(outs["zeros"], outs[filler], strict=True):
            assert torch.equal(a, b), filler
        assert all(torch.equal(stats["zeros"][k], v) for k, v in stats[filler].items()), filler
    mu, lv = outs["zeros"]
    assert torch.equal(mu[~MASK], torch.zeros(int((~MASK).sum()), D))
    assert torch.equal(lv[~MASK], torch.zeros(int((~MASK).sum()), D))


@pytest.mark.parametrize("name", ["img", "txt"])
def test_running_mean_is_the_present_rows_mean(name):
    """The first BatchNorm's running mean after one training forward from zero is
    momentum x the batch mean of its input over the present rows alone."""
    model = _model()
    m = model.names.index(name)
    x = _x("huge")
    enc = model.encoders[name]
    norm = _first_norm(enc)
    seen = []
    hook = norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    model.encode(x, MASK)
    hook.remove()
    (h,) = seen
    present = MASK[:, m]
    assert h.shape[0] == int(present.sum())  # only present rows reached the norm
    with torch.no_grad():  # the norm's input, computed apart from the model
        if name == "img":
            ref = enc.features[0](x["img"][present])
        else:
            ref = enc.enc[0](enc.embedding(x["txt"][present].long()).unsqueeze(1))
    torch.testing.assert_close(h, ref)
    torch.testing.assert_close(norm.running_mean, norm.momentum * ref.mean((0, 2, 3)))
    var = ref.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(norm.running_var, (1 - norm.momentum) + norm.momentum * var)


def test_decoders_run_on_present_rows_only():
    base = _model()
    g = torch.Generator().manual_seed(2)
    z = torch.randn(B, 3, D, generator=g)
    lls, stats = {}, {}
    for filler in FILLERS:
        model = copy.deepcopy(base)
        zf = z.clone()
        zf[~MASK] = {"zeros": 0.0, "noise": 3.0, "huge": 1e4}[filler]  # absent rows' z
        lls[filler] = model.reconstruction_ll(_x(filler), zf, MASK)
        stats[filler] = {k: v.clone() for k, v in model.decoders.named_buffers()
                         if "running" in k}
    for filler in FILLERS[1:]:
        assert torch.equal(lls["zeros"], lls[filler]), filler
        assert all(torch.equal(stats["zeros"][k], v) for k, v in stats[filler].items())
    assert torch.equal(lls["zeros"][~MASK], torch.zeros(int((~MASK).sum())))
    assert bool((lls["zeros"][MASK] != 0).all())


@pytest.mark.parametrize("method", ["mmvm", "mopoe", "mmvaeplus"])
def test_gradients_do_not_depend_on_absent_rows(method):
    private = 2 if method == "mmvaeplus" else 0
    base = _model(private)
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(B, 3, D + private, generator=g)
    grads = {}
    for filler in FILLERS:
        model = copy.deepcopy(base)
        terms = compute_loss(model, {"x": _x(filler), "mask": MASK}, method, 1.0, 0.5, eps)
        assert torch.isfinite(terms.loss)
        terms.loss.backward()
        grads[filler] = {k: p.grad.clone() for k, p in model.named_parameters()
                         if p.grad is not None}
    assert any("encoders.img" in k for k in grads["zeros"])  # the BN nets got gradients
    for filler in FILLERS[1:]:
        assert set(grads[filler]) == set(grads["zeros"])
        for k, v in grads[filler].items():
            assert torch.equal(grads["zeros"][k], v), (filler, k)


def test_filler_is_never_checked_but_present_rows_are():
    """NaN in an absent row is filler nobody reads; in a present row it is refused,
    the message naming the batch row."""
    model = _model()
    x = _x("zeros")
    x["img"][1] = float("nan")  # row 1 lacks img
    mu, _ = model.encode(x, MASK)
    assert bool(torch.isfinite(mu).all())
    x["img"][3, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"modality .img.: NaN or inf in the input at batch positions \[3\] of"):
        model.encode(x, MASK)


def test_a_single_present_row_runs_on_running_statistics():
    """res_image cannot normalise one sample over 1 x 1 maps: a lone present row
    runs its networks in evaluation mode, statistics untouched, modes restored."""
    model = _model()
    mask = MASK.clone()
    mask[:, 0] = False
    mask[3, 0] = True  # img in row 3 only
    before = {k: v.clone() for k, v in model.named_buffers()}
    mu, _ = model.encode(_x("noise"), mask)
    rec = model.reconstruction_ll(_x("noise"), torch.zeros(B, 3, D), mask)
    assert bool(torch.isfinite(mu).all()) and bool(torch.isfinite(rec).all())
    for k, v in model.named_buffers():
        if k.startswith(("encoders.img", "decoders.img")):
            assert torch.equal(before[k], v), k
    assert all(m.training for m in model.modules())
    with torch.no_grad():  # it is the evaluation-mode output of that row
        ref = copy.deepcopy(model).eval().encode_modality("img", _x("noise")["img"][3:4])[0]
    torch.testing.assert_close(mu[3, 0], ref[0])
