"""`mft-train merge-lora --base DIR --adapter DIR --out DIR`: fold a LoRA adapter into its base model."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base model folder (default: base_model_name_or_path of the adapter)")
    parser.add_argument("--adapter", required=True, help="adapter folder or LoRA checkpoint")
    parser.add_argument("--out", required=True,
                        help="output folder: merged model (safetensors), tokenizer and prompt format (mft_prompt.json)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from mft_trainer.generation import prompt_format, write_prompt_format
    from mft_trainer.lora import base_model_path, merge

    try:
        merged = merge(args.adapter, args.base)
    except OSError as exc:
        print(f"mft-train merge-lora: {exc}", file=sys.stderr)
        return 1
    merged.save_pretrained(args.out, safe_serialization=True)
    # The checkpoint's tokenizer: the one training used, with any tokens it added.
    has_tokenizer = (Path(args.adapter) / "tokenizer_config.json").exists()
    tokenizer_source = args.adapter if has_tokenizer else (args.base or base_model_path(args.adapter))
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(args.out)
    write_prompt_format(prompt_format(args.adapter), args.out)
    print(f"merged {args.adapter} into {args.base or 'its base model'}: {args.out}")
    return 0
