"""Loading the tokenizer the way every part of the trainer sees it, and fingerprinting it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mft_trainer.config import TrainerConfig
from mft_trainer.data.errors import DataError

# A 4096-token byte-level BPE shaped like GPT-NeoX-20B's, for the demo and tests (see make_tokenizer.py).
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tokenizer-tiny"


def load_tokenizer(config: TrainerConfig) -> PreTrainedTokenizerFast:
    """The fast tokenizer at model.tokenizer_path (or model.path), adjusted by the data section:

    - `data.markers_as_special_tokens` adds role_start/role_end as special tokens (each becomes one id;
      this grows the vocabulary, so the model's embeddings must be resized to len(tokenizer)). The
      default keeps them plain text, like the reference.
    - `data.eos_token` replaces the eos token; it must already be a single token of the vocabulary.
    - a missing pad token is set to eos: padding is masked out everywhere, only its id must exist.
    """
    path = config.tokenizer_path
    if not path:
        raise DataError("model.tokenizer_path: expected a tokenizer folder (or model.path), found none")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: expected a Hugging Face tokenizer folder, cannot load it: {exc}") from exc
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise DataError(f"{path}: expected a fast tokenizer (tokenizer.json), found {type(tokenizer).__name__}")
    data = config.data
    if data.markers_as_special_tokens:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [data.role_start, data.role_end]}, replace_additional_special_tokens=False
        )
    if data.eos_token:
        if data.eos_token not in tokenizer.get_vocab():
            raise DataError(f"data.eos_token: expected a token of the tokenizer at {path}, found {data.eos_token!r}")
        tokenizer.eos_token = data.eos_token
    if tokenizer.eos_token is None:
        raise DataError(f"{path}: the tokenizer has no eos token; set data.eos_token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's serialized JSON (vocabulary, merges, normalizer, added tokens ...), taken
    with truncation and padding off: they do not change token ids."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation or backend.padding:
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return "sha256:" + hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()
