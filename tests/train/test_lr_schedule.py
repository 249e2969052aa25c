"""Learning-rate schedules: warmup, constant / linear / cosine decay, min-lr, and the scheduler's state."""

import math

import pytest
import torch

from temper.train.lr_schedule import LRSchedule, LRScheduler


def test_constant_with_warmup():
    s = LRSchedule(max_lr=1.0, warmup_iters=4)
    assert [s.lr_at(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_linear_decays_to_min_lr_and_stays():
    s = LRSchedule(max_lr=1.0, min_lr=0.1, warmup_iters=2, decay_iters=6, style="linear")
    got = [s.lr_at(i) for i in range(8)]
    assert got[:2] == [0.5, 1.0]
    assert got[2:] == pytest.approx([1.0, 0.775, 0.55, 0.325, 0.1, 0.1])


def test_cosine_is_half_way_at_the_middle():
    s = LRSchedule(max_lr=2.0, min_lr=0.0, decay_iters=10, style="cosine")
    assert s.lr_at(0) == 2.0
    assert s.lr_at(5) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(0.0, abs=1e-12)
    assert s.lr_at(3) == pytest.approx(1.0 + math.cos(math.pi * 0.3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(style="cosine"), "--lr-decay-iters"),
        (dict(style="linear", decay_iters=2, warmup_iters=2), "must exceed"),
        (dict(style="wsd"), "not one of"),
        (dict(style="linear", decay_iters=5, min_lr=2.0), "--min-lr"),
    ],
)
def test_bad_schedules_say_which_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRSchedule(max_lr=1.0, **kwargs)


def test_scheduler_sets_the_optimizer_and_round_trips_its_state():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=123.0)
    schedule = LRSchedule(max_lr=1.0, warmup_iters=4)
    scheduler = LRScheduler(optimizer, schedule)
    assert optimizer.param_groups[0]["lr"] == 0.25
    scheduler.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.75
    restored = LRScheduler(torch.optim.AdamW([param], lr=9.0), schedule)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr == 0.75 and restored.optimizer.param_groups[0]["lr"] == 0.75
