"""Loss assembly pieces: the alpha annealing schedules."""

import math

import pytest

from mmvm.objectives import alpha_schedule


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential"])
def test_alpha_schedules_anneal_from_start_to_end(kind):
    f = alpha_schedule(kind, start=1.0, end=0.0, steps=100)
    values = [f(t) for t in range(0, 121)]
    assert values[0] == pytest.approx(1.0)
    assert values[100] == pytest.approx(0.0, abs=1e-12) and values[120] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:], strict=False))
    if kind == "linear":
        assert f(50) == pytest.approx(0.5)
    if kind == "cosine":
        assert f(50) == pytest.approx(0.5)
    if kind == "exponential":
        assert f(50) == pytest.approx(math.sqrt(1e-3))


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        alpha_schedule("sigmoid")
