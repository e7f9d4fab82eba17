"""Run under ``torchrun --nproc_per_node=2``: the trainer's FSDP branches on real FSDP over gloo.

ATorch's fsdp optimization refuses to run without CUDA, so this wraps the model the way it does on
GPU (one FSDP unit per ``GPTNeoXLayer``, ``use_orig_params``, ``limit_all_gathers``, backward
prefetch, then non-reentrant activation checkpointing of each layer) with torch's own FSDP on CPU.
Everything after the wrapping is the trainer's code: ``train_step`` (no_sync, clip), ``save``
(gathered snapshot, HF/peft files), and the resume path (weights, optimizer state through
``optim_state_dict_to_load``). The data-parallel run of the same steps (ATorch, as on CPU) is the
reference.

Writes ``<out>/rank-<r>.json`` with what the pytest side (test_fsdp.py) asserts on.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

from mft_trainer import checkpoint, distributed, metrics
from mft_trainer.accelerate import Accelerated, accelerate, layer_class, param_groups
from mft_trainer.config import CheckpointConfig, LoraConfig, ModelConfig, TrainerConfig, TrainingConfig
from mft_trainer.data import load_tokenizer
from mft_trainer.schedule import build_scheduler
from mft_trainer.train import Run, _build, save, train_step

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]
from dist_check import EPS, fixed_rows, take  # noqa: E402

from tests.training_processes import TINY, TOKENIZER  # noqa: E402

STEPS, SAVE_AT = 3, 2


def trainer_config(mode: str, root: Path) -> TrainerConfig:
    training = TrainingConfig(weighted_loss_mode="case1", learning_rate=1e-2, num_warmup_steps=0,
                              lr_scheduler_type="constant", checkpoint_activations=True, max_grad_norm=1.0)
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["query_key_value", "dense"]) if mode == "lora" else None
    return TrainerConfig(mode=mode, model=ModelConfig(path=None, tokenizer_path=str(TOKENIZER), config=dict(TINY)),
                         training=training, lora=lora,
                         checkpoint=CheckpointConfig(mount_path=str(root), async_save=False))


def data_parallel(model: torch.nn.Module, config: TrainerConfig, world: distributed.World) -> Accelerated:
    """What the trainer runs on CPU: ATorch's data parallelism."""
    from atorch.auto.auto_accelerate_context import AutoAccelerateContext

    AutoAccelerateContext.reset()  # one auto_accelerate per process is all ATorch 0.2.5 supports cleanly
    return accelerate(model, config.training, world.size)


def fully_sharded(model: torch.nn.Module, config: TrainerConfig, world: distributed.World) -> Accelerated:
    """What ATorch's fsdp + checkpoint strategy builds on GPU, built with torch on CPU."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )
    from torch.distributed.fsdp import BackwardPrefetch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    layer = layer_class()
    wrapped = FSDP(model, auto_wrap_policy=partial(transformer_auto_wrap_policy, transformer_layer_cls={layer}),
                   use_orig_params=True, limit_all_gathers=True, backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
                   device_id=world.device)
    apply_activation_checkpointing(wrapped, check_fn=lambda m: isinstance(m, layer),
                                   checkpoint_wrapper_fn=partial(checkpoint_wrapper,
                                                                 checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    t = config.training
    optimizer = torch.optim.AdamW(param_groups(wrapped), lr=t.learning_rate, weight_decay=t.weight_decay)
    return Accelerated(wrapped, optimizer, ["parallel_mode", "fsdp", "checkpoint"])


def make_run(config: TrainerConfig, world, tokenizer, wrap, weights: Path | None = None) -> Run:
    torch.manual_seed(0)  # identical initial weights on every rank and in every run
    acc = wrap(_build(config, tokenizer, weights), config, world)
    for group in acc.optimizer.param_groups:
        group["eps"] = EPS  # see dist_check: keeps the comparison about the gradients
    scheduler = build_scheduler(acc.optimizer, config.training, total_steps=10)
    return Run(config, world, tokenizer, SimpleNamespace(tasks=["a", "b", "c"]), None, acc, scheduler, 10, 10, 0,
               checkpoint.Writer(background=False))


def micro_batches(world) -> list[dict[str, torch.Tensor]]:
    mine = take(fixed_rows(), slice(world.rank * 4, world.rank * 4 + 4))
    return [take(mine, slice(0, 2)), take(mine, slice(2, 4))]  # two micro-batches: no_sync's path


def steps(run: Run, first: int, last: int) -> list[dict[str, float]]:
    out = []
    for step in range(first, last + 1):
        result = train_step(run, micro_batches(run.world))
        run.state.step = step
        out.append({"loss": result.loss, "grad_norm": result.grad_norm, "skipped": result.skipped})
    return out


def full_weights(run: Run) -> dict[str, torch.Tensor] | None:
    """Every rank calls this (FSDP gathers are collective); rank 0 gets the weights."""
    snap = checkpoint.snapshot(run.acc, run.scheduler, {}, run.world)
    return None if snap is None else snap.weights


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def saved_files(folder: Path) -> dict[str, list[str]]:
    from safetensors.torch import load_file

    names = {"model.safetensors", "adapter_model.safetensors"}
    return {p.name: sorted(load_file(p)) for p in folder.iterdir() if p.name in names}


def check(mode: str, world, tokenizer, out: Path) -> dict:
    root = out / mode
    config = trainer_config(mode, root)

    reference = make_run(config, world, tokenizer, data_parallel)
    reference_steps = steps(reference, 1, STEPS)
    reference_weights = full_weights(reference)

    sharded = make_run(config, world, tokenizer, fully_sharded)
    sharded_steps = steps(sharded, 1, SAVE_AT)
    reporter = metrics.Reporter(root, world.is_main, 10)
    saved_path = save(sharded, reporter)
    sharded.writer.close()
    reporter.close()
    sharded_steps += steps(sharded, SAVE_AT + 1, STEPS)
    sharded_weights = full_weights(sharded)

    distributed.barrier()  # the checkpoint is on disk before any rank reads it
    resumed = make_run(config, world, tokenizer, fully_sharded, weights=saved_path)
    checkpoint.load_training_state(saved_path, resumed.acc, resumed.scheduler, world)
    resumed_steps = steps(resumed, SAVE_AT + 1, STEPS)
    resumed_weights = full_weights(resumed)

    result = {"reference": reference_steps, "sharded": sharded_steps, "resumed": resumed_steps}
    if world.is_main:
        plain = _build(config, tokenizer, None)  # the HF/peft model's own names, unwrapped
        expected = {k for k in plain.state_dict() if mode != "lora" or "lora_" in k}
        result |= {
            "sharded_vs_reference": max_diff(sharded_weights, reference_weights),
            "resumed_vs_sharded": max_diff(resumed_weights, sharded_weights),
            "files": saved_files(saved_path),
            "expected_keys": sorted(_peft_names(expected) if mode == "lora" else expected),
            "sharded_strategy": sharded.acc.strategy,
        }
    return result


def _peft_names(keys: set[str]) -> set[str]:
    """State-dict names of the default adapter as peft stores them in adapter_model.safetensors."""
    return {k.replace(".default.", ".") for k in keys}


def main(out: Path) -> None:
    world = distributed.init()
    config = trainer_config("sst", out)
    tokenizer = load_tokenizer(config)
    result = {mode: check(mode, world, tokenizer, out) for mode in ("sst", "lora")}
    (out / f"rank-{world.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
