"""MFTCoder's ``weighted_loss_mode`` losses, computed over the global batch.

Notation: l = per-token cross entropy over target tokens (labels != -100), a "sample" = one
document (a (row, sample_index) pair, so packed rows hold several), task k = the row's task id.

    case1  sum(l) / N                              token average
    case2  (1/M) sum_j mean_{t in j} l             every sample weighs the same
    case3  (1/K) sum_k S_k / N_k                   every task weighs the same (MFTCoder Eq. 1)
    case4  (1/K) sum_k (1/M_k) sum_{j in k} mean_{t in j} l

with S_k the summed token loss of task k, N_k its target tokens, M_k its non-empty samples,
K the tasks with N_k > 0, N = sum N_k, M = sum M_k. Samples without targets count nowhere.

The "batch" these formulas see is the *global* batch of one optimizer step: every micro-batch of
every rank. Because N_k and M_k are known from the labels before the forward pass, each formula is
linear in the per-task sums (S_k, A_k = sum_j mean_{t in j} l): loss = sum_k cS_k S_k + cA_k A_k.
So each micro-batch contributes its own sums times coefficients built from the all-reduced counts,
and gradient accumulation and data parallelism give exactly the loss of one big batch, in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from mft_trainer.distributed import to_device

IGNORE_INDEX = -100
MODES = ("case1", "case2", "case3", "case4")


@dataclass(frozen=True)
class Targets:
    """The target tokens of one micro-batch, found on the host before its forward pass.

    Everything data-dependent in shape (which tokens are targets, which sample each belongs to) is
    settled here, so the loss on the device has no host synchronization: a boolean mask or
    ``torch.unique`` there waits for every queued kernel, once per micro-batch.
    """

    positions: torch.Tensor  # [n] index into the flattened [rows * length] tokens
    labels: torch.Tensor  # [n]
    tasks: torch.Tensor  # [n] the task of each target token
    sample_sizes: torch.Tensor  # [n] float32: target tokens of the sample each token belongs to
    counts: torch.Tensor  # [2, T] float64: target tokens N_k and non-empty samples M_k per task

    def to(self, device: torch.device) -> Targets:
        return Targets(**{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})


def targets(labels: torch.Tensor, task_ids: torch.Tensor, sample_index: torch.Tensor, num_tasks: int) -> Targets:
    target = labels != IGNORE_INDEX
    tasks = task_ids.long()[:, None].expand_as(labels)[target]
    sample_of_token, sizes = _samples(target, sample_index)
    sample_task = torch.zeros(len(sizes), dtype=torch.long).scatter_(0, sample_of_token, tasks)
    counts = torch.stack([torch.bincount(tasks, minlength=num_tasks),
                          torch.bincount(sample_task, minlength=num_tasks)]).to(torch.float64)
    return Targets(positions=target.flatten().nonzero().squeeze(1), labels=labels[target], tasks=tasks,
                   sample_sizes=sizes.to(torch.float32)[sample_of_token], counts=counts)


def loss_sums(logits: torch.Tensor, targets: Targets) -> torch.Tensor:
    """[2, T] float32, differentiable: S_k (summed token loss) and A_k (summed per-sample mean loss).

    ``targets`` must be on the logits' device."""
    selected = logits.flatten(0, 1).index_select(0, targets.positions)
    token_loss = F.cross_entropy(selected.float(), targets.labels, reduction="none")
    zeros = token_loss.new_zeros(targets.counts.shape[1])
    return torch.stack([zeros.index_add(0, targets.tasks, token_loss),
                        zeros.index_add(0, targets.tasks, token_loss / targets.sample_sizes)])


def coefficients(counts: torch.Tensor, mode: str) -> torch.Tensor:
    """[2, T] weights for (S_k, A_k) so that loss = (coefficients * sums).sum() is the mode's formula.

    Branch-free (no host synchronization when the counts live on a GPU); all zero without targets."""
    tokens, samples = counts[0], counts[1]
    n_tasks = (tokens > 0).sum()  # a task has non-empty samples exactly when it has target tokens
    zero = torch.zeros_like(tokens)
    if mode == "case1":
        return torch.stack([_reciprocal(tokens.sum()).expand_as(tokens), zero])
    if mode == "case2":
        return torch.stack([zero, _reciprocal(samples.sum()).expand_as(samples)])
    if mode == "case3":
        return torch.stack([_reciprocal(n_tasks * tokens), zero])
    if mode == "case4":
        return torch.stack([zero, _reciprocal(n_tasks * samples)])
    raise ValueError(f"unknown weighted_loss_mode {mode!r}; expected one of {', '.join(MODES)}")


def combine(sums: torch.Tensor, counts: torch.Tensor, mode: str) -> torch.Tensor:
    """The mode's loss from per-task sums and the counts of the batch they belong to."""
    return (coefficients(counts, mode).to(sums.dtype) * sums).sum()


def per_task_loss(sums: torch.Tensor, counts: torch.Tensor) -> list[float | None]:
    """Token-average loss of each task over the global batch (None where a task had no targets)."""
    return [float(s / n) if n > 0 else None for s, n in zip(sums[0].tolist(), counts[0].tolist())]


def _reciprocal(x: torch.Tensor) -> torch.Tensor:
    """1 / x, and 0 where x is 0 (nothing to weigh)."""
    return torch.where(x > 0, 1.0 / x, torch.zeros_like(x))


def _samples(target: torch.Tensor, sample_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target token: the id of its (row, sample) among the non-empty samples, and sample sizes."""
    rows = torch.arange(target.shape[0])[:, None].expand_as(target)
    stride = int(sample_index.max()) + 2 if sample_index.numel() else 1
    keys = rows[target] * stride + sample_index[target] + 1
    _, sample_of_token, sizes = torch.unique(keys, return_inverse=True, return_counts=True)
    return sample_of_token, sizes
