"""`mft-train train --config FILE`: run by torchrun in every pod (or as one plain process)."""

from __future__ import annotations

import argparse
import sys

# Exit code of input the user must fix (config, data, a full or read-only checkpoint volume, a
# checkpoint file that is not the trainer's): 1-127 is never retried by the PyTorchJob ExitCode
# restart policy, which is right, since a retry would meet the same input.
BAD_INPUT_EXIT_CODE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="trainer config YAML (the MFTJob spec sections, snake_case)")


def run(args: argparse.Namespace) -> int:
    from mft_trainer.checkpoint import UnsafeFile, WriteError
    from mft_trainer.config import ConfigError, load_config
    from mft_trainer.data import DataError
    from mft_trainer.distributed import DeviceError
    from mft_trainer.train import main

    try:
        return main(load_config(args.config))
    except (ConfigError, DataError, DeviceError, UnsafeFile, WriteError) as exc:
        # A message for people (file:line or field path, expected vs found), not a traceback; in one
        # write, as the ranks of a pod share stderr and may fail together (a failed checkpoint write).
        sys.stderr.write(f"mft-train: {exc}\n")
        return BAD_INPUT_EXIT_CODE
