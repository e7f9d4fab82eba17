"""Run under ``torchrun --nproc_per_node=2``: fsdp_check's comparison (ATorch's GPU strategy on real
FSDP over gloo against data parallelism, the checkpoint's files, a resume) for LoRA on a base model
whose vocabulary the role markers grow, where the embedding layers train in full beside the adapter
(peft ``modules_to_save``): frozen originals and trained copies share FSDP's root unit.

Writes ``<out>/rank-<r>.json`` with what test_fsdp_added_tokens.py asserts on.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]
import fsdp_check  # noqa: E402

from mft_trainer import distributed  # noqa: E402
from mft_trainer.config import DataConfig, ModelConfig  # noqa: E402
from mft_trainer.data import load_tokenizer  # noqa: E402

from tests.trainer.conftest import tiny_model  # noqa: E402
from tests.training_processes import TOKENIZER  # noqa: E402


def main(out: Path) -> None:
    world = distributed.init()
    base = out / "base"
    if world.is_main:
        tiny_model(4096, seed=3).save_pretrained(base)  # the tiny tokenizer's vocabulary, no markers
    distributed.barrier()
    plain_config = fsdp_check.trainer_config

    def added_tokens_config(mode, root):
        return dataclasses.replace(plain_config(mode, root), data=DataConfig(markers_as_special_tokens=True),
                                   model=ModelConfig(path=str(base), tokenizer_path=str(TOKENIZER)))

    fsdp_check.trainer_config = added_tokens_config  # what fsdp_check.check builds its runs from
    config = added_tokens_config("lora", out)
    tokenizer = load_tokenizer(config)
    result = {"lora": fsdp_check.check("lora", world, tokenizer, out), "vocabulary": len(tokenizer)}
    (out / f"rank-{world.rank}.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
