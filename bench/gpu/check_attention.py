"""On a GPU: packed rows through the varlen flash kernel give what the block-diagonal mask path gives.

A GPT-NeoX of 2 layers (1024 wide, 16 heads), bf16 autocast, 4 rows of 2048 tokens with 4 documents
each (the benchmark's rows); one forward and backward each way, from the same weights. Prints the
relative error of the logits and of every gradient (Frobenius norm of the difference over the mask
path's) and fails above 2e-2, the order of bf16 rounding between two attention kernels; fails too
if the kernel was not used. Run by run.sh ahead of the benchmark; the CPU tests check the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import batches  # noqa: E402  (the benchmark's packed rows)

from mft_trainer import attention  # noqa: E402
from mft_trainer.model import ATTENTION, model_inputs  # noqa: E402

TOLERANCE = 2e-2


def forward_backward(model, batch, varlen: bool):
    model.zero_grad()
    with mock.patch.object(attention, "varlen_applies", attention.varlen_applies if varlen else (lambda *_: False)), \
            torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(**model_inputs(batch, torch.device("cuda"))).logits
    logits.float().square().mean().backward()
    return logits.detach().float(), {name: p.grad.clone() for name, p in model.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def main() -> int:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    if not torch.cuda.is_available():
        print("check_attention: no GPU here, nothing to compare (the kernel runs on GPUs only)")
        return 0
    config = GPTNeoXConfig(vocab_size=4096, hidden_size=1024, num_hidden_layers=2, num_attention_heads=16,
                           intermediate_size=4096, use_cache=False)
    config._attn_implementation = ATTENTION
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).cuda().train()
    plan = SimpleNamespace(tokens_per_step=4 * 2048, warmup=0, steps=1)
    batch = next(batches(plan, 2048, config.vocab_size))

    calls = []
    kernel = attention._varlen_kernel()
    if kernel is None:
        print("check_attention: this torch has no varlen attention: packed rows take the mask path")
        return 0

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    masked_logits, masked_grads = forward_backward(model, batch, varlen=False)
    with mock.patch.object(attention, "_varlen_kernel", lambda: counting):
        logits, grads = forward_backward(model, batch, varlen=True)
    errors = {"logits": relative(logits, masked_logits)} | {name: relative(grads[name], masked_grads[name])
                                                            for name in grads}
    worst = max(errors, key=errors.get)
    print(f"check_attention: varlen kernel calls {len(calls)}, causal switch {getattr(kernel, 'keywords', None)}; relative error "
          f"logits {errors['logits']:.2e}, worst gradient {worst} {errors[worst]:.2e}")
    if not calls or errors[worst] > TOLERANCE:
        print(f"check_attention: FAILED (no kernel call, or an error above {TOLERANCE})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
