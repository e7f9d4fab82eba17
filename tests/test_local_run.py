"""`mftctl run --local` end to end: the demo's SST job through the real launch path (launch supervisor,
torchrun, trainer), with Ctrl-C turned into a checkpoint, and a rerun that resumes from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mft_trainer import checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo" / "mftjob-sst.yaml"


def mftctl_run(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [Path(sys.executable).parent / "mftctl", "run", str(DEMO), "--local", "--nproc", "1",
         "--workdir", str(out), "--mount", f"/checkpoints={out / 'checkpoints'}"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_saves_a_checkpoint_and_a_rerun_resumes_from_it(tmp_path):
    run = mftctl_run(tmp_path)
    for line in run.stderr:
        if "checkpoint saved: checkpoint-" in line:  # the first epoch's checkpoint
            break
    run.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the foreground process
    rest = run.stderr.read()
    assert run.wait(timeout=120) == 143, rest[-3000:]
    assert "interrupted: asking the trainer to save a checkpoint" in rest
    assert "job exited with code 143" in rest
    interrupted = checkpoint.latest(tmp_path / "checkpoints")
    assert interrupted is not None and interrupted.step > 10, "no checkpoint landed after Ctrl-C"

    rerun = mftctl_run(tmp_path)
    output = rerun.stderr.read()
    assert rerun.wait(timeout=600) == 0, output[-3000:]
    assert f"resuming from {interrupted.path}" in output
    assert "job succeeded" in output and "final loss:" in output
