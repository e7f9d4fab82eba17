"""Run as a plain ``python`` process (a world of one): what ATorch applies of the GPU strategy on a
single GPU, with the device questions answered for the CPU as in fsdp_check.py.

Prints one JSON object: for the trainer's own strategy, and for one that asks for FSDP anyway (as a
multi-GPU strategy does), the applied names and the trainer's warnings.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from unittest import mock

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]
import fsdp_check  # noqa: E402

import mft_trainer.accelerate as trainer_accelerate  # noqa: E402
from mft_trainer import distributed  # noqa: E402
from mft_trainer.data import load_tokenizer  # noqa: E402
from mft_trainer.train import _build  # noqa: E402


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def applied(config, tokenizer, world, strategy_world_size: int) -> dict:
    warnings = Warnings()
    logging.getLogger(trainer_accelerate.__name__).addHandler(warnings)
    build = trainer_accelerate.build_strategy
    with mock.patch.object(trainer_accelerate, "build_strategy",
                           lambda training, world_size, cuda, **need: build(training, strategy_world_size, cuda, **need)):
        acc = fsdp_check.atorch_gpu_strategy(_build(config, tokenizer, None), config, world)
    logging.getLogger(trainer_accelerate.__name__).removeHandler(warnings)
    return {"strategy": acc.strategy, "warnings": warnings.messages}


def main() -> None:
    world = distributed.init()
    config = fsdp_check.trainer_config("sst", Path(sys.argv[1]))
    tokenizer = load_tokenizer(config)
    print(json.dumps({"own": applied(config, tokenizer, world, world.size),
                      "asks_for_fsdp": applied(config, tokenizer, world, 2)}))
    distributed.shutdown()


if __name__ == "__main__":
    main()
