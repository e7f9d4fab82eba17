"""`mft-train preprocess`: JSONL task folders -> memory-mapped binary task folders (see mft_trainer.data.binary).

    mft-train preprocess --config FILE --output DIR [--input TASKDIR...]
    mft-train preprocess --tokenizer DIR --mode sft|sst --input TASKDIR... --output DIR [--seq-length N] [--workers N]

Each input folder becomes DIR/{task}; point the training config's data.paths at those folders and set
data.format: bin.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mft_trainer.config import ConfigError
from mft_trainer.data.binary import preprocess
from mft_trainer.data.command_line import add_config_arguments, chosen_seq_length, config_from_arguments
from mft_trainer.data.errors import DataError
from mft_trainer.data.tokenizer import load_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", help="JSONL task folders (default: data.paths of a jsonl --config)")
    parser.add_argument("--output", required=True, help="folder that receives one binary folder per task")
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="tokenizer processes (default: all cores)"
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_arguments(args)
        inputs = args.input or (config.data.paths if args.config and config.data.format == "jsonl" else None)
        if not inputs:
            raise DataError("--input: expected JSONL task folders (or --config whose data.format is jsonl), found none")
        tokenizer = load_tokenizer(config)
        output = Path(args.output)
        report = preprocess(config, tokenizer, inputs, output, chosen_seq_length(args, config), max(1, args.workers))
    except (DataError, ConfigError) as exc:
        print(f"mft-train preprocess: {exc}", file=sys.stderr)
        return 1
    print(report.summary(), file=sys.stderr)
    for task in report.tasks:
        print(output / task.name)
    return 0
