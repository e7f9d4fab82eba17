"""`mft-train train --config FILE`: run by torchrun in every pod (or as one plain process)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="trainer config YAML (the MFTJob spec sections, snake_case)")


def run(args: argparse.Namespace) -> int:
    from mft_trainer.config import load_config
    from mft_trainer.train import main

    return main(load_config(args.config))
