"""A tokenizer worker killed mid-chunk (as the kernel's out-of-memory killer does) ends
`mft-train preprocess` promptly with an error naming the file and the lines that worker held,
instead of leaving it waiting for ever."""

from __future__ import annotations

import random
import re
import subprocess
import time

import psutil
import pytest

from mft_trainer.data.encoding import CHUNK_BYTES
from mft_trainer.data.records import read_line_chunks
from tests.training_processes import PYTHON, TOKENIZER, child_env

from .support import chat_record, write_jsonl

pytestmark = pytest.mark.slow

RECORDS = 60_000  # about 11 MB: 11 chunks, a few seconds of tokenizing for each of the two workers
STARTUP_S = 120
AFTER_KILL_S = 60


def test_a_killed_tokenizer_worker_fails_preprocess_naming_its_lines(tmp_path):
    rng = random.Random(0)
    path = write_jsonl(tmp_path / "data" / "code" / "part-000.jsonl", [chat_record(rng) for _ in range(RECORDS)])
    chunks = {(c.first_line, c.first_line + len(c.lines) - 1) for c in read_line_chunks(path, 0, CHUNK_BYTES)}
    output = tmp_path / "bin"
    command = [PYTHON, "-m", "mft_trainer", "preprocess", "--tokenizer", str(TOKENIZER), "--mode", "sft",
               "--input", str(path.parent), "--output", str(output), "--workers", "2"]
    proc = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _busy_worker(psutil.Process(proc.pid), proc).kill()
        killed_at = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=AFTER_KILL_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"preprocess still running {AFTER_KILL_S}s after one of its tokenizer workers was killed")
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, f"expected a clear error exit, found exit code {proc.returncode}:\n{stderr[-3000:]}"
    print(f"preprocess ended {time.monotonic() - killed_at:.1f}s after the kill")
    found = re.search(
        # A kill between two of its chunks (milliseconds in seconds) names the oldest chunk in flight.
        rf"^mft-train preprocess: {re.escape(str(path))}: lines (\d+)-(\d+): a tokenizer worker died \(out of "
        r"memory\?\) (while encoding them \(killed by SIGKILL\)|before they were encoded); give it more memory .* "
        r"or run fewer workers$",
        stderr,
        re.MULTILINE,
    )
    assert found, stderr[-3000:]
    assert (int(found[1]), int(found[2])) in chunks, f"lines {found[1]}-{found[2]} are not one chunk: {sorted(chunks)}"
    assert list(output.iterdir()) == [], "preprocess left a partial task folder behind"


def _busy_worker(parent: psutil.Process, proc: subprocess.Popen) -> psutil.Process:
    """One of the two tokenizer workers, once it has been tokenizing for a moment (so it holds a chunk)."""
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"preprocess ended before a worker could be killed:\n{proc.stderr.read()[-3000:]}"
        workers = parent.children()
        if len(workers) == 2:
            try:
                if workers[0].cpu_times().user > 0.3:
                    return workers[0]
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.02)
    raise AssertionError(f"no two tokenizer workers after {STARTUP_S}s")
