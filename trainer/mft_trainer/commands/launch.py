"""`mft-train launch --grace-seconds N -- torchrun ...`: the pod's main process.

On preemption the kubelet sends SIGTERM to the container's first process only. torchrun would
forward it, but then kills the workers after its own 30 s shutdown timeout and exits with code 1,
which the PyTorchJob ExitCode restart policy treats as a permanent failure. This supervisor instead
sends SIGTERM straight to the trainer workers, gives them the grace period to save a checkpoint,
and exits 143 (128 + SIGTERM), a code the restart policy retries.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading

PREEMPTED_EXIT_CODE = 143


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grace-seconds", type=float, default=120.0,
                        help="how long the workers get to save a checkpoint after SIGTERM")
    parser.add_argument("launcher", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the launcher command line, usually torchrun ...")


def run(args: argparse.Namespace) -> int:
    command = args.launcher[1:] if args.launcher[:1] == ["--"] else args.launcher
    if not command:
        print("mft-train launch: no command given after --", file=sys.stderr)
        return 2
    launcher = subprocess.Popen(command)
    preempted = threading.Event()

    def on_sigterm(signum, frame):
        if preempted.is_set():
            return
        preempted.set()
        _terminate_workers(launcher.pid)
        deadline = threading.Timer(args.grace_seconds, _kill_tree, (launcher.pid,))
        deadline.daemon = True  # never keeps this process alive once the launcher has exited
        deadline.start()

    signal.signal(signal.SIGTERM, on_sigterm)
    code = launcher.wait()
    if preempted.is_set():
        return PREEMPTED_EXIT_CODE
    return code if code >= 0 else 128 - code


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
