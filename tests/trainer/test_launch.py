"""`mft-train launch` preflight: the trainer container checks the job's paths before torchrun starts
(preemption handling is tested with real ranks in test_training.py)."""

import os
import subprocess

from tests.training_processes import PYTHON, REPO, child_env


def launch(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "mft_trainer", "launch", *arguments], env=child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_missing_paths_fail_with_exit_2_naming_each_setting_and_nothing_starts(tmp_path):
    started = tmp_path / "started"
    proc = launch(f"--require=data.paths={tmp_path / 'missing'}", f"--require=model.path={tmp_path}",
                  f"--require-writable=checkpoint.mountPath={tmp_path / 'nowhere'}",
                  "--", PYTHON, "-c", f"open({str(started)!r}, 'w')")
    # 2 is outside 128-255: the PyTorchJob ExitCode restart policy fails the job instead of retrying.
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"data.paths: {tmp_path / 'missing'} does not exist in the pod",
        f"checkpoint.mountPath: {tmp_path / 'nowhere'} is not writable by uid {os.getuid()}",
    ]
    assert not started.exists()


def test_present_paths_start_the_command_and_pass_its_exit_code_through(tmp_path):
    proc = launch(f"--require=data.paths={tmp_path}", f"--require-writable=checkpoint.mountPath={tmp_path}",
                  "--", PYTHON, "-c", "import sys; print('ran'); sys.exit(3)")
    assert (proc.returncode, proc.stdout) == (3, "ran\n")
