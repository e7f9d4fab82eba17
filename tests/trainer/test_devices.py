"""A pod that requested GPUs fails, naming the cause, when CUDA cannot be used, rather than train on
the CPU while it holds the node's GPUs."""

import subprocess

import yaml

from tests.training_processes import PYTHON, REPO, child_env


def test_a_gpu_pod_without_usable_cuda_fails_with_the_reason_not_a_cpu_run(tmp_path):
    config = {"mode": "sst", "model": {"config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
                                       "tokenizer_path": str(tmp_path)},
              "data": {"paths": [str(tmp_path / "task")]}, "checkpoint": {"mount_path": str(tmp_path / "out")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    # No device visible, as on a node whose driver is too old for the image's CUDA.
    env = child_env(MFT_REQUIRE_CUDA="true", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([PYTHON, "-m", "mft_trainer", "train", "--config", str(path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1-127: not retried by the ExitCode restart policy
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("mft-train:")]
    assert "requested GPUs (resources.gpusPerNode) but CUDA cannot be used" in line
    assert "CUDA_VISIBLE_DEVICES ()" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing started
