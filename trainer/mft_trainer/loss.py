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

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
MODES = ("case1", "case2", "case3", "case4")


def target_counts(labels: torch.Tensor, task_ids: torch.Tensor, sample_index: torch.Tensor,
                  num_tasks: int) -> torch.Tensor:
    """[2, T] float64: target tokens N_k and non-empty samples M_k per task."""
    target = labels != IGNORE_INDEX
    token_task = _token_tasks(task_ids, labels)[target]
    sample_of_token, _ = _samples(target, sample_index)
    sample_task = torch.zeros(int(sample_of_token.max()) + 1 if sample_of_token.numel() else 0,
                              dtype=torch.long, device=labels.device)
    sample_task.scatter_(0, sample_of_token, token_task)
    counts = torch.stack([
        torch.bincount(token_task, minlength=num_tasks),
        torch.bincount(sample_task, minlength=num_tasks),
    ])
    return counts.to(torch.float64)


def loss_sums(logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor,
              sample_index: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """[2, T] float32, differentiable: S_k (summed token loss) and A_k (summed per-sample mean loss)."""
    target = labels != IGNORE_INDEX
    token_loss = F.cross_entropy(logits[target].float(), labels[target], reduction="none")
    token_task = _token_tasks(task_ids, labels)[target]
    sample_of_token, sample_size = _samples(target, sample_index)
    per_sample = token_loss / sample_size[sample_of_token]
    zeros = token_loss.new_zeros(num_tasks)
    return torch.stack([zeros.index_add(0, token_task, token_loss),
                        zeros.index_add(0, token_task, per_sample)])


def coefficients(counts: torch.Tensor, mode: str) -> torch.Tensor:
    """[2, T] weights for (S_k, A_k) so that loss = (coefficients * sums).sum() is the mode's formula."""
    tokens, samples = counts[0], counts[1]
    present = tokens > 0
    n_tasks = present.sum()
    coef = torch.zeros_like(counts)
    if not present.any():
        return coef
    if mode == "case1":
        coef[0] = 1.0 / tokens.sum()
    elif mode == "case2":
        coef[1] = 1.0 / samples.sum()
    elif mode == "case3":
        coef[0, present] = 1.0 / (n_tasks * tokens[present])
    elif mode == "case4":
        coef[1, present] = 1.0 / (n_tasks * samples[present])
    else:
        raise ValueError(f"unknown weighted_loss_mode {mode!r}; expected one of {', '.join(MODES)}")
    return coef


def combine(sums: torch.Tensor, counts: torch.Tensor, mode: str) -> torch.Tensor:
    """The mode's loss from per-task sums and the counts of the batch they belong to."""
    return (coefficients(counts, mode).to(sums.dtype) * sums).sum()


def per_task_loss(sums: torch.Tensor, counts: torch.Tensor) -> list[float | None]:
    """Token-average loss of each task over the global batch (None where a task had no targets)."""
    return [float(s / n) if n > 0 else None for s, n in zip(sums[0].tolist(), counts[0].tolist())]


def _token_tasks(task_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return task_ids.to(labels.device).long()[:, None].expand_as(labels)


def _samples(target: torch.Tensor, sample_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each target token: the id of its (row, sample) among the non-empty samples, and sample sizes."""
    rows = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(target)
    stride = int(sample_index.max()) + 2 if sample_index.numel() else 1
    keys = rows[target] * stride + sample_index.to(target.device)[target] + 1
    _, sample_of_token, sizes = torch.unique(keys, return_inverse=True, return_counts=True)
    return sample_of_token, sizes.to(torch.float32)
