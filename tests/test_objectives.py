"""Loss assembly pieces: the alpha annealing schedules."""

import math

import pytest

from mmvm.objectives import alpha_schedule


@pytest.mark.parametrize("kind", ["linear", "cosine"])
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


def test_exponential_schedule_is_the_authors_formula():
    """exp(ln(1e-10) t / T) from 1 to 0: 0.1 at t = 0.1 T, 1e-10 at T, and still
    decaying (never snapping to 0) after T."""
    f = alpha_schedule("exponential", start=1.0, end=0.0, steps=1000)
    assert f(0) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.1, rel=1e-6)
    assert f(500) == pytest.approx(1e-5, rel=1e-6)
    assert f(1000) == pytest.approx(1e-10, rel=1e-6)
    assert 0 < f(1500) < f(1000)
    values = [f(t) for t in range(0, 2000, 7)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    for t in (0, 37, 100, 999):  # the closed form
        assert f(t) == pytest.approx(math.exp(math.log(1e-10) * t / 1000), rel=1e-6)


def test_exponential_schedule_stops_at_a_positive_end():
    """Between two positive values: geometric from start to end, then held at end."""
    f = alpha_schedule("exponential", start=0.8, end=0.2, steps=100)
    assert f(0) == pytest.approx(0.8)
    assert f(50) == pytest.approx(math.sqrt(0.8 * 0.2), rel=1e-6)
    assert f(100) == pytest.approx(0.2) and f(300) == pytest.approx(0.2)


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        alpha_schedule("sigmoid")
