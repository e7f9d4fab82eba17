"""The model's attention: sdpa, and for packed rows on the GPU one varlen flash kernel.

A packed row holds several documents, each of which must see only itself. Packed batches reach
attention as spans of the flattened batch (``document_spans``). Where it can (CUDA, Ampere or newer,
bf16/fp16 autocast or weights, a torch with ``torch.nn.attention.varlen``), torch's variable-length
flash attention computes only each document's causal triangle in one launch; on an H200, GPT-NeoX
1.4B, 4096-token rows of 4 documents, attention took 3.5x less time than sdpa with the [B, 1, L, L]
block-diagonal mask (BENCHMARKS.md), whose masked kernels compute every block of the row. Everywhere
else that mask is built from the spans and sdpa takes it, so the two agree up to rounding, and the
mask costs memory only where it is used.

Registered with transformers as the attention implementation ``NAME``, with sdpa's mask function,
so everything but packed batches (generation, evaluation of padded rows) is plain sdpa.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_varlen"
SPAN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")  # transformers' names


def document_spans(sample_index: torch.Tensor) -> dict[str, Any]:
    """The documents of [B, L] ``sample_index`` as spans of the B * L flattened tokens, in the form
    varlen kernels take: cumulative int32 offsets (a row's pads, -1, are one span, as in the mask)
    and the longest span. Computed where the batch is built (the CPU): the longest span, an int the
    kernel takes, costs no device sync there."""
    flat = sample_index.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::sample_index.shape[1]] = True  # a row's first document starts with the row
    end = torch.tensor([flat.numel()], device=flat.device)
    offsets = torch.cat([starts.nonzero().flatten(), end]).to(torch.int32)
    longest = int((offsets[1:] - offsets[:-1]).max())
    return {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets, "max_length_q": longest, "max_length_k": longest}


def block_diagonal_mask(spans: dict[str, Any], batch: int, length: int) -> torch.Tensor:
    """[B, 1, L, L] bool, True = may attend: causal and inside one span (a row's pads see the pads
    before them, so no query row is empty)."""
    offsets = spans["cu_seq_lens_q"].long()
    tokens = torch.arange(batch * length, device=offsets.device)
    span = (torch.searchsorted(offsets, tokens, right=True) - 1).view(batch, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=offsets.device).tril()
    return ((span[:, :, None] == span[:, None, :]) & causal)[:, None]


@functools.cache
def _varlen_kernel() -> Callable[..., torch.Tensor] | None:
    """torch's causal varlen flash attention, or None where torch has none. Its causal switch changed
    form (``is_causal`` at first, ``window_size`` since); the scale is the default 1/sqrt(head dim)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    return functools.partial(varlen_attn, **causal)


@functools.cache
def _flash_capable(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 0)


def compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype attention runs in: the query's, or autocast's where it is on (GPT-NeoX's rotary
    embedding hands attention fp32 queries, which sdpa then casts under autocast)."""
    device = query.device.type
    if query.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return query.dtype


def varlen_applies(query: torch.Tensor, dropout: float, scaling: float | None) -> bool:
    """Whether the varlen kernel can take this call: flash attention runs on CUDA from Ampere on, in
    half precision, for head sizes up to 256 in multiples of 8, without dropout, at the default scale."""
    head_dim = query.shape[-1]
    return (query.is_cuda and compute_dtype(query) in (torch.bfloat16, torch.float16) and dropout == 0.0
            and head_dim % 8 == 0 and head_dim <= 256 and scaling in (None, head_dim ** -0.5)
            and _varlen_kernel() is not None and _flash_capable(query.device))


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: [B, H, L, D] in, [B, L, H, D] out. Packed batches carry
    their spans (``SPAN_KEYS``) and no mask."""
    if "cu_seq_lens_q" in kwargs:
        if varlen_applies(query, dropout, scaling):
            return varlen(query, key, value, kwargs), None
        batch, _, length, _ = query.shape
        attention_mask = block_diagonal_mask(kwargs, batch, length)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spans: dict[str, Any]) -> torch.Tensor:
    batch, heads, length, head_dim = query.shape
    dtype = compute_dtype(query)

    def tokens(states: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [B * L, H, D]
        return states.transpose(1, 2).reshape(batch * length, heads, head_dim).to(dtype)

    out = _varlen_kernel()(tokens(query), tokens(key), tokens(value), *(spans[name] for name in SPAN_KEYS))
    return out.view(batch, length, heads, head_dim)


AttentionInterface.register(NAME, attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
