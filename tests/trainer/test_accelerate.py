"""The ATorch strategy the trainer asks for, what it places on the device first, and what ATorch
applies of it on a single GPU."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mft_trainer.accelerate import Accelerated, build_strategy, clip_grad_norm, describe, place
from mft_trainer.config import TrainingConfig
from tests.training_processes import PYTHON, REPO, child_env


@pytest.mark.parametrize(("cuda", "world_size", "bf16", "expected"), [
    (False, 2, True, "parallel_mode(data=2), checkpoint(GPTNeoXLayer)"),
    (True, 1, True, "parallel_mode(data=1), amp_native(torch.bfloat16), checkpoint(GPTNeoXLayer)"),
    (True, 8, True, "parallel_mode(data=8), fsdp(wrap=GPTNeoXLayer), amp_native(torch.bfloat16), "
                    "checkpoint(GPTNeoXLayer)"),
    (True, 8, False, "parallel_mode(data=8), fsdp(wrap=GPTNeoXLayer), checkpoint(GPTNeoXLayer)"),
])
def test_strategy_follows_device_world_size_and_precision(cuda, world_size, bf16, expected):
    assert describe(build_strategy(TrainingConfig(bf16=bf16), world_size, cuda, layer_inputs_need_grad=True)) == expected


@pytest.mark.parametrize("layer_inputs_need_grad", [True, False])  # False: LoRA's frozen embeddings
def test_checkpointing_is_reentrant_unless_the_layer_inputs_need_no_gradient(layer_inputs_need_grad):
    strategy = build_strategy(TrainingConfig(), 1, cuda=True, layer_inputs_need_grad=layer_inputs_need_grad)
    # Reentrant recomputation would give no gradients where the layer inputs need none.
    assert dict(opt for opt in strategy if isinstance(opt, tuple))["checkpoint"]["no_reentrant"] is not layer_inputs_need_grad


def test_no_activation_checkpointing_when_turned_off():
    strategy = build_strategy(TrainingConfig(checkpoint_activations=False), 8, cuda=True, layer_inputs_need_grad=True)
    assert "checkpoint" not in describe(strategy)


@pytest.mark.slow
def test_one_gpu_gets_the_whole_strategy_and_a_dropped_method_is_reported(tmp_path):
    proc = subprocess.run([PYTHON, str(Path(__file__).with_name("one_gpu_check.py")), str(tmp_path)],
                          env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # What the trainer asks for on one GPU is exactly what ATorch applies.
    assert result["own"] == {"strategy": ["parallel_mode", "amp_native", "checkpoint"], "warnings": []}
    # FSDP is distributed only: ATorch drops it on one rank, and the trainer says so.
    assert result["asks_for_fsdp"] == {"strategy": ["parallel_mode", "amp_native", "checkpoint"],
                                       "warnings": ["ATorch left out of the strategy: fsdp(wrap=GPTNeoXLayer)"]}


@pytest.mark.parametrize(("world_size", "moved"), [
    (1, "every tensor"),  # no FSDP and no DDP on one rank: nothing else moves the model to the GPU
    (8, "only the rotary frequencies"),  # FSDP moves what it shards; the module it ignores goes first
])
def test_what_moves_to_the_device_before_atorch_wraps_the_model(world_size, moved):
    from .conftest import tiny_model

    model = tiny_model(64)
    # The meta device stands in for the GPU: it shows what moved without needing one.
    place(model, build_strategy(TrainingConfig(), world_size, cuda=True, layer_inputs_need_grad=True), torch.device("meta"))
    on_meta = {name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta}
    everything = {name for name, _ in [*model.named_parameters(), *model.named_buffers()]}
    if moved == "every tensor":
        assert on_meta == everything
    else:
        assert on_meta == {"gpt_neox.rotary_emb.inv_freq"}


@pytest.mark.parametrize("max_norm", [0.0, -1.0])
def test_a_max_norm_of_zero_measures_the_gradient_norm_and_clips_nothing(max_norm):
    layer = torch.nn.Linear(4, 4)
    layer(torch.ones(2, 4)).sum().mul(100).backward()
    before = [p.grad.clone() for p in layer.parameters()]
    acc = Accelerated(model=layer, optimizer=torch.optim.SGD(layer.parameters(), lr=0.1), strategy=[])
    norm = clip_grad_norm(acc, max_norm)
    assert float(norm) == pytest.approx(float(torch.cat([g.flatten() for g in before]).norm()))
    assert all(torch.equal(p.grad, g) for p, g in zip(layer.parameters(), before))
    clip_grad_norm(acc, 1.0)
    assert float(torch.cat([p.grad.flatten() for p in layer.parameters()]).norm()) == pytest.approx(1.0, rel=1e-4)
