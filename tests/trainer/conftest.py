"""Shared fixtures: the tiny tokenizer and GPT-NeoX config, and launching real training runs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from mft_trainer.model import ATTENTION
from tests.training_processes import PYTHON, REPO, TINY, TOKENIZER, TORCHRUN, child_env


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def tiny_model(vocab_size: int, seed: int = 0, **overrides):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(**{**TINY, "vocab_size": vocab_size, **overrides})
    config._attn_implementation = ATTENTION  # as build_model sets it
    return GPTNeoXForCausalLM(config).eval()


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, tokenizer) -> Path:
    """A "pretrained" tiny GPT-NeoX folder for sft and lora, saved like any HF model: the tiny
    tokenizer's 4096 tokens, no rows for role markers made special tokens."""
    path = tmp_path_factory.mktemp("base")
    tiny_model(len(tokenizer), seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", "-m", "mft_trainer", *args]


def run_training(config: Path, nproc: int = 2, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Launch ``mft-train train`` under torchrun and return the finished process (stdout = JSON lines);
    ``env`` adds environment variables."""
    cmd = torchrun_command(nproc, "train", "--config", str(config)) if nproc > 1 else \
        [PYTHON, "-m", "mft_trainer", "train", "--config", str(config)]
    return subprocess.run(cmd, env=child_env(**env), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def events(stdout: str, kind: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        if line.startswith("{") and f'"kind": "{kind}"' in line:
            out.append(json.loads(line))
    return out
