"""ATorch acceleration: one explicit strategy list handed to ``auto_accelerate``.

GPU: data parallel, ``module_replace`` (only where a replacement applies), FSDP wrapping each
``GPTNeoXLayer`` (from two ranks up), bf16 ``amp_native`` and per-layer activation checkpointing, as
in the reference.
CPU: ATorch's fsdp/amp_native/half refuse to run there, so data parallel over gloo plus
activation checkpointing. The dry run is skipped because the strategy is given, not searched.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mft_trainer.config import TrainingConfig
from mft_trainer.distributed import World

log = logging.getLogger(__name__)


@dataclass
class Accelerated:
    model: nn.Module  # what ATorch returned (DDP/FSDP wrapper or the model itself)
    optimizer: torch.optim.Optimizer
    strategy: list[str]  # names of the applied optimization methods, in order

    @property
    def uses_fsdp(self) -> bool:
        return "fsdp" in self.strategy


def layer_class() -> type[nn.Module]:
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer

    return GPTNeoXLayer


def rotary_class() -> type[nn.Module]:
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

    return GPTNeoXRotaryEmbedding


def build_strategy(training: TrainingConfig, world_size: int, cuda: bool, *, layer_inputs_need_grad: bool) -> list[Any]:
    layer = layer_class()
    strategy: list[Any] = [("parallel_mode", ([("data", world_size)], None))]
    if cuda:
        if _apex_layer_norm_available():
            # With transformers >= 4.38 ATorch's only GPT-NeoX replacement is LayerNorm -> apex LayerNorm.
            strategy.append("module_replace")
        if world_size > 1:  # one rank has nothing to shard (ATorch drops fsdp there itself)
            # With bf16, ATorch gives FSDP bf16 buffers too: the rotary inv_freq would be rounded
            # to bf16 while training (every rotary angle off by up to 0.2%, so by radians at long
            # positions) but not in the fp32 model that is saved and served. FSDP leaves the
            # buffers of an ignored module alone.
            fsdp = {"sync_module_states": True, "use_orig_params": True, "limit_all_gathers": True,
                    "atorch_wrap_cls": (layer,), "atorch_ignored_cls": (rotary_class(),)}
            strategy.append(("fsdp", fsdp))
        if training.bf16:
            strategy.append(("amp_native", {"dtype": torch.bfloat16}))
    if training.checkpoint_activations:
        # ATorch wants the class itself (a class name is not resolved for GPT-NeoX). Reentrant
        # checkpointing (ATorch's default, and the reference's) saves a layer's inputs only; the
        # non-reentrant kind runs Python hooks for every tensor a layer saves, which slowed a host-bound
        # step of 24 narrow layers by 8% (BENCHMARKS.md). But reentrant checkpointing yields no gradients
        # when the layer inputs do not require grad: under LoRA's frozen embeddings.
        strategy.append(("checkpoint", {"wrap_class": (layer,), "no_reentrant": not layer_inputs_need_grad}))
    return strategy


def accelerate(model: nn.Module, training: TrainingConfig, world: World) -> Accelerated:
    from atorch.auto import auto_accelerate

    # ATorch narrates every step of strategy loading at INFO on each rank; the applied strategy is
    # logged once below, so keep only its warnings.
    logging.getLogger("atorch.logger").setLevel(logging.WARNING)
    # The first layer's input is the embeddings' output: it needs grad exactly when they train.
    strategy = build_strategy(training, world.size, torch.cuda.is_available(),
                              layer_inputs_need_grad=model.get_input_embeddings().weight.requires_grad)
    place(model, strategy, world.device)
    ok, result, applied = auto_accelerate(
        model,
        optim_func=torch.optim.AdamW,
        optim_args=optimizer_args(training),
        optim_param_func=param_groups,
        load_strategy=strategy,
        ignore_dryrun_on_load_strategy=True,
    )
    if not ok:
        raise RuntimeError(f"ATorch auto_accelerate failed for strategy {strategy}")
    names = [_name(opt) for opt in applied]
    left_out = [opt for opt in strategy if _name(opt) not in names]
    if left_out:
        log.warning("ATorch left out of the strategy: %s", describe(left_out))
    log.info("ATorch strategy: %s", describe([opt for opt in strategy if _name(opt) in names]))
    return Accelerated(model=result.model, optimizer=result.optim, strategy=names)


def optimizer_args(training: TrainingConfig) -> dict[str, Any]:
    """AdamW's settings, with its fused kernel (one launch for every parameter's update on a GPU, one
    pass on a CPU; the Hugging Face Trainer's default): the foreach kernels cost a 1.4B step 3-6%."""
    return {"lr": training.learning_rate, "weight_decay": training.weight_decay, "fused": True}


def place(model: nn.Module, strategy: list[Any], device: torch.device) -> None:
    """Move to the rank's device what ATorch will not move there.

    FSDP moves what it shards, one unit at a time (the whole model never sits on one GPU
    unsharded), but not the rotary embedding it ignores, whose buffer its sync_module_states then
    broadcasts, which works only from the GPU. Without FSDP nothing moves the model: ATorch adds
    DDP, which would, only for two ranks or more.
    """
    if any(_name(opt) == "fsdp" for opt in strategy):
        rotary = rotary_class()
        modules = [module for module in model.modules() if isinstance(module, rotary)]
    else:
        modules = [model]
    for module in modules:
        module.to(device)


def _name(opt: Any) -> str:
    return opt[0] if isinstance(opt, (tuple, list)) else opt


def describe(strategy: list[Any]) -> str:
    parts = []
    for opt in strategy:
        name, cfg = (opt[0], opt[1]) if isinstance(opt, tuple) else (opt, None)
        if name == "parallel_mode":
            parts.append(f"parallel_mode(data={cfg[0][0][1]})")
        elif name == "fsdp":
            parts.append("fsdp(wrap=GPTNeoXLayer)")
        elif name == "amp_native":
            parts.append(f"amp_native({cfg['dtype']})")
        elif name == "checkpoint":
            parts.append("checkpoint(GPTNeoXLayer)")
        else:
            parts.append(name)
    return ", ".join(parts)


def param_groups(model: nn.Module, **_: Any) -> list[dict[str, Any]]:
    """No weight decay for biases and LayerNorm weights; frozen (LoRA base) parameters left out.

    Decided by name, not shape: under FSDP with use_orig_params the parameters are flat shards.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        (no_decay if name.endswith("bias") or "norm" in lowered else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_grad_norm(acc: Accelerated, max_norm: float) -> torch.Tensor:
    """Clip and return the total gradient norm; ``max_norm`` 0 (or below) only measures it.

    Not ATorch's clip_grad_norm: on its unsharded (data parallel) path it computes the norm from a
    parameter generator and then scales through the same, exhausted, generator, so nothing is
    clipped (atorch 0.2.5). FSDP's own method reduces the norm across shards.
    """
    if max_norm <= 0:
        max_norm = math.inf  # torch would scale every gradient by 0 / norm
    if acc.uses_fsdp:
        return acc.model.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(acc.model.parameters(), max_norm)


def no_sync(acc: Accelerated, last_micro_batch: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step.

    Under FSDP gradients stay sharded instead (no_sync would keep full gradients on every rank).
    """
    if last_micro_batch or acc.uses_fsdp or not hasattr(acc.model, "no_sync"):
        return contextlib.nullcontext()
    return acc.model.no_sync()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ATorch's DDP wrapper (FSDP's root module keeps its own state_dict logic)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _apex_layer_norm_available() -> bool:
    try:
        import apex.normalization  # noqa: F401
    except ImportError:
        return False
    return True
