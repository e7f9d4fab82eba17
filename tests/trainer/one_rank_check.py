"""Run as a plain ``python`` process (a world of one, as a one-GPU or CPU job runs), around
fsdp_check.py's torchrun launch, for checkpoints that change strategy between data parallelism and FSDP:

- ``save OUT``: the data-parallel run's checkpoint after SAVE_AT steps, for each mode, as the
  trainer writes it and with the optimizer state as written before it was keyed by parameter name,
  for fsdp_check.py to resume under FSDP on two ranks; and Adam's state at the save.
- ``resume OUT``: resume the checkpoints that fsdp_check.py's fp32 FSDP runs wrote, and print (one
  JSON object) how Adam's state compares with theirs at the save.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]
import fsdp_check  # noqa: E402

from mft_trainer import checkpoint, distributed, metrics  # noqa: E402
from mft_trainer.data import load_tokenizer  # noqa: E402
from mft_trainer.train import save  # noqa: E402

MODES = ("sst", "lora")


def write_checkpoints(mode: str, world, tokenizer, out: Path) -> None:
    root = fsdp_check.one_rank_root(out, mode)
    run = fsdp_check.make_run(fsdp_check.trainer_config(mode, root), world, tokenizer, fsdp_check.data_parallel)
    fsdp_check.steps(run, 1, fsdp_check.SAVE_AT)
    reporter = metrics.Reporter(root, True, 10)
    path = save(run, reporter)
    run.writer.close()
    reporter.close()
    torch.save(fsdp_check.optimizer_state(run.acc), root / fsdp_check.OPTIMIZER_AT_SAVE)
    by_position = shutil.copytree(path, root / "by-position" / path.name)
    torch.save({"optimizer": run.acc.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()},
               by_position / checkpoint.OPTIMIZER_FILE)


def resume_sharded(mode: str, world, tokenizer, out: Path) -> dict:
    root = out / mode / "fp32"
    path = checkpoint.latest(root).path
    run = fsdp_check.make_run(fsdp_check.trainer_config(mode, root), world, tokenizer, fsdp_check.data_parallel,
                              weights=path)
    checkpoint.load_training_state(path, run.acc, run.scheduler, world)
    expected = torch.load(root / fsdp_check.OPTIMIZER_AT_SAVE, weights_only=True)
    return fsdp_check.state_diff(fsdp_check.optimizer_state(run.acc), expected)


def main(command: str, out: Path) -> None:
    world = distributed.init()
    tokenizer = load_tokenizer(fsdp_check.trainer_config("sst", out))
    if command == "save":
        for mode in MODES:
            write_checkpoints(mode, world, tokenizer, out)
    else:
        print(json.dumps({mode: resume_sharded(mode, world, tokenizer, out) for mode in MODES}))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
