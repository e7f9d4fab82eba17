"""Run under ``torchrun --nproc_per_node=2``: loss reduction and the training step across real ranks.

Writes ``<out>/rank-<r>.json`` with what the pytest side (test_distributed.py) asserts on.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from mft_trainer import checkpoint, distributed, loss
from mft_trainer.accelerate import accelerate
from mft_trainer.config import TrainerConfig, TrainingConfig
from mft_trainer.schedule import build_scheduler
from mft_trainer.train import Run, train_step

# Run as a script by torchrun: make this folder's test_loss and the repository's tests package importable.
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]
from test_loss import LABELS, SAMPLE_INDEX, TASKS, by_hand, logits_with_token_losses  # noqa: E402

VOCAB, ROWS, LENGTH = 48, 8, 12
# Adam's first update is lr * g / (|g| + eps): with the default eps, float noise in near-zero
# gradients flips whole updates. A larger eps keeps the comparison about the gradients.
EPS = 1e-3


def global_loss(world, mode):
    """Rank 0 holds rows 0-1 (tasks 0 and 1), rank 1 row 2 (task 0 only: task 1 is absent there)."""
    logits = logits_with_token_losses()
    rows = slice(0, 2) if world.rank == 0 else slice(2, 3)
    targets = loss.targets(LABELS[rows], TASKS[rows], SAMPLE_INDEX[rows], 2)
    counts = distributed.all_reduce_sum(targets.counts)
    sums = loss.loss_sums(logits[rows], targets).double()
    sums = distributed.all_reduce_sum(sums)
    return {"ours": float(loss.combine(sums, counts, mode)), "hand": by_hand(logits, mode),
            "task_loss": loss.per_task_loss(sums, counts)}


def fixed_rows():
    """ROWS rows for 3 tasks: packed documents, and one task that only rank 0's share contains."""
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, VOCAB, (ROWS, LENGTH), generator=gen)
    labels = torch.randint(2, VOCAB, (ROWS, LENGTH), generator=gen)
    labels[:, :3] = -100  # prompts
    sample_index = torch.zeros(ROWS, LENGTH, dtype=torch.long)
    sample_index[:, 7:] = 1  # two documents per row
    position_ids = torch.cat([torch.arange(7), torch.arange(LENGTH - 7)]).repeat(ROWS, 1)
    tasks = torch.tensor([0, 2, 1, 0, 0, 1, 0, 1])  # task 2 only in row 1 (rank 0's share)
    return {"input_ids": input_ids, "labels": labels, "sample_index": sample_index,
            "position_ids": position_ids, "task_ids": tasks}


def take(rows, idx):
    return {k: v[idx] for k, v in rows.items()}


def tiny(seed=0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tests.training_processes import TINY

    torch.manual_seed(seed)
    config = GPTNeoXConfig(**{**TINY, "vocab_size": VOCAB})
    config._attn_implementation = "sdpa"
    return GPTNeoXForCausalLM(config)


def make_run(world, mode, training_overrides=None):
    training = TrainingConfig(weighted_loss_mode=mode, learning_rate=1e-2, num_warmup_steps=0,
                              lr_scheduler_type="constant", checkpoint_activations=False, max_grad_norm=1.0,
                              **(training_overrides or {}))
    config = TrainerConfig(mode="sst", training=training)
    # ATorch 0.2.5 keeps per-call state in class attributes and its add_ac_attr cannot update them
    # (it sets an attribute literally named "name"), so a second auto_accelerate in one process breaks
    # clip_grad_norm. Training calls it once per process; this script calls it per case, so reset.
    from atorch.auto.auto_accelerate_context import AutoAccelerateContext

    AutoAccelerateContext.reset()
    acc = accelerate(tiny(), training, world)
    for group in acc.optimizer.param_groups:
        group["eps"] = EPS
    scheduler = build_scheduler(acc.optimizer, training, total_steps=10)
    return Run(config, world, None, SimpleNamespace(tasks=["a", "b", "c"]), None, acc, scheduler, 10, 0,
               checkpoint.Writer(background=False))


def params(run):
    return torch.cat([p.detach().flatten() for p in run.acc.model.parameters()])


def reference_step(mode, rows):
    """One update of a plain single-process model on all ROWS rows: what the ranks must reproduce."""
    from mft_trainer.model import model_inputs

    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0, eps=EPS)
    logits = model(**model_inputs(rows, torch.device("cpu"))).logits
    targets = loss.targets(rows["labels"], rows["task_ids"], rows["sample_index"], 3)
    value = loss.combine(loss.loss_sums(logits, targets), targets.counts, mode)
    value.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(value), torch.cat([p.detach().flatten() for p in model.parameters()])


def main(out: Path) -> None:
    world = distributed.init()
    result = {"modes": {}, "steps": {}}
    for mode in loss.MODES:
        result["modes"][mode] = global_loss(world, mode)

    rows = fixed_rows()
    mine = take(rows, slice(world.rank * 4, world.rank * 4 + 4))
    for mode in loss.MODES:
        ref_loss, ref_params = reference_step(mode, rows)
        entry = {"reference_loss": ref_loss}
        for name, micro in (("ga1_bs4", [mine]), ("ga2_bs2", [take(mine, slice(0, 2)), take(mine, slice(2, 4))]),
                            ("ga4_bs1", [take(mine, slice(i, i + 1)) for i in range(4)])):
            run = make_run(world, mode)
            step = train_step(run, copy.deepcopy(micro))
            entry[name] = {"loss": step.loss, "skipped": step.skipped,
                           "max_param_diff": float((params(run) - ref_params).abs().max())}
        result["steps"][mode] = entry

    # A non-finite loss on rank 1 only: both ranks must drop the update.
    run = make_run(world, "case3")
    before = params(run).clone()
    if world.rank == 1:
        run.acc.model.module.register_forward_hook(lambda m, i, o: o.__class__(logits=o.logits * float("nan")))
    step = train_step(run, [mine])
    result["nan"] = {"skipped": step.skipped, "params_unchanged": bool(torch.equal(before, params(run))),
                     "optimizer_state_empty": len(run.acc.optimizer.state) == 0}

    # A global batch without a single target token: nothing to learn from, the update is dropped.
    run = make_run(world, "case3")
    before = params(run).clone()
    step = train_step(run, [{**mine, "labels": torch.full_like(mine["labels"], loss.IGNORE_INDEX)}])
    result["no_targets"] = {"skipped": step.skipped, "skipped_type": type(step.skipped).__name__,
                            "params_unchanged": bool(torch.equal(before, params(run)))}
    (out / f"rank-{world.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
