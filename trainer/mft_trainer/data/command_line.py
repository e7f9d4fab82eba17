"""Arguments shared by `mft-train tokenize` and `mft-train preprocess`: a trainer config file, or the
few settings that matter without one."""

from __future__ import annotations

import argparse

from mft_trainer.config import TrainerConfig, load_config
from mft_trainer.data.errors import DataError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="trainer config file: tokenizer, mode, seq_length and data settings")
    parser.add_argument(
        "--tokenizer", help="tokenizer folder (default: model.tokenizer_path or model.path of --config)"
    )
    parser.add_argument("--mode", choices=["sft", "sst"], help="sft: train on bot turns only; sst: on every token")
    parser.add_argument(
        "--seq-length", type=int,
        help="apply data.overlong_policy at this length (not with data.padding_mode concat, which cuts windows)",
    )


def config_from_arguments(args: argparse.Namespace) -> TrainerConfig:
    config = load_config(args.config) if args.config else TrainerConfig()
    if args.tokenizer:
        config.model.tokenizer_path = args.tokenizer
    if args.mode:
        config.mode = args.mode
    if args.seq_length is not None:
        if args.seq_length <= 0:
            raise DataError(f"--seq-length: expected a number > 0, found {args.seq_length}")
        config.training.seq_length = args.seq_length
    if not config.tokenizer_path:
        raise DataError("--tokenizer: required (or --config with model.tokenizer_path or model.path)")
    return config


def chosen_seq_length(args: argparse.Namespace, config: TrainerConfig) -> int | None:
    """The length over-long documents are cut or dropped at, as training does: given, or the config's;
    none without either, and none in concat mode, whose stream of documents has no over-long one."""
    if config.data.padding_mode == "concat":
        return None
    return config.training.seq_length if args.seq_length or args.config else None
