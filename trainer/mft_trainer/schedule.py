"""Learning-rate schedule: linear warmup, then cosine or linear decay floored at ``min_lr``.

The reference decays to zero and ignores ``min_lr``; here ``min_lr`` is the value the decay ends at
and never goes below.
"""

from __future__ import annotations

import math

import torch

from mft_trainer.config import TrainingConfig


def lr_at(step: int, *, kind: str, peak: float, floor: float, warmup: int, total: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the rate used by the first update is lr_at(0))."""
    if kind == "constant":
        return peak
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant_with_warmup":
        return peak
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown lr_scheduler_type {kind!r}")
    return floor + (peak - floor) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, training: TrainingConfig, total_steps: int):
    """A LambdaLR whose state_dict (last_epoch) is all a checkpoint needs to resume the schedule."""
    peak = training.learning_rate

    def factor(step: int) -> float:
        return lr_at(step, kind=training.lr_scheduler_type, peak=peak, floor=training.min_lr,
                     warmup=training.num_warmup_steps, total=total_steps) / peak

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def restart_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, peak: float) -> None:
    """Continue a restored schedule from the configured peak: a checkpoint restores the optimizer's
    and scheduler's own, and a run resumed with another learning rate must use the new one."""
    scheduler.base_lrs = [peak] * len(scheduler.optimizer.param_groups)
    rates = [peak * factor(scheduler.last_epoch) for factor in scheduler.lr_lambdas]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["initial_lr"], group["lr"] = peak, rate
    scheduler._last_lr = rates
