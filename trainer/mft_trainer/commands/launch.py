"""`mft-train launch --grace-seconds N [--require FIELD=PATH ...] -- torchrun ...`: the pod's main process.

Preflight: before anything starts, every ``--require`` path must exist and every
``--require-writable`` one must be writable; otherwise it prints which setting names a missing
path and exits 2, a code the PyTorchJob ExitCode restart policy treats as permanent (a failing
init container would instead be retried forever: Kubeflow reads only this container's exit code).

On preemption the kubelet sends SIGTERM to the container's first process only. torchrun would
forward it, but then kills the workers after its own 30 s shutdown timeout and exits with code 1,
which the PyTorchJob ExitCode restart policy treats as a permanent failure. This supervisor instead
sends SIGTERM straight to the trainer workers, gives them the grace period to save a checkpoint,
and exits 143 (128 + SIGTERM), a code the restart policy retries.

In a multi-node job only the preempted pod gets SIGTERM, and on the other pods torchrun takes any
stop of their workers for a failure and exits 1. So the workers leave files this supervisor names:

- ``MFT_PREEMPTION_MARKER``: they stopped for a preemption elsewhere. In training every rank agrees
  to stop, saves and exits 143. During setup (rendezvous, tokenizing, model load: minutes on a large
  corpus) a SIGTERM stops the preempted pod's workers at once, and the other pods' workers then find
  a peer gone in a collective (gloo's "Connection closed by peer", NCCL's remote error, the c10d
  store's network errors): until every rank has agreed on a first step, they take that for a
  preemption and exit 143.
- ``MFT_FAILURE_MARKER``: a worker failed by itself (a config or data error, a bug), not for a peer
  gone or a SIGTERM. torchrun then stops the pod's other workers, which may well find a peer gone;
  the failure decides.

The pod exits 143 when it was signalled, or when its workers stopped for a preemption and none
failed by itself; else with torchrun's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

PREEMPTED_EXIT_CODE = 143
PREFLIGHT_EXIT_CODE = 2
PREEMPTION_MARKER_ENV = "MFT_PREEMPTION_MARKER"
FAILURE_MARKER_ENV = "MFT_FAILURE_MARKER"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grace-seconds", type=float, default=120.0,
                        help="how long the workers get to save a checkpoint after SIGTERM")
    parser.add_argument("--require", action="append", default=[], metavar="FIELD=PATH",
                        help="a path that must exist before training starts; FIELD names its setting in the error")
    parser.add_argument("--require-writable", action="append", default=[], metavar="FIELD=PATH",
                        help="a folder that must be writable before training starts")
    parser.add_argument("launcher", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the launcher command line, usually torchrun ...")


def run(args: argparse.Namespace) -> int:
    command = args.launcher[1:] if args.launcher[:1] == ["--"] else args.launcher
    if not command:
        print("mft-train launch: no command given after --", file=sys.stderr)
        return 2
    problems = preflight(args.require, args.require_writable)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return PREFLIGHT_EXIT_CODE
    with tempfile.TemporaryDirectory(prefix="mft-launch-") as state:
        preempted, failed = Path(state) / "preempted", Path(state) / "failed"
        code, signalled = _supervise(command, args.grace_seconds,
                                     {PREEMPTION_MARKER_ENV: preempted, FAILURE_MARKER_ENV: failed})
        return pod_exit_code(code, signalled, preempted.exists(), failed.exists())


def pod_exit_code(code: int, signalled: bool, preempted: bool, failed: bool) -> int:
    """The pod's exit code from the launcher's ``code`` and the workers' markers (module docstring)."""
    if signalled or (code != 0 and preempted and not failed):
        return PREEMPTED_EXIT_CODE
    return code if code >= 0 else 128 - code


def _supervise(command: list[str], grace_seconds: float, markers: dict[str, Path]) -> tuple[int, bool]:
    """Run the launcher, with the markers' paths in its environment; on SIGTERM, have its workers
    checkpoint within the grace period. Returns its exit code and whether this pod was signalled."""
    launcher = subprocess.Popen(command, env={**os.environ, **{env: str(path) for env, path in markers.items()}})
    preempted = threading.Event()

    def on_sigterm(signum, frame):
        if preempted.is_set():
            return
        preempted.set()
        _terminate_workers(launcher.pid)
        deadline = threading.Timer(grace_seconds, _kill_tree, (launcher.pid,))
        deadline.daemon = True  # never keeps this process alive once the launcher has exited
        deadline.start()

    signal.signal(signal.SIGTERM, on_sigterm)
    return launcher.wait(), preempted.is_set()


def preflight(required: list[str], writable: list[str]) -> list[str]:
    """One line per missing path or unwritable folder, naming the setting it came from."""
    problems = []
    for field, path in map(_field_and_path, required):
        if not os.path.exists(path):
            problems.append(f"{field}: {path} does not exist in the pod")
    for field, path in map(_field_and_path, writable):
        if not os.access(path, os.W_OK):
            problems.append(f"{field}: {path} is not writable by uid {os.getuid()}")
    return problems


def _field_and_path(requirement: str) -> tuple[str, str]:
    field, _, path = requirement.partition("=")
    return field, path


def _terminate_workers(launcher_pid: int) -> None:
    """SIGTERM to the launcher's children (the trainers), not to the launcher itself."""
    import psutil

    try:
        workers = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for worker in workers:
        try:
            worker.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass


def _kill_tree(launcher_pid: int) -> None:
    import psutil

    try:
        launcher = psutil.Process(launcher_pid)
        processes = launcher.children(recursive=True) + [launcher]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
