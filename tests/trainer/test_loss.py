"""weighted_loss_mode formulas on a fixed batch, checked against sums written out by hand."""

import math

import pytest
import torch

from mft_trainer import loss

# 3 rows, 2 tasks. Row 0 (task 0) packs two documents, row 1 (task 1) one, row 2 (task 0) one
# document plus a document with no targets (it must count nowhere).
LABELS = torch.tensor([[5, 6, -100, 7, -100],
                       [1, 2, 3, -100, -100],
                       [4, -100, -100, -100, -100]])
SAMPLE_INDEX = torch.tensor([[0, 0, 1, 1, -1],
                             [0, 0, 0, -1, -1],
                             [0, 1, 1, -1, -1]])
TASKS = torch.tensor([0, 1, 0])
VOCAB = 8


def logits_with_token_losses():
    """Logits whose per-token CE is easy to read back: we compute it with plain softmax per token."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, VOCAB, generator=gen)


def token_loss(logits, r, t):
    return -torch.log_softmax(logits[r, t], -1)[LABELS[r, t]].item()


def docs(logits):
    """{(row, sample): (task, [token losses])} for documents with targets."""
    out = {}
    for r in range(3):
        for t in range(5):
            if LABELS[r, t] != -100:
                out.setdefault((r, int(SAMPLE_INDEX[r, t])), (int(TASKS[r]), []))[1].append(token_loss(logits, r, t))
    return out


def by_hand(logits, mode):
    d = docs(logits)
    tokens = [l for _, ls in d.values() for l in ls]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    if mode == "case1":
        return mean(tokens)
    if mode == "case2":
        return mean([mean(ls) for _, ls in d.values()])
    tasks = sorted({k for k, _ in d.values()})
    if mode == "case3":
        return mean([mean([l for k, ls in d.values() if k == task for l in ls]) for task in tasks])
    return mean([mean([mean(ls) for k, ls in d.values() if k == task]) for task in tasks])


@pytest.mark.parametrize("mode", loss.MODES)
def test_modes_match_hand_computed(mode):
    logits = logits_with_token_losses()
    targets = loss.targets(LABELS, TASKS, SAMPLE_INDEX, 2)
    assert targets.counts.tolist() == [[4.0, 3.0], [3.0, 1.0]]  # 4 tokens/3 docs in task 0, 3 tokens/1 doc in task 1
    sums = loss.loss_sums(logits, targets)
    assert math.isclose(float(loss.combine(sums, targets.counts, mode)), by_hand(logits, mode), rel_tol=1e-6)


@pytest.mark.parametrize("mode", loss.MODES)
def test_split_batches_with_global_counts_equal_one_batch(mode):
    """Gradient accumulation: micro-batch contributions with the step's counts add up to the whole."""
    logits = logits_with_token_losses().requires_grad_()
    counts = loss.targets(LABELS, TASKS, SAMPLE_INDEX, 2).counts
    whole = loss.combine(loss.loss_sums(logits, loss.targets(LABELS, TASKS, SAMPLE_INDEX, 2)), counts, mode)
    (grad_whole,) = torch.autograd.grad(whole, logits)
    parts = sum(loss.combine(loss.loss_sums(logits[s], loss.targets(LABELS[s], TASKS[s], SAMPLE_INDEX[s], 2)),
                             counts, mode)
                for s in (slice(0, 1), slice(1, 3)))
    (grad_parts,) = torch.autograd.grad(parts, logits)
    assert torch.allclose(whole, parts, atol=1e-6)
    assert torch.allclose(grad_whole, grad_parts, atol=1e-7)


def test_per_task_loss_is_the_token_average_and_absent_tasks_are_none():
    logits = logits_with_token_losses()
    targets = loss.targets(LABELS, TASKS, SAMPLE_INDEX, 3)
    per_task = loss.per_task_loss(loss.loss_sums(logits, targets), targets.counts)
    d = docs(logits)
    task1 = [l for k, ls in d.values() if k == 1 for l in ls]
    assert math.isclose(per_task[1], sum(task1) / len(task1), rel_tol=1e-6)
    assert per_task[2] is None


def test_no_targets_gives_zero_not_nan():
    targets = loss.targets(torch.full((1, 4), -100), torch.tensor([0]), torch.zeros(1, 4, dtype=torch.long), 2)
    logits = torch.randn(1, 4, VOCAB, requires_grad=True)
    for mode in loss.MODES:
        value = loss.combine(loss.loss_sums(logits, targets), targets.counts, mode)
        assert float(value.detach()) == 0.0
        (grad,) = torch.autograd.grad(value, logits)
        assert not grad.any()


@pytest.mark.parametrize("mode", loss.MODES)
def test_the_device_side_needs_no_values(mode):
    """On the meta device any data-dependent step (a boolean mask, .item(), torch.unique) raises: the
    loss and its backward can be queued on a GPU without waiting for the kernels before them."""
    meta = torch.device("meta")
    targets = loss.targets(LABELS, TASKS, SAMPLE_INDEX, 2).to(meta)
    logits = torch.empty(3, 5, VOCAB, device=meta, requires_grad=True)
    value = loss.combine(loss.loss_sums(logits, targets), targets.counts, mode)
    value.backward()
    assert value.device == meta and logits.grad.shape == logits.shape


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown weighted_loss_mode 'case5'"):
        loss.coefficients(torch.ones(2, 2, dtype=torch.float64), "case5")
