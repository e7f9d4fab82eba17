"""What tests that launch real trainer processes share: the tiny assets and a clean child environment."""

from __future__ import annotations

import json
import os
import subprocess
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


def run_two_ranks(script: Path, out: Path, timeout: int) -> list[dict]:
    """``torchrun --nproc_per_node=2 script out`` (gloo on CPU); each rank writes ``out/rank-<r>.json``."""
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(script), str(out)],
                          env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
