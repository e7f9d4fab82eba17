"""`mft-train merge-lora --base DIR --adapter DIR --out DIR`: fold a LoRA adapter into its base model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="base model folder (default: base_model_name_or_path of the adapter)")
    parser.add_argument("--adapter", required=True, help="adapter folder or LoRA checkpoint")
    parser.add_argument("--out", required=True, help="output folder: merged model (safetensors) and tokenizer")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from mft_trainer.lora import merge

    merged = merge(args.adapter, args.base)
    merged.save_pretrained(args.out, safe_serialization=True)
    tokenizer_source = args.adapter if (Path(args.adapter) / "tokenizer_config.json").exists() else args.base
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(args.out)
    print(f"merged {args.adapter} into {args.base or 'its base model'}: {args.out}")
    return 0

