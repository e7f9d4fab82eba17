"""The GPU benchmark's prepared script and code paths, on CPU with the tiny model: the script must
still run when a GPU is finally available for its one prepared run."""

from __future__ import annotations

import json
import subprocess

from tests.training_processes import PYTHON, REPO, child_env


def test_gpu_bench_runs_ours_and_the_hf_trainer_and_prints_the_ratio(tmp_path):
    # run.sh as the GPU machine runs it, on this environment's packages (no wheels to install).
    env = child_env(PYTHON=PYTHON, OUT=str(tmp_path), WHEELS=str(tmp_path / "no-wheels"))
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "run.sh"), "--smoke"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "failed" not in proc.stdout, proc.stdout
    assert "transformers 4." in proc.stdout and "atorch " in proc.stdout  # the versions it ran on
    assert "tiny seq 128: ours/HF Trainer = " in proc.stdout
    results = {r["trainer"]: r for r in map(json.loads, (tmp_path / "bench-gpu.jsonl").read_text().splitlines())}
    assert set(results) == {"ours", "hf"}
    assert all(r["tokens_per_second_per_gpu"] > 0 and r["mfu"] > 0 for r in results.values())
    assert "checkpoint" in results["ours"]["strategy"]  # activation recomputation on, as on the GPU
