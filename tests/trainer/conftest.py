"""Shared fixtures: the tiny tokenizer and GPT-NeoX config, and launching real training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "trainer" / "mft_trainer" / "assets"
TOKENIZER = ASSETS / "tokenizer-tiny"
TINY = json.loads((ASSETS / "models" / "gpt-neox-tiny.json").read_text())
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# Variables a parent process may have set for its own process group; a child must not inherit them.
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "NPROC_PER_NODE", "NODE_SIZE", "COWORKER_SIZE", "TORCHELASTIC_RUN_ID")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def tiny_model(vocab_size: int, seed: int = 0, **overrides):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(**{**TINY, "vocab_size": vocab_size, **overrides})
    config._attn_implementation = "sdpa"
    return GPTNeoXForCausalLM(config).eval()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    return env


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "mft_trainer", *args]


def run_training(config: Path, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Launch ``mft-train train`` under torchrun and return the finished process (stdout = JSON lines)."""
    cmd = torchrun_command(nproc, "train", "--config", str(config)) if nproc > 1 else \
        [PYTHON, "-m", "mft_trainer", "train", "--config", str(config)]
    return subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def events(stdout: str, kind: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("{") and f'"kind": "{kind}"' in line:
            out.append(json.loads(line))
    return out
