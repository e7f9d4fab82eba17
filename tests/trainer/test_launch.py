"""`mft-train launch`: the preflight (the trainer container checks the job's paths before torchrun
starts) and the exit code it derives from its workers' markers (preemption handling is tested with
real ranks in test_training.py and test_preemption.py)."""

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


def test_workers_stopped_for_a_preemption_elsewhere_make_the_pod_exit_143(tmp_path):
    # On a pod that got no SIGTERM torchrun exits 1 when its workers stop for a preemption agreed
    # with the other nodes; they mark it in the file the supervisor names.
    mark_and_exit = "import os, pathlib, sys; pathlib.Path(os.environ['MFT_PREEMPTION_MARKER']).touch(); sys.exit({})"
    assert launch("--", PYTHON, "-c", mark_and_exit.format(1)).returncode == 143
    assert launch("--", PYTHON, "-c", mark_and_exit.format(0)).returncode == 0  # it finished after all
    assert launch("--", PYTHON, "-c", "import sys; sys.exit(1)").returncode == 1


def test_a_worker_that_failed_by_itself_fails_the_pod_though_others_stopped_for_a_preemption(tmp_path):
    # A worker that failed (a bug, a file it cannot read) ends the pod's other workers, and those of
    # other pods, which find a peer gone while the job starts and mark a preemption: the failure decides.
    touch = "pathlib.Path(os.environ['MFT_{}_MARKER']).touch()"
    both = f"import os, pathlib, sys; {touch.format('PREEMPTION')}; {touch.format('FAILURE')}; sys.exit(1)"
    assert launch("--", PYTHON, "-c", both).returncode == 1

