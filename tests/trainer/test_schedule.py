import math

import pytest
import torch

from mft_trainer.config import TrainingConfig
from mft_trainer.schedule import build_scheduler, lr_at, restart_schedule

PEAK, FLOOR = 1e-3, 1e-4


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_warmup_then_decay_to_the_floor_and_never_below(kind):
    rates = [lr_at(s, kind=kind, peak=PEAK, floor=FLOOR, warmup=10, total=100) for s in range(150)]
    assert rates[0] == pytest.approx(PEAK / 10)
    assert rates[9] == pytest.approx(PEAK)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # non-increasing after warmup
    assert rates[100] == pytest.approx(FLOOR)
    assert min(rates) >= FLOOR * (1 - 1e-12) or min(rates) == rates[0]
    assert rates[149] == pytest.approx(FLOOR)


def test_cosine_midpoint():
    mid = lr_at(55, kind="cosine", peak=PEAK, floor=FLOOR, warmup=10, total=100)
    assert mid == pytest.approx(FLOOR + (PEAK - FLOOR) * 0.5)


def test_constant_kinds():
    assert lr_at(0, kind="constant", peak=PEAK, floor=FLOOR, warmup=10, total=100) == PEAK
    assert lr_at(4, kind="constant_with_warmup", peak=PEAK, floor=FLOOR, warmup=10, total=100) == pytest.approx(PEAK / 2)
    assert lr_at(90, kind="constant_with_warmup", peak=PEAK, floor=FLOOR, warmup=10, total=100) == PEAK


def test_scheduler_applies_the_schedule_and_resumes_from_its_state():
    training = TrainingConfig(learning_rate=PEAK, min_lr=FLOOR, num_warmup_steps=3, lr_scheduler_type="cosine")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = build_scheduler(opt, training, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, kind="cosine", peak=PEAK, floor=FLOOR, warmup=3, total=10) for s in range(10)])
    # A resume restores the optimizer (it holds the current lr) and the scheduler (its step count).
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched2 = build_scheduler(opt2, training, total_steps=10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(FLOOR)
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(FLOOR) and not math.isnan(opt2.param_groups[0]["lr"])


def test_a_resume_with_another_peak_or_length_follows_the_new_schedule():
    """The checkpoint restores the old peak into the optimizer and scheduler; the configured one wins."""
    old = TrainingConfig(learning_rate=PEAK, min_lr=FLOOR, num_warmup_steps=3, lr_scheduler_type="cosine")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    sched = build_scheduler(opt, old, total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    new = TrainingConfig(learning_rate=10 * PEAK, min_lr=FLOOR, num_warmup_steps=3, lr_scheduler_type="cosine")
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=10 * PEAK)
    sched2 = build_scheduler(opt2, new, total_steps=20)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    restart_schedule(sched2, 10 * PEAK)
    expected = [lr_at(s, kind="cosine", peak=10 * PEAK, floor=FLOOR, warmup=3, total=20) for s in range(5, 20)]
    assert sched2.get_last_lr() == pytest.approx([expected[0]])
    seen = []
    for _ in range(15):
        seen.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step()
    assert seen == pytest.approx(expected)
