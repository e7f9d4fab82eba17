"""`mft-train merge-lora --base DIR --adapter DIR --out DIR`: fold a LoRA adapter into its base model.

The output is a plain Hugging Face model folder: weights in the chosen dtype, config.json and
generation_config.json with the tokenizer's eos, pad and bos ids, the checkpoint's tokenizer with the
chat template of the prompt format, and that format in mft_prompt.json for ``mft-train generate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = ("auto", "float16", "bfloat16", "float32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base model folder (default: base_model_name_or_path of the adapter)")
    parser.add_argument("--adapter", required=True, help="adapter folder or LoRA checkpoint")
    parser.add_argument("--out", required=True,
                        help="output folder: merged model (safetensors), tokenizer and prompt format (mft_prompt.json)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="dtype of the merged weights, which are merged in float32 (default auto: the base "
                             "model's, from its config.json)")


def run(args: argparse.Namespace) -> int:
    from mft_trainer.data.tokenizer import chat_template, save_tokenizer
    from mft_trainer.generation import prompt_format, write_prompt_format
    from mft_trainer.lora import merge
    from mft_trainer.model import use_tokenizer_ids, write_serving_config

    try:
        merged = merge(args.adapter, args.base, args.dtype)
    except OSError as exc:
        print(f"mft-train merge-lora: {exc}", file=sys.stderr)
        return 1
    tokenizer = _training_tokenizer(args.adapter, args.base)
    data = prompt_format(args.adapter)
    # Also for checkpoints written before the trainer saved a template, and for a base model's tokenizer.
    tokenizer.chat_template = chat_template(data, tokenizer.eos_token)
    use_tokenizer_ids(merged, tokenizer)
    merged.save_pretrained(args.out, safe_serialization=True)
    write_serving_config(Path(args.out) / "config.json")
    save_tokenizer(tokenizer, args.out)
    write_prompt_format(data, args.out)
    print(f"merged {args.adapter} into {args.base or 'its base model'} ({merged.dtype}): {args.out}")
    return 0


def _training_tokenizer(adapter: str, base: str | None):
    """The checkpoint's tokenizer: the one training used, with any tokens it added; else the base model's."""
    from transformers import AutoTokenizer

    from mft_trainer.lora import base_model_path

    has_tokenizer = (Path(adapter) / "tokenizer_config.json").exists()
    return AutoTokenizer.from_pretrained(adapter if has_tokenizer else (base or base_model_path(adapter)))

