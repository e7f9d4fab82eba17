"""Packed rows' documents as spans for the varlen kernel, and the model's path to that kernel.

The kernel itself needs a GPU (bench/gpu/check_attention.py compares it with the mask path there);
here a reference kernel with its contract (every span causal on its own, the flattened batch in and
out) stands in for it, so what is ours is checked on the CPU: the spans, the layout, and that the
model's forward and backward reach it in every layer and agree with the mask path."""

import functools
from unittest import mock

import pytest
import torch

from mft_trainer import attention
from mft_trainer.model import model_inputs

from .conftest import tiny_model


def test_spans_split_rows_and_documents_and_keep_a_rows_pads_together():
    spans = attention.document_spans(torch.tensor([[0, 0, 1, 1, -1, -1], [0, 0, 0, 1, 2, 2]]))
    assert spans["cu_seq_lens_q"].tolist() == [0, 2, 4, 6, 9, 10, 12]
    assert spans["cu_seq_lens_q"].dtype == torch.int32 and spans["cu_seq_lens_k"] is spans["cu_seq_lens_q"]
    assert spans["max_length_q"] == spans["max_length_k"] == 3


def test_one_document_continuing_into_the_next_row_is_two_spans():
    spans = attention.document_spans(torch.tensor([[0, 0, 0], [0, 0, 0]]))
    assert spans["cu_seq_lens_q"].tolist() == [0, 3, 6]


def reference_kernel(calls: list):
    def kernel(query, key, value, cu_q, cu_k, max_q, max_k):
        calls.append(query.shape)
        assert torch.equal(cu_q, cu_k) and max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max())
        out = []
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))  # [H, len, D]
            out.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(0, 1))
        return torch.cat(out)

    return kernel


def packed_batch(tokenizer) -> dict[str, torch.Tensor]:
    docs = [[tokenizer("def add(a, b):\n    return a + b")["input_ids"], tokenizer("print('hi')")["input_ids"]],
            [tokenizer("x = [i * i for i in range(10)]")["input_ids"]]]
    length = max(sum(map(len, row)) for row in docs) + 3
    rows = {"input_ids": [], "position_ids": [], "sample_index": []}
    for row in docs:
        pad = length - sum(map(len, row))
        rows["input_ids"].append(torch.tensor(sum(row, []) + [tokenizer.pad_token_id] * pad))
        rows["position_ids"].append(torch.cat([torch.arange(len(d)) for d in row] + [torch.zeros(pad, dtype=torch.long)]))
        rows["sample_index"].append(torch.cat([torch.full((len(d),), i) for i, d in enumerate(row)] + [torch.full((pad,), -1)]))
    return {name: torch.stack(tensors) for name, tensors in rows.items()}


def forward_backward(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    logits = model(**model_inputs(batch, torch.device("cpu"))).logits
    logits.float().square().mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()]


def checkpointed(model, impl):
    """Every layer wrapped for recomputation as ATorch's ``checkpoint`` method wraps it."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing, checkpoint_wrapper)

    from mft_trainer.accelerate import layer_class

    apply_activation_checkpointing(model, checkpoint_wrapper_fn=functools.partial(checkpoint_wrapper, checkpoint_impl=impl),
                                   check_fn=lambda module: isinstance(module, layer_class()))
    return model


@pytest.mark.parametrize("checkpointing", [None, "REENTRANT", "NO_REENTRANT"])
def test_the_varlen_path_matches_the_mask_path_forward_and_backward(tokenizer, checkpointing):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl

    model = tiny_model(len(tokenizer), use_cache=False).train()
    if checkpointing:  # layer inputs and the spans go through recomputation (reentrant: packed as arguments)
        model = checkpointed(model, CheckpointImpl[checkpointing])
    batch = packed_batch(tokenizer)
    masked_logits, masked_grads = forward_backward(model, batch)

    calls = []
    with mock.patch.object(attention, "varlen_applies", lambda *_: True), \
            mock.patch.object(attention, "_varlen_kernel", lambda: reference_kernel(calls)):
        logits, grads = forward_backward(model, batch)

    layers = model.config.num_hidden_layers
    assert len(calls) == layers * (2 if checkpointing else 1)  # recomputed in the backward pass
    heads, head_dim = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    assert set(calls) == {torch.Size([batch["input_ids"].numel(), heads, head_dim])}
    torch.testing.assert_close(logits, masked_logits, atol=1e-5, rtol=1e-5)
    for grad, masked in zip(grads, masked_grads):
        torch.testing.assert_close(grad, masked, atol=1e-5, rtol=1e-4)


def test_the_kernel_is_used_only_where_it_runs():
    cpu_bf16 = torch.zeros(1, 2, 4, 64, dtype=torch.bfloat16)
    assert not attention.varlen_applies(cpu_bf16, 0.0, None)  # no CUDA here: the mask path
    with mock.patch.object(torch.Tensor, "is_cuda", True), \
            mock.patch.object(attention, "_flash_capable", lambda _: True):
        assert attention.varlen_applies(cpu_bf16, 0.0, 64 ** -0.5) is (attention._varlen_kernel() is not None)
        assert not attention.varlen_applies(cpu_bf16.float(), 0.0, None)  # fp32: flash takes half precision only
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 queries from the rotary embedding, autocast on
            assert attention.varlen_applies(cpu_bf16.float(), 0.0, None) is (attention._varlen_kernel() is not None)
        assert not attention.varlen_applies(cpu_bf16, 0.1, None)  # no dropout in the kernel
        assert not attention.varlen_applies(cpu_bf16, 0.0, 0.5)  # only the default scale
        assert not attention.varlen_applies(torch.zeros(1, 2, 4, 12, dtype=torch.bfloat16), 0.0, None)
