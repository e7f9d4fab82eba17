"""The GPU benchmark's prepared script and code paths, on CPU with the tiny model: the script must
still run when a GPU is finally available for its one prepared run."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.training_processes import PYTHON, REPO, child_env

pytestmark = pytest.mark.slow


def run_script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """run.sh as the GPU machine runs it, on this environment's packages (no wheels to install)."""
    env = child_env(PYTHON=PYTHON, OUT=str(tmp_path), WHEELS=str(tmp_path / "no-wheels"), **env)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "run.sh"), "--smoke", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def test_gpu_bench_runs_ours_and_the_hf_trainer_and_prints_the_ratio(tmp_path):
    proc = run_script(tmp_path)
    assert "failed" not in proc.stdout, proc.stdout
    assert "transformers 4." in proc.stdout and "atorch " in proc.stdout  # the versions it ran on
    assert "tiny seq 128: ours/HF Trainer = " in proc.stdout
    results = {r["trainer"]: r for r in map(json.loads, (tmp_path / "bench-gpu.jsonl").read_text().splitlines())}
    assert set(results) == {"ours", "hf"}
    assert all(r["tokens_per_second_per_gpu"] > 0 and r["mfu"] > 0 for r in results.values())
    assert "checkpoint" in results["ours"]["strategy"]  # activation recomputation on, as on the GPU
    assert "check_attention: no GPU here" in proc.stdout
    assert "profile: tiny seq 128, " in proc.stdout and "aten::mm" in proc.stdout  # the profile's table


def test_a_configuration_over_the_time_budget_is_killed_whole_and_the_rest_skipped(tmp_path):
    """One hung configuration must not take the GPU run's whole device time, nor leave a process
    holding the GPU: the budget bounds each run, and the killed one leaves nothing behind."""
    mark = uuid.uuid4().hex
    proc = run_script(tmp_path, "--budget", "3", MFT_BENCH_TEST_MARK=mark)
    assert "ours tiny seq 128: timed out after 3 s" in proc.stdout, proc.stdout
    assert "hf tiny seq 128: skipped, the time budget is spent" in proc.stdout, proc.stdout
    assert "ours/HF" not in proc.stdout
    assert (tmp_path / "bench-gpu.jsonl").read_text() == ""
    assert processes_with(mark) == []


def processes_with(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark``."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"MFT_BENCH_TEST_MARK={mark}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone, or not ours to read
            continue
    return found
