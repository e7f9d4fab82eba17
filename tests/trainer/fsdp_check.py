"""Run under ``torchrun --nproc_per_node=2``: ATorch's GPU strategy and the trainer's FSDP branches
on real FSDP over gloo.

The trainer asks for the GPU strategy only where CUDA exists, ATorch's ``fsdp`` refuses to run
without it, and on a GPU it pins each rank's device and wraps the model there. ``cuda_stand_in`` answers those
device questions for the CPU while ``accelerate`` runs (CUDA available, bf16 supported, FSDP's
device the CPU), so everything else is ATorch's own code: its FSDP wrapping of each
``GPTNeoXLayer`` (``use_orig_params``, ``limit_all_gathers``, backward prefetch), the bf16 mixed
precision that ``amp_native`` sets on FSDP, and its activation checkpointing. Everything after the
wrapping is the trainer's code: ``train_step`` (no_sync, clip), ``save`` (gathered snapshot, HF/peft
files), and the resume path (weights, optimizer state through ``optim_state_dict_to_load``). The
data-parallel run of the same steps (ATorch, as on CPU, fp32) is the reference. The FSDP runs also
resume the checkpoints of a one-rank job that one_rank_check.py wrote before this launch.

Writes ``<out>/rank-<r>.json`` with what the pytest side (test_fsdp.py) asserts on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from mft_trainer import checkpoint, distributed, metrics
from mft_trainer.accelerate import Accelerated, accelerate, unwrap
from mft_trainer.config import CheckpointConfig, LoraConfig, ModelConfig, TrainerConfig, TrainingConfig
from mft_trainer.data import DataReport, load_tokenizer
from mft_trainer.schedule import build_scheduler
from mft_trainer.train import Run, _build, save, train_step

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]
from dist_check import EPS, fixed_rows, take  # noqa: E402

from tests.training_processes import TINY, TOKENIZER  # noqa: E402

STEPS, SAVE_AT = 3, 2
OPTIMIZER_AT_SAVE = "optimizer-at-save.pt"  # next to a run's checkpoints: Adam's state when it saved
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")
PRECISIONS = ("fp32", "bf16")  # bf16: ATorch's amp_native, FSDP mixed precision


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
    return accelerate(model, config.training, world)


@contextlib.contextmanager
def cuda_stand_in():
    """While ATorch wraps the model: the trainer builds its GPU strategy, ATorch's fsdp optimization
    sees CUDA (and bf16 support), and its FSDP units live on the CPU (``device_id``), where
    parameters need no broadcast (every rank seeds the same weights)."""
    import atorch.auto.opt_lib.zero_optimization as zero
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    import mft_trainer.accelerate as trainer_accelerate

    class TorchWithCuda:
        cuda = SimpleNamespace(is_available=lambda: True, set_device=lambda device: None)

        def __getattr__(self, name):
            return getattr(torch, name)

    build = trainer_accelerate.build_strategy

    def gpu_strategy(training, world_size, cuda, **need):
        return build(training, world_size, True, **need)

    def fsdp_on_cpu(module, **kwargs):
        kwargs.pop("sync_module_states", None)  # FSDP broadcasts only from a GPU
        return FSDP(module, **{**kwargs, "device_id": torch.device("cpu")})

    with mock.patch.object(trainer_accelerate, "build_strategy", gpu_strategy), \
            mock.patch.object(zero, "torch", TorchWithCuda()), \
            mock.patch.object(zero, "FSDP", fsdp_on_cpu), \
            mock.patch.object(torch.cuda, "is_bf16_supported", return_value=True):
        yield


def atorch_gpu_strategy(model: torch.nn.Module, config: TrainerConfig, world: distributed.World) -> Accelerated:
    """ATorch's GPU strategy (fsdp, amp_native when bf16, checkpoint) as ``accelerate`` builds it."""
    with cuda_stand_in():
        return data_parallel(model, config, world)


def make_run(config: TrainerConfig, world, tokenizer, wrap, weights: Path | None = None) -> Run:
    torch.manual_seed(0)  # identical initial weights on every rank and in every run
    acc = wrap(_build(config, tokenizer, weights), config, world)
    for group in acc.optimizer.param_groups:
        group["eps"] = EPS  # see dist_check: keeps the comparison about the gradients
    scheduler = build_scheduler(acc.optimizer, config.training, total_steps=10)
    return Run(config, world, tokenizer, SimpleNamespace(tasks=["a", "b", "c"], report=DataReport()), None, acc,
               scheduler, 10, 0, checkpoint.Writer(background=False))


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


def saved_tensors(folder: Path) -> dict[str, dict[str, str]]:
    """The weight files of a checkpoint: each tensor's name and dtype."""
    from safetensors.torch import load_file

    return {p.name: {k: str(v.dtype) for k, v in load_file(p).items()} for p in folder.iterdir()
            if p.name in WEIGHT_FILES}


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (file,) = [p for p in folder.iterdir() if p.name in WEIGHT_FILES]
    return load_file(file)


def in_file_names(config: TrainerConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A snapshot's weights under the names its checkpoint file gives them."""
    from mft_trainer.lora import peft_name

    return {peft_name(k, "default"): v for k, v in weights.items()} if config.mode == "lora" else weights


def optimizer_state(acc: Accelerated) -> dict[str, dict[str, torch.Tensor]]:
    """Adam's state of each parameter under its plain model name: FSDP's own gather (collective;
    rank 0 gets it), or the live data-parallel optimizer's, looked up by parameter."""
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    if acc.uses_fsdp:
        return checkpoint._optimizer_state(acc).get("state", {})
    names = {param: clean_tensor_name(name) for name, param in unwrap(acc.model).named_parameters()}
    return {names[param]: state for param, state in acc.optimizer.state.items()}


def state_diff(got: dict[str, dict[str, torch.Tensor]], expected: dict[str, dict[str, torch.Tensor]]) -> dict:
    """Whether both hold states of the same parameters, and their tensors' largest difference."""
    same = got.keys() == expected.keys() and all(got[name].keys() == expected[name].keys() for name in expected)
    diffs = [float((got[name][key] - value).abs().max()) for name, state in expected.items() if name in got
             for key, value in state.items() if key in got[name]]
    return {"same_parameters": same, "max_diff": max(diffs, default=float("inf"))}


def one_rank_root(out: Path, mode: str) -> Path:
    """Where one_rank_check.py writes a one-rank job's checkpoints: ``checkpoint-<SAVE_AT>``, as the
    trainer writes it, and ``by-position/checkpoint-<SAVE_AT>``, its optimizer state as written
    before it was keyed by parameter name."""
    return out / "one-rank" / mode


def from_one_rank(config: TrainerConfig, world, tokenizer, out: Path) -> dict:
    """Resume a one-rank job's checkpoints under FSDP: Adam's state must be the one it saved."""
    root, name, found = one_rank_root(out, config.mode), checkpoint.name_for(SAVE_AT), {}
    for written, path in (("by_name", root / name), ("by_position", root / "by-position" / name)):
        run = make_run(config, world, tokenizer, atorch_gpu_strategy, weights=path)
        checkpoint.load_training_state(path, run.acc, run.scheduler, world)
        restored = optimizer_state(run.acc)
        if world.is_main:
            found[written] = state_diff(restored, torch.load(root / OPTIMIZER_AT_SAVE, weights_only=True))
    return found


def check(mode: str, world, tokenizer, out: Path) -> dict:
    config = trainer_config(mode, out / mode)
    reference = make_run(config, world, tokenizer, data_parallel)
    result = {"reference": steps(reference, 1, STEPS)}
    reference_weights = full_weights(reference)
    for precision in PRECISIONS:
        sharded_config = dataclasses.replace(
            config, training=dataclasses.replace(config.training, bf16=precision == "bf16"),
            checkpoint=dataclasses.replace(config.checkpoint, mount_path=str(out / mode / precision)))
        result[precision] = sharded(sharded_config, world, tokenizer, reference_weights)
    if world.is_main:
        plain = _build(config, tokenizer, None)  # the HF/peft model's own names and dtypes, unwrapped
        expected = {k: str(v.dtype) for k, v in plain.state_dict().items() if mode != "lora" or "lora_" in k}
        result["expected_tensors"] = _peft_names(expected) if mode == "lora" else expected
    return result


def sharded(config: TrainerConfig, world, tokenizer, reference_weights) -> dict:
    """ATorch's GPU strategy: the same steps, a checkpoint after SAVE_AT, and a resume from it."""
    run = make_run(config, world, tokenizer, atorch_gpu_strategy)
    run_steps = steps(run, 1, SAVE_AT)
    reporter = metrics.Reporter(Path(config.checkpoint.mount_path), world.is_main, 10)
    saved_path = save(run, reporter)
    run.writer.close()
    reporter.close()
    at_save = optimizer_state(run.acc)  # for one_rank_check.py, which resumes this checkpoint on one rank
    if world.is_main:
        torch.save(at_save, saved_path.parent / OPTIMIZER_AT_SAVE)
    run_steps += steps(run, SAVE_AT + 1, STEPS)
    weights = full_weights(run)

    distributed.barrier()  # the checkpoint is on disk before any rank reads it
    resumed = make_run(config, world, tokenizer, atorch_gpu_strategy, weights=saved_path)
    # A save before anything ran on the wrapped model, not even the optimizer state's load, which
    # initializes FSDP's root as a forward pass does: the steps after it must still follow the
    # uninterrupted run (a resumed run closing a finished epoch saves before its first step).
    first_snapshot = full_weights(resumed)
    checkpoint.load_training_state(saved_path, resumed.acc, resumed.scheduler, world)
    resumed_steps = steps(resumed, SAVE_AT + 1, STEPS)
    resumed_weights = full_weights(resumed)

    gathered_optimizer = checkpoint._optimizer_state(run.acc)  # collective, as in a save
    result = {"steps": run_steps, "resumed": resumed_steps, "strategy": run.acc.strategy,
              "gathered_optimizer_tensors": sum(isinstance(v, torch.Tensor) for s in
                                                gathered_optimizer.get("state", {}).values() for v in s.values()),
              "buffers_while_training": {name: str(b.dtype) for name, b in run.acc.model.named_buffers()}}
    if world.is_main:
        result |= {
            "vs_reference": max_diff(weights, reference_weights),
            "resumed_vs_uninterrupted": max_diff(resumed_weights, weights),
            "first_snapshot_vs_saved": max_diff(in_file_names(config, first_snapshot), saved_weights(saved_path)),
            "files": saved_tensors(saved_path),
            "snapshot": {name: str(tensor.dtype) for name, tensor in weights.items()},
        }
    return result


def _peft_names(tensors: dict[str, str]) -> dict[str, str]:
    """State-dict names of the default adapter as peft stores them in adapter_model.safetensors."""
    return {k.replace(".default.", "."): v for k, v in tensors.items()}


def main(out: Path) -> None:
    world = distributed.init()
    config = trainer_config("sst", out)
    tokenizer = load_tokenizer(config)
    result = {}
    for mode in ("sst", "lora"):
        result[mode] = check(mode, world, tokenizer, out)
        result[mode]["from_one_rank"] = from_one_rank(trainer_config(mode, out / mode), world, tokenizer, out)
    (out / f"rank-{world.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
