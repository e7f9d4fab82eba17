"""A node preempted while the job starts: two pods (nodes) of one job on localhost, each the rendered
`mft-train launch -- torchrun --nnodes=2 ...`, with a corpus large enough that setup (tokenizing it)
can be caught in the act; and how a worker that stops during setup tells `mft-train launch` why.
(Preemption during training: test_training.py.)"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch.distributed as dist

from mft_trainer import checkpoint, train
from mft_trainer.config import from_dict
from mft_trainer.data import DataError

from tests.training_processes import PYTHON, REPO, TINY, TOKENIZER, TORCHRUN, child_env

from .conftest import write_config

WORDS = "def return value items list range print len for while if else in of the a to count".split()


def corpus(path: Path, megabytes: int) -> Path:
    """A JSONL task of ``megabytes`` of text records: a few seconds of tokenizing."""
    path.mkdir(parents=True)
    rng = random.Random(0)
    lines = ['{"text": "%s"}\n' % " ".join(rng.choices(WORDS, k=100)) for _ in range(1000)]
    with (path / "big.jsonl").open("w") as out:
        while out.tell() < megabytes << 20:
            out.writelines(lines)
    return path / "big.jsonl"


def start_pods(config: Path) -> list[subprocess.Popen]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [subprocess.Popen(
        [PYTHON, "-m", "mft_trainer", "launch", "--grace-seconds", "60", "--", TORCHRUN, "--nnodes=2",
         "--nproc_per_node=1", f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "mft_trainer", "train", "--config", str(config)],
        env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def readers(file: Path, processes) -> list[psutil.Process]:
    """Those of ``processes`` that have ``file`` open."""
    found = []
    for process in processes:
        try:
            if any(Path(f.path) == file for f in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def wait_until_reading(pod: subprocess.Popen, file: Path, timeout: float = 60) -> None:
    """Until a process of ``pod`` (its worker, or the worker's tokenizer processes) has ``file`` open:
    the worker is past the rendezvous and tokenizing, in the middle of setup."""
    deadline = time.monotonic() + timeout
    while not readers(file, psutil.Process(pod.pid).children(recursive=True)):
        assert time.monotonic() < deadline, f"no process of the pod read {file} within {timeout} s"
        time.sleep(0.02)


def stop(pod: subprocess.Popen) -> None:
    """What the end of a pod's container does: every process of it ends."""
    try:
        processes = psutil.Process(pod.pid).children(recursive=True) + [psutil.Process(pod.pid)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


@pytest.mark.slow
def test_a_node_preempted_during_setup_makes_every_pod_exit_143(tmp_path):
    """Only node 1's pod gets SIGTERM, while every rank is still tokenizing. Its worker stops at once;
    node 0's finds its peer gone at the next collective. Exit 1 there would make Kubeflow fail the
    whole job before the operator restarts it: both pods must exit 143 (retried)."""
    data = corpus(tmp_path / "data" / "big", megabytes=8)
    config = write_config(tmp_path / "setup.yaml", {
        "mode": "sst", "model": {"tokenizer_path": str(TOKENIZER), "config": TINY},
        "data": {"paths": [str(data.parent)]},
        "training": {"seq_length": 128, "max_steps": 1, "checkpoint_activations": False},
        "checkpoint": {"mount_path": str(tmp_path / "ckpt")},
    })
    pods = start_pods(config)
    try:
        wait_until_reading(pods[1], data)
        pods[1].send_signal(signal.SIGTERM)
        errors = [pod.communicate(timeout=120)[1] for pod in pods]
    finally:
        for pod in pods:
            stop(pod)
    assert [pod.returncode for pod in pods] == [143, 143], errors[0][-3000:] + errors[1][-3000:]
    assert "SIGTERM before training began: nothing to save yet, exiting with 143" in errors[1]
    assert "a peer went away before training began, taken for its pod's preemption: exiting with 143" in errors[0]
    assert checkpoint.latest(tmp_path / "ckpt") is None
    # Forked tokenizer processes went with their worker: left over, they would hold its sockets open.
    assert not readers(data, psutil.process_iter())


def test_only_errors_of_a_peer_that_went_away_count_as_a_lost_peer():
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:25498. This is typically caused by a remote worker crashing.")
    assert train._lost_peer(RuntimeError(gloo))
    assert train._lost_peer(dist.DistNetworkError("failed to recv, got 0 bytes"))
    assert train._lost_peer(dist.DistBackendError("NCCL error: remote process exited or there was a network error"))
    assert not train._lost_peer(dist.DistBackendError("NCCL error: invalid usage"))
    assert not train._lost_peer(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not train._lost_peer(ValueError("Connection closed by peer"))  # not raised by a collective


@pytest.fixture
def markers(tmp_path, monkeypatch):
    """The files `mft-train launch` names, and no SIGTERM handler left in the test process."""
    monkeypatch.setattr(train.signal, "signal", lambda signum, handler: None)
    paths = {"preempted": tmp_path / "preempted", "failed": tmp_path / "failed"}
    monkeypatch.setenv("MFT_PREEMPTION_MARKER", str(paths["preempted"]))
    monkeypatch.setenv("MFT_FAILURE_MARKER", str(paths["failed"]))
    return paths


def stopped_in_setup(monkeypatch, error: Exception) -> int:
    """``train.main``'s exit code when its setup raises ``error``."""

    def setup(config):
        raise error

    monkeypatch.setattr(train, "setup", setup)
    return train.main(from_dict({"mode": "sst", "model": {"config": TINY, "tokenizer_path": str(TOKENIZER)},
                                 "data": {"paths": ["/data/a"]}}))


def test_a_peer_gone_during_setup_marks_a_preemption(markers, monkeypatch):
    assert stopped_in_setup(monkeypatch, RuntimeError("[pair.cc:553] Connection closed by peer [10.0.0.2]:1")) == 143
    assert markers["preempted"].exists() and not markers["failed"].exists()


def test_a_failure_of_its_own_during_setup_is_marked_and_raised(markers, monkeypatch):
    with pytest.raises(DataError):
        stopped_in_setup(monkeypatch, DataError("data.paths: /data/a: no records"))
    assert markers["failed"].exists() and not markers["preempted"].exists()
