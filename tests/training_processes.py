"""What tests that launch real trainer processes share: the tiny assets and a clean child environment."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "trainer" / "mft_trainer" / "assets"
TOKENIZER = ASSETS / "tokenizer-tiny"
TINY = json.loads((ASSETS / "models" / "gpt-neox-tiny.json").read_text())
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# Set by a parent process for its own process group; a child must not inherit them.
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "NPROC_PER_NODE", "NODE_SIZE", "COWORKER_SIZE", "TORCHELASTIC_RUN_ID")


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **extra})
    return env
