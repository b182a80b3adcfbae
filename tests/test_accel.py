"""Adam's kernels (``train.adam``): every choice makes Adam's update, and a restored
state keeps the kernels the optimizer was built with."""

from pathlib import Path

import pytest
import torch

from mmvm import accel
from mmvm.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def reference_adam(p: torch.Tensor, grads: list[torch.Tensor], lr: float,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> torch.Tensor:
    """Adam as written in Kingma & Ba (2015), Algorithm 1, in float64."""
    p, m, v = p.double().clone(), torch.zeros_like(p, dtype=torch.float64), \
        torch.zeros_like(p, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return p


def run(kernels: str, p0: torch.Tensor, grads: list[torch.Tensor], lr: float
        ) -> tuple[torch.Tensor, torch.optim.Adam]:
    p = torch.nn.Parameter(p0.clone())
    opt = accel.adam([p], lr, kernels)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


@pytest.mark.parametrize("kernels", accel.ADAM_KERNELS)
def test_every_kernel_makes_adams_update(kernels):
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(37, 53, generator=gen)  # not a multiple of any vector width
    grads = [torch.randn(37, 53, generator=gen) for _ in range(5)]
    got, _ = run(kernels, p0, grads, lr=1e-2)
    torch.testing.assert_close(got.double(), reference_adam(p0, grads, 1e-2),
                               rtol=1e-5, atol=1e-6)


def test_first_step_moves_every_weight_by_lr_against_its_gradient():
    # closed form: after one step m_hat = g and v_hat = g^2, so p -= lr * g / (|g| + eps)
    p0, g = torch.zeros(64), torch.linspace(-3, 3, 64) + 0.01
    for kernels in accel.ADAM_KERNELS:
        got, _ = run(kernels, p0, [g], lr=0.1)
        torch.testing.assert_close(got, -0.1 * torch.sign(g), rtol=1e-6, atol=1e-6)


def test_the_kernels_asked_for_are_the_ones_used_on_a_cpu():
    flags = {k: run(k, torch.zeros(3), [torch.ones(3)], 1e-3)[1].param_groups[0]
             for k in accel.ADAM_KERNELS}
    assert flags["fused"]["fused"] is True
    assert flags["foreach"]["foreach"] is True and not flags["foreach"]["fused"]
    assert flags["loop"]["foreach"] is False and not flags["loop"]["fused"]


def test_unknown_kernels_are_refused_by_name():
    with pytest.raises(ValueError, match="adam must be one of"):
        accel.adam([torch.nn.Parameter(torch.zeros(1))], 1e-3, "fast")
    with pytest.raises(ConfigError, match="train.adam = 'fast'"):
        load_config(ROOT / "configs" / "hippocampus.toml", ["train.adam=fast"])


def test_a_restored_state_keeps_the_optimizers_kernels_and_continues_adam():
    # a state saved by the per-tensor loop (as every checkpoint before train.adam)
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(10, 7, generator=gen)
    grads = [torch.randn(10, 7, generator=gen) for _ in range(6)]
    half, loop_opt = run("loop", p0, grads[:3], lr=1e-2)
    p = torch.nn.Parameter(half.clone())
    fused = accel.adam([p], 1e-2, "fused")
    accel.load_optimizer_state(fused, loop_opt.state_dict())
    assert fused.param_groups[0]["fused"] is True  # not the saved state's kernels
    for g in grads[3:]:
        p.grad = g.clone()
        fused.step()
    torch.testing.assert_close(p.detach().double(), reference_adam(p0, grads, 1e-2),
                               rtol=1e-5, atol=1e-6)


def test_a_state_of_another_model_is_refused():
    opt = accel.adam([torch.nn.Parameter(torch.zeros(2)),
                      torch.nn.Parameter(torch.zeros(3))], 1e-3)
    other = accel.adam([torch.nn.Parameter(torch.zeros(2))], 1e-3)
    with pytest.raises(ValueError):
        accel.load_optimizer_state(opt, other.state_dict())


class _Pair(torch.nn.Module):
    """Two modalities, each an encoder and a decoder of one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoders = torch.nn.ModuleDict({m: torch.nn.Linear(3, 2) for m in "ab"})
        self.decoders = torch.nn.ModuleDict({m: torch.nn.Linear(2, 3) for m in "ab"})

    def modality_parameters(self, m: str) -> list[torch.nn.Parameter]:
        return [*self.encoders[m].parameters(), *self.decoders[m].parameters()]

    def loss(self, scale: dict[str, float]) -> torch.Tensor:
        x = torch.ones(4, 3)
        return sum(scale[m] * self.decoders[m](self.encoders[m](x)).pow(2).sum() for m in "ab")


def _grads(model, m):
    return [p.grad.clone() for p in [*model.encoders[m].parameters(),
                                     *model.decoders[m].parameters()]]


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_grad_clip_cuts_each_modalitys_gradient_to_the_norm_alone(clip):
    """SGD with lr 1 moves each weight by its (cut) gradient: modality a's gradient
    (norm far above 1) is scaled to norm 1, b's (below 1) is left as it is, each by
    its own norm and not by the norm of both (which a site, holding one, cannot
    know)."""
    model = _Pair()
    model.loss({"a": 10.0, "b": 1e-3}).backward()
    raw = {m: _grads(model, m) for m in "ab"}
    norm = {m: torch.linalg.vector_norm(torch.stack([g.norm() for g in raw[m]])) for m in "ab"}
    assert norm["a"] > 1 > norm["b"]
    before = {m: [p.detach().clone() for p in [*model.encoders[m].parameters(),
                                                 *model.decoders[m].parameters()]]
              for m in "ab"}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    opt.zero_grad()
    accel.step(opt, model.loss({"a": 10.0, "b": 1e-3}), model, ["a", "b"], clip)
    for m in "ab":
        factor = min(1.0, clip / (float(norm[m]) + 1e-6)) if clip else 1.0
        after = [*model.encoders[m].parameters(), *model.decoders[m].parameters()]
        for p0, p1, g in zip(before[m], after, raw[m], strict=True):
            torch.testing.assert_close(p0 - p1.detach(), factor * g)


def test_a_negative_grad_clip_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"train.grad_clip must be >= 0 \(0: no clipping\)"):
        load_config(Path(__file__).parents[1] / "configs" / "hippocampus.toml",
                    ["train.grad_clip=-1"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 3e19, -3e19])
def test_a_gradient_adam_cannot_square_is_refused_and_cleared(value):
    """3e19 is finite, but its square is not in float32. torch's fused Adam update
    would keep (1 - 0.999) * 9e38 = 9e35, but a plain g**2 (the norm a gradient cut
    takes, an unfused optimizer) is inf: the bound is float32's, not one kernel's."""
    from mmvm.accel import NonFiniteGradientError, check_gradients

    net = torch.nn.Linear(3, 2)
    net.weight.grad = torch.zeros(2, 3)
    net.bias.grad = torch.tensor([0.0, value])
    with pytest.raises(NonFiniteGradientError, match="first: bias"):
        check_gradients(net)
    assert net.weight.grad is None and net.bias.grad is None


def test_finite_gradients_pass_untouched():
    """Sizes, not sums: 1e6 entries of 1e16 have a float32 L2 norm of inf, yet each
    square fits and Adam steps on them."""
    net = torch.nn.Linear(1000, 1000)
    net.weight.grad, net.bias.grad = torch.full((1000, 1000), 1e16), torch.full((1000,), 1.8e19)
    from mmvm.accel import check_gradients

    check_gradients(net)
    assert net.weight.grad is not None and net.bias.grad is not None
