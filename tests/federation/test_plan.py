"""mmvm.federation.plan: windows cut from exactly the centralized batch schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmvm.federation.plan import Step, exchange_plan, window_counts
from mmvm.schedule import epoch_batches

N, BS, SEED, EPOCHS = 50, 8, 3, 4  # 7 batches per epoch, the last one of 2 rows


def _central():
    return [(e, rows) for e in range(EPOCHS) for rows in epoch_batches(N, BS, SEED, e)]


def _flat(windows):
    return [s for w in windows for s in w.steps]


@pytest.mark.parametrize("kw", [
    {"exchange": "step"}, {"exchange": "steps", "k": 1}, {"exchange": "steps", "k": 3},
    {"exchange": "steps", "k": 7}, {"exchange": "steps", "k": 1000},
    {"exchange": "round", "local_epochs": 1}, {"exchange": "round", "local_epochs": 3},
    {"exchange": "round", "local_epochs": 10}])
def test_windows_cover_the_centralized_schedule_in_order(kw):
    windows = exchange_plan(N, BS, SEED, EPOCHS, **kw)
    steps = _flat(windows)
    central = _central()
    assert len(steps) == len(central) == EPOCHS * math.ceil(N / BS)
    assert [s.step for s in steps] == list(range(len(central)))  # each step once, in order
    for s, (epoch, rows) in zip(steps, central, strict=True):
        assert s.epoch == epoch and torch.equal(s.rows, rows)
    assert [w.index for w in windows] == list(range(len(windows)))
    assert all(w.steps for w in windows)
    # each epoch visits every row exactly once
    for e in range(EPOCHS):
        rows = torch.cat([s.rows for s in steps if s.epoch == e])
        assert torch.equal(torch.sort(rows).values, torch.arange(N))


def test_window_lengths():
    total = EPOCHS * 7
    assert [len(w.steps) for w in exchange_plan(N, BS, SEED, EPOCHS)] == [1] * total
    ks = [len(w.steps) for w in exchange_plan(N, BS, SEED, EPOCHS, "steps", k=5)]
    assert ks == [5] * (total // 5) + [total % 5]
    rounds = exchange_plan(N, BS, SEED, EPOCHS, "round", local_epochs=3)
    assert [w.epochs for w in rounds] == [(0, 2), (3, 3)]
    assert [len(w.steps) for w in rounds] == [21, 7]
    # a "steps" window may straddle an epoch boundary
    straddle = exchange_plan(N, BS, SEED, EPOCHS, "steps", k=5)[1]
    assert straddle.epochs == (0, 1)


def test_window_rows_is_the_sorted_union():
    for w in exchange_plan(N, BS, SEED, 2, "steps", k=3):
        expect = sorted({int(r) for s in w.steps for r in s.rows})
        assert w.rows.tolist() == expect
    one = exchange_plan(N, BS, SEED, 1, "round")[0]
    assert one.rows.tolist() == list(range(N))
    step = exchange_plan(N, BS, SEED, 1, "step")[0]
    assert step.rows.tolist() == sorted(step.steps[0].rows.tolist())


def test_plan_follows_seed_and_batch_size():
    a = exchange_plan(N, BS, SEED, 1)
    b = exchange_plan(N, BS, SEED + 1, 1)
    assert not all(torch.equal(x.steps[0].rows, y.steps[0].rows) for x, y in zip(a, b, strict=True))
    assert len(exchange_plan(N, N, SEED, 2)) == 2  # one batch per epoch
    assert len(exchange_plan(1, BS, SEED, 1)) == 1


@pytest.mark.parametrize("args, kw, match", [
    ((N, BS, SEED, EPOCHS), {"exchange": "epoch"}, r"exchange must be one of \['step', "
                                                   r"'steps', 'round'\], got 'epoch'"),
    ((N, BS, SEED, 0), {}, r"epochs must be positive, got 0"),
    ((N, BS, SEED, -1), {}, r"epochs must be positive"),
    ((N, BS, SEED, 1), {"exchange": "steps", "k": 0}, r"exchange-steps must be >= 1, got 0"),
    ((N, BS, SEED, 1), {"exchange": "round", "local_epochs": 0},
     r"local-epochs must be >= 1, got 0"),
    ((0, BS, SEED, 1), {}, r"need n > 0 and batch_size > 0"),
    ((N, 0, SEED, 1), {}, r"need n > 0 and batch_size > 0"),
])
def test_invalid_arguments_raise(args, kw, match):
    with pytest.raises(ValueError, match=match):
        exchange_plan(*args, **kw)


def test_round_warmup_doubles_window_length_up_to_local_epochs():
    from mmvm.federation.plan import exchange_plan

    plan = exchange_plan(40, 10, 0, 20, "round", local_epochs=8, warmup=True)
    lengths = [w.epochs[1] - w.epochs[0] + 1 for w in plan]
    assert lengths == [1, 2, 4, 8, 5]
    flat = [s.step for w in plan for s in w.steps]
    assert flat == list(range(20 * 4))  # every centralized step once, in order


@pytest.mark.parametrize("exchange,k", [("step", 1), ("steps", 3), ("round", 1)])
def test_window_counts_counts_distinct_flagged_rows_per_window(exchange, k):
    """Against the obvious count, window by window (two epochs per round window:
    a row it trains twice counts once)."""
    plan = exchange_plan(50, 8, seed=3, epochs=4, exchange=exchange, k=k, local_epochs=2)
    flags = np.random.default_rng(0).random(50) < 0.3
    expected = [int(flags[np.unique(w.rows.numpy())].sum()) for w in plan]
    assert window_counts(plan, flags).tolist() == expected
    assert window_counts(plan, np.zeros(50, bool)).sum() == 0
    # several sets of rows in one pass: column j is the 1-D count of flags[:, j]
    many = np.random.default_rng(1).random((50, 3)) < 0.4
    both = window_counts(plan, many)
    assert both.shape == (len(plan), 3)
    for j in range(3):
        assert both[:, j].tolist() == window_counts(plan, many[:, j]).tolist()


def test_a_plan_makes_its_windows_on_demand():
    """Ten million steps: only where each window starts is held (a list of Step
    objects took ~1 KB a step); any window is the schedule's own batches."""
    plan = exchange_plan(N, BS, SEED, 10**7 // 7)
    assert len(plan) == 10**7 // 7 * 7
    last = plan[-1]
    assert last.steps[0].step == len(plan) - 1 and last.steps[0].epoch == 10**7 // 7 - 1
    assert torch.equal(last.steps[0].rows, epoch_batches(N, BS, SEED, last.steps[0].epoch)[-1])
    assert [w.index for w in plan[3:5]] == [3, 4] and plan.first_epoch(7) == 1
    with pytest.raises(IndexError):
        plan[len(plan)]


def test_a_window_makes_its_steps_when_read(monkeypatch):
    """One window of two whole epochs at batch 1 over a million rows: its rows come
    from slices of the epochs' permutations and its steps are made as they are read
    (a Step object each would hold ~1 KB a sample); each is the schedule's batch."""
    import mmvm.federation.plan as plan_module

    made = []
    monkeypatch.setattr(plan_module, "Step", lambda *a: made.append(a) or Step(*a))
    n = 10**6
    two = exchange_plan(n, 1, SEED, 2, "round", local_epochs=2)[0]
    assert torch.equal(two.rows, torch.arange(n)) and not made
    window = exchange_plan(n, 1, SEED, 1, "round")[0]
    assert len(window.steps) == n - 1  # the last row joins the batch before
    batches = epoch_batches(1000, 7, SEED, 0)  # a trailing batch of one joins
    small = exchange_plan(1000, 7, SEED, 1, "round")[0]
    assert len(small.steps) == len(batches)
    assert all(torch.equal(s.rows, b) for s, b in zip(small.steps, batches, strict=True))
    assert window.steps[-1].step == n - 2 and len(window.steps[-1].rows) == 2
    assert [s.step for s in window.steps[2:4]] == [2, 3]
