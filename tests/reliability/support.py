"""Shared pieces of the fault-injection tests: tiny configs and data, child process environments."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

from tests.training_processes import TINY, TOKENIZER, TORCHRUN

WORDS = ("def return for while if else print list dict value index count total result data item "
         "x y z = ( ) : + - sum range len append").split()


def chat_record(rng: random.Random) -> dict[str, Any]:
    question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
    answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))
    return {"chat_rounds": [{"role": "human", "content": question}, {"role": "bot", "content": answer}]}


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Records are dicts (dumped as JSON) or raw bytes (written as they are), one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for record in records:
            f.write(record if isinstance(record, bytes) else json.dumps(record).encode())
            f.write(b"\n")
    return path


def good_task(folder: Path, count: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    write_jsonl(folder / "part-000.jsonl", [chat_record(rng) for _ in range(count)])
    return folder


def trainer_config(mount: Path, paths: list[Path], **overrides: Any) -> dict[str, Any]:
    """A tiny, fast, deterministic SST config: CPU fp32, no dropout, no evaluation."""
    sections: dict[str, Any] = {
        "mode": "sst",
        "model": {"tokenizer_path": str(TOKENIZER), "config": TINY},
        "data": {"paths": [str(p) for p in paths], "valid_split": 0.1, "padding_mode": "pack"},
        "training": {"epochs": 100, "max_steps": 12, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "seq_length": 64, "learning_rate": 3e-3, "min_lr": 3e-4,
                     "num_warmup_steps": 2, "log_interval": 1, "evaluation_strategy": ["no"],
                     "early_stopping_patience": 0, "checkpoint_activations": False, "bf16": False, "seed": 7},
        "checkpoint": {"mount_path": str(mount), "steps": 2, "save_total_limit": 2, "extra_save_by_epoch": False},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            sections[section][name] = value
        else:
            sections[section] = value
    return sections


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def torchrun_command(nproc: int, config: Path) -> list[str]:
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "mft_trainer", "train",
            "--config", str(config)]


def events(stdout: str, kind: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()
            if line.startswith("{") and f'"kind": "{kind}"' in line]
