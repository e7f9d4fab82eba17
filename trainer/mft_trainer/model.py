"""GPT-NeoX construction and the inputs one training forward pass takes.

Packed rows hold several documents. Each document must see only itself, so packed batches carry
their documents as spans of the flattened batch (``attention.document_spans``, which ``attention``
turns into a varlen kernel call or a block-diagonal causal mask) and position ids that restart at
every document. Rows with a single document take sdpa's causal path (an all-ones mask, which
transformers turns into no mask and ``is_causal``), so sdpa can pick its fastest kernel. Right
padding needs no mask under causal attention: pad tokens come after every real token and carry no
targets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from mft_trainer import attention
from mft_trainer.config import TrainerConfig
from mft_trainer.distributed import to_device

log = logging.getLogger(__name__)

ATTENTION = attention.NAME


def build_model(config: TrainerConfig, tokenizer: PreTrainedTokenizerBase,
                weights: str | Path | None = None) -> PreTrainedModel:
    """The full-precision model: from ``weights`` (a checkpoint), ``model.path``, or ``model.config``.

    ``model.config`` is a GPT-NeoX config for random init (sst), or overrides on top of
    ``model.path``'s config. Parameters stay fp32; bf16 is ATorch's autocast on GPU.
    """
    overrides = dict(config.model.config)
    source = weights or config.model.path
    if source:
        model = GPTNeoXForCausalLM.from_pretrained(
            source, torch_dtype=torch.float32, attn_implementation=ATTENTION, **overrides)
    else:
        overrides.setdefault("vocab_size", len(tokenizer))
        model_config = GPTNeoXConfig(**overrides)
        model_config._attn_implementation = ATTENTION
        model = GPTNeoXForCausalLM(model_config)
    fit_embeddings(model, len(tokenizer))
    model.config.use_cache = False
    use_tokenizer_ids(model, tokenizer)
    return model


def use_tokenizer_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the model the tokenizer's eos, pad and bos ids, in config.json and in generation_config.json:
    ``generate()`` (and vLLM, TGI) stop at the latter's eos, which otherwise keeps the base model's or,
    from scratch, GPTNeoXConfig's default (2, "!" for GPT-NeoX-20B's tokenizer)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad, "bos_token_id": tokenizer.bos_token_id}
    for settings in (model.config, model.generation_config):
        for name, value in ids.items():
            setattr(settings, name, value)


def write_serving_config(config_file: Path, **settings: Any) -> None:
    """Edit a saved config.json into the form servers read: ``settings`` over what is there, and the
    weights' dtype under ``torch_dtype`` as well as ``dtype`` (transformers from 4.56 writes only
    ``dtype``; older releases, and the serving stacks built on them, read ``torch_dtype``)."""
    config = json.loads(config_file.read_text()) | settings
    config["torch_dtype"] = config["dtype"]
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def fit_embeddings(model: PreTrainedModel, vocab_size: int) -> None:
    """Grow the input and output embeddings to ``vocab_size`` rows when they have fewer: tokens the
    tokenizer adds (role markers made special tokens) need rows of their own. The new rows start
    random (the mean and covariance of the old ones)."""
    if vocab_size > model.config.vocab_size:
        log.info("resizing embeddings from %d to the tokenizer's %d tokens", model.config.vocab_size, vocab_size)
        model.resize_token_embeddings(vocab_size)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": to_device(batch["input_ids"], device)}
    # All ones, pads included (they follow every real token and carry no target). Without any mask,
    # transformers (4.56, no KV cache) looks for packing in the position ids and always builds a
    # full [B, 1, L, L] mask, which keeps sdpa off its causal kernels (and is not needed by varlen).
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if is_packed(batch["sample_index"]):
        inputs["position_ids"] = to_device(batch["position_ids"], device)
        spans = attention.document_spans(batch["sample_index"])
        offsets = to_device(spans["cu_seq_lens_q"], device)  # one copy: queries and keys share the spans
        inputs |= spans | {"cu_seq_lens_q": offsets, "cu_seq_lens_k": offsets}
    return inputs


def is_packed(sample_index: torch.Tensor) -> bool:
    """True when some row holds more than one document."""
    real = sample_index >= 0
    first = torch.where(real, sample_index, sample_index.max() + 1).min(dim=1, keepdim=True).values
    return bool(((sample_index != first) & real).any())


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
