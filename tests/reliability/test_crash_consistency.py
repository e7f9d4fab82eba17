"""Crash-consistent training: a 2-process CPU run (torchrun, gloo) is SIGKILLed, whole process group,
at 20 seeded random moments, several of them inside checkpoint writes and deletions, and restarted
each time with ``resume: auto``.

After every kill: every visible checkpoint (a ``checkpoint-*`` folder with trainer_state.json) loads
completely; the only other ``checkpoint-*`` folders are rotation victims whose deletion was cut short,
removed by the next start. Every restart resumes from the latest complete checkpoint (its first step
is that checkpoint's step + 1), every logged loss equals the uninterrupted run's bit for bit, and so
do the final weights. ``MFT_TEST_CHECKPOINT_DELAY`` makes each phase of a write last long enough for
a kill to land in it.

SIGTERM to the pod's command (``mft-train launch --grace-seconds N -- torchrun ...``) lands a
checkpoint within the grace period and exits 143; a save that outlasts the grace period is cut off
without leaving anything that looks like a checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from mft_trainer import checkpoint

from tests.training_processes import PYTHON, REPO, child_env

from .support import events, good_task, torchrun_command, trainer_config, write_config

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("MFT_CRASH_SEED") or 20261128)  # other seeds: other kill moments
KILLS = 20
MAX_STEPS = 40
DELAY_SECONDS = 0.15  # per phase of a checkpoint write or deletion, during the kill runs only
POLL_SECONDS = 0.01
TRIGGER_TIMEOUT = 90.0
RESULTS = Path(os.environ.get("MFT_RELIABILITY_RESULTS", "")) if os.environ.get("MFT_RELIABILITY_RESULTS") else None


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("data")
    return [good_task(root / "alpha", count=60, seed=1), good_task(root / "beta", count=60, seed=2)]


def config(tmp: Path, tasks: list[Path], name: str, **overrides) -> Path:
    raw = trainer_config(tmp / name, tasks, **{"training__max_steps": MAX_STEPS, **overrides})
    return write_config(tmp / f"{name}.yaml", raw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tasks):
    """The uninterrupted run: per-step losses and final weights."""
    tmp = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(torchrun_command(2, config(tmp, tasks, "ckpt")), env=child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = {e["step"]: e["loss"] for e in events(proc.stdout, "mft.progress")}
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    final = checkpoint.latest(tmp / "ckpt")
    assert final.step == MAX_STEPS
    return losses, load_file(final.path / "model.safetensors")


# ---------------------------------------------------------------- the kill schedule


@dataclass(frozen=True)
class Kill:
    kind: str  # startup | step | write | delete
    after: float = 0.0  # startup: seconds after launch; step: extra seconds after the step line
    steps: int = 0  # step: steps past the resume point
    phase: str = ""  # write: created | rank-files | marked
    nth: int = 1  # write: which new checkpoint write of this launch


def schedule(seed: int) -> list[Kill]:
    rng = random.Random(seed)
    kills = [Kill("startup", after=rng.uniform(0.5, 7.0)) for _ in range(3)]
    kills += [Kill("step", steps=rng.randint(1, 4), after=rng.uniform(0.0, 0.3)) for _ in range(9)]
    kills += [Kill("write", phase=phase, nth=rng.randint(1, 2))
              for phase in ("created", "rank-files", "marked", "created", "rank-files", "marked")]
    kills += [Kill("delete") for _ in range(2)]
    rng.shuffle(kills)
    return kills


@dataclass
class Tally:
    kills: int = 0
    in_write: int = 0  # a .tmp-checkpoint-* folder existed at the kill
    in_delete: int = 0  # an unmarked checkpoint-* or a .tmp-deleting-* folder existed at the kill
    resumes_checked: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class Launch:
    """One torchrun launch in its own process group, output in files read while it runs."""

    def __init__(self, cfg: Path, root: Path, index: int):
        self.root, self.cfg = root, cfg
        self.out, self.err = root.parent / f"launch-{index}.out", root.parent / f"launch-{index}.err"
        env = child_env(**{checkpoint.TEST_DELAY_ENV: str(DELAY_SECONDS)})
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(torchrun_command(2, cfg), env=env, cwd=REPO, stdout=out, stderr=err,
                                         start_new_session=True)
        self.started = time.monotonic()
        self.writes_seen: list[str] = []

    def steps(self) -> list[int]:
        return [e["step"] for e in events(self.out.read_text(), "mft.progress")]

    def triggered(self, kill: Kill, resume: int) -> bool:
        if kill.kind == "startup":
            return time.monotonic() - self.started >= kill.after
        if kill.kind == "step":
            steps = self.steps()
            return bool(steps) and steps[-1] >= resume + kill.steps
        names = {p.name for p in self.root.iterdir()} if self.root.exists() else set()
        if kill.kind == "delete":  # unmarked, not yet moved aside
            return any(checkpoint.NAME.match(n) and not (self.root / n / checkpoint.STATE_FILE).exists()
                       for n in names)
        for name in sorted(n for n in names if n.startswith(".tmp-checkpoint-")):
            if name not in self.writes_seen:
                self.writes_seen.append(name)
            if self.writes_seen.index(name) + 1 != kill.nth:
                continue
            inside = {p.name for p in (self.root / name).iterdir()} if (self.root / name).exists() else set()
            if kill.phase == "created":
                return True
            if kill.phase == "rank-files":
                return {"rank-00000.pt", "rank-00001.pt"} <= inside and checkpoint.STATE_FILE not in inside
            return checkpoint.STATE_FILE in inside
        return False

    def kill_when(self, kill: Kill, resume: int) -> None:
        deadline = time.monotonic() + TRIGGER_TIMEOUT
        while not self.triggered(kill, resume):
            assert self.proc.poll() is None, \
                f"the run ended (code {self.proc.returncode}) before {kill} fired:\n{self.err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{kill} did not fire within {TRIGGER_TIMEOUT}s"
            time.sleep(POLL_SECONDS)
        if kill.kind == "step" and kill.after:
            time.sleep(kill.after)
        kill_everything(self.proc, self.cfg)


def our_processes(proc: subprocess.Popen, cfg: Path) -> list[psutil.Process]:
    """The launcher and every process of this launch. torchrun starts each worker in a session of its
    own, so the launcher's process group alone misses them; they carry the config path."""
    found = []
    for candidate in psutil.process_iter(["pid", "cmdline"]):
        cmdline = candidate.info["cmdline"] or []
        if candidate.pid == proc.pid or str(cfg) in cmdline:
            found.append(candidate)
    return found


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_everything(proc: subprocess.Popen, cfg: Path) -> None:
    """SIGKILL the launcher's process group and the process group of every worker, as close to at
    once as a loop allows (what a lost node or an OOM-killed pod does), and wait until none is left."""
    deadline = time.monotonic() + 10
    while True:
        groups = {proc.pid}
        for process in our_processes(proc, cfg):
            try:
                groups.add(os.getpgid(process.pid))
            except ProcessLookupError:
                pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.poll()
        alive = [p for p in our_processes(proc, cfg) if p.pid != proc.pid and _running(p)]
        if not alive and proc.returncode is not None:
            return
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {[p.pid for p in alive]}"
        time.sleep(POLL_SECONDS)


def check_visible_checkpoints(root: Path) -> tuple[int, list[str]]:
    """Every checkpoint-* folder with trainer_state.json loads completely. Returns the latest complete
    step (0 when none) and the unmarked checkpoint-* folders (deletions cut short)."""
    unmarked = []
    complete = checkpoint.complete(root)
    for c in complete:
        state = checkpoint.load_trainer_state(c.path)
        assert state["state"]["step"] == c.step and state["world_size"] == 2, c.name
        weights = load_file(c.path / "model.safetensors")
        assert weights and all(torch.isfinite(t).all() for t in weights.values()), c.name
        json.loads((c.path / "config.json").read_text())
        optimizer = torch.load(c.path / checkpoint.OPTIMIZER_FILE, map_location="cpu", weights_only=False)
        assert optimizer["optimizer"]["state"] and "scheduler" in optimizer, c.name
        for rank in (0, 1):
            saved = torch.load(c.path / checkpoint.rank_file(rank), map_location="cpu", weights_only=False)
            assert {"sampler", "rng"} <= set(saved), (c.name, rank)
    latest = complete[-1].step if complete else 0
    for path in root.glob("checkpoint-*") if root.exists() else []:
        if not (path / checkpoint.STATE_FILE).exists():
            step = int(checkpoint.NAME.match(path.name).group(1))
            assert step < latest, f"{path.name} is visible without {checkpoint.STATE_FILE} and is not an old " \
                                  f"rotation victim (latest complete: {latest})"
            unmarked.append(path.name)
    return latest, unmarked


def test_sigkill_at_twenty_moments_loses_nothing(tmp_path, tasks, reference):
    expected_losses, expected_weights = reference
    cfg = config(tmp_path, tasks, "ckpt")
    root = tmp_path / "ckpt"
    tally, started = Tally(), time.monotonic()
    resume, unmarked_before = 0, []
    seen_losses: dict[int, float] = {}
    launches: list[Launch] = []

    for index, kill in enumerate(schedule(SEED)):
        launch = Launch(cfg, root, index)
        launches.append(launch)
        launch.kill_when(kill, resume)
        names = {p.name for p in root.iterdir()} if root.exists() else set()
        tally.kills += 1
        tally.by_kind[kill.kind] = tally.by_kind.get(kill.kind, 0) + 1
        tally.in_write += any(n.startswith(".tmp-checkpoint-") for n in names)
        tally.in_delete += any(n.startswith(".tmp-deleting-") for n in names) or any(
            checkpoint.NAME.match(n) and not (root / n / checkpoint.STATE_FILE).exists() for n in names)

        # This launch resumed from the latest complete checkpoint before it, if it got that far.
        steps = launch.steps()
        if steps:
            assert steps[0] == resume + 1, f"launch {index} started at step {steps[0]}, expected {resume + 1}"
            tally.resumes_checked += 1
        err = launch.err.read_text()
        if resume and "resuming from" in err:
            assert f"resuming from {root / checkpoint.name_for(resume)}" in err, err[-2000:]
        for name in unmarked_before:  # left by the previous kill: removed at this start, if it got there
            if "mode sst" in err:
                assert not (root / name).exists(), f"{name} survived a restart"
        for e in events(launch.out.read_text(), "mft.progress"):
            assert e["loss"] == expected_losses[e["step"]], \
                f"launch {index}, step {e['step']}: loss {e['loss']!r} != uninterrupted {expected_losses[e['step']]!r}"
            seen_losses[e["step"]] = e["loss"]

        latest, unmarked = check_visible_checkpoints(root)
        assert latest >= resume, f"the latest complete checkpoint went back from {resume} to {latest}"
        resume, unmarked_before = latest, unmarked

    final = subprocess.run(torchrun_command(2, cfg), env=child_env(), cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    tally.seconds = time.monotonic() - started
    assert final.returncode == 0, final.stderr[-4000:]
    steps = [e["step"] for e in events(final.stdout, "mft.progress")]
    assert steps and steps[0] == resume + 1 and steps[-1] == MAX_STEPS, (resume, steps)
    for e in events(final.stdout, "mft.progress"):
        assert e["loss"] == expected_losses[e["step"]], e
        seen_losses[e["step"]] = e["loss"]
    assert sorted(seen_losses) == list(range(1, MAX_STEPS + 1))

    latest, unmarked = check_visible_checkpoints(root)
    assert latest == MAX_STEPS and unmarked == []
    assert not [p.name for p in root.iterdir() if p.name.startswith(checkpoint.TMP_PREFIX)]
    weights = load_file(root / checkpoint.name_for(MAX_STEPS) / "model.safetensors")
    assert weights.keys() == expected_weights.keys()
    for key in weights:
        assert torch.equal(weights[key], expected_weights[key]), f"{key} differs from the uninterrupted run"

    assert tally.kills == KILLS
    assert tally.by_kind["write"] + tally.by_kind["delete"] >= 8
    assert tally.in_write >= 6 and tally.in_delete >= 2, tally
    summary = {"kills": tally.kills, "by_kind": tally.by_kind, "inside_checkpoint_write": tally.in_write,
               "inside_checkpoint_deletion": tally.in_delete, "resumes_checked": tally.resumes_checked,
               "max_steps": MAX_STEPS, "seconds": round(tally.seconds, 1)}
    print("crash consistency:", json.dumps(summary))
    if RESULTS:
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")


# ---------------------------------------------------------------- SIGTERM through the pod's command


def launcher(cfg: Path, grace: float, delay: float, out: Path, err: Path) -> subprocess.Popen:
    command = [PYTHON, "-m", "mft_trainer", "launch", f"--grace-seconds={grace}", "--", *torchrun_command(2, cfg)]
    env = child_env(**{checkpoint.TEST_DELAY_ENV: str(delay)})
    with open(out, "w") as o, open(err, "w") as e:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=o, stderr=e, start_new_session=True)


def wait_for(predicate, proc: subprocess.Popen, err: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(POLL_SECONDS)


def test_sigterm_lands_a_checkpoint_within_the_grace_period(tmp_path, tasks):
    grace, delay = 20.0, 0.5  # the final save takes at least 3 x 0.5 s
    cfg = config(tmp_path, tasks, "ckpt", training__max_steps=100000, checkpoint__steps=100000)
    out, err = tmp_path / "out", tmp_path / "err"
    proc = launcher(cfg, grace, delay, out, err)
    try:
        wait_for(lambda: any(e["step"] >= 3 for e in events(out.read_text(), "mft.progress")), proc, err)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace + 30)
        elapsed = time.monotonic() - sent
    finally:
        kill_everything(proc, cfg)
    assert proc.returncode == 143, err.read_text()[-3000:]
    assert 3 * delay <= elapsed < grace, f"exit {elapsed:.1f}s after SIGTERM, grace {grace}s"
    print(f"SIGTERM: checkpoint saved and exit 143 after {elapsed:.1f}s (grace {grace:.0f}s)")
    saved = checkpoint.latest(tmp_path / "ckpt")
    assert saved is not None and saved.step >= 3, "no checkpoint after SIGTERM"
    latest, _ = check_visible_checkpoints(tmp_path / "ckpt")
    assert latest == saved.step
    assert events(out.read_text(), "mft.summary")[-1]["stopped_by"] == "preempted"


def test_save_outlasting_the_grace_period_leaves_no_visible_checkpoint(tmp_path, tasks):
    """Grace shorter than the save: the launcher kills the workers mid-write at the deadline and still
    exits 143 (retried); what is visible afterwards is exactly the checkpoints completed before."""
    grace, delay = 1.0, 1.5
    cfg = config(tmp_path, tasks, "ckpt", training__max_steps=100000, checkpoint__steps=2)
    root = tmp_path / "ckpt"
    out, err = tmp_path / "out", tmp_path / "err"
    proc = launcher(cfg, grace, delay, out, err)
    try:
        wait_for(lambda: checkpoint.latest(root) is not None, proc, err)
        before = [c.name for c in checkpoint.complete(root)]
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        kill_everything(proc, cfg)
    assert proc.returncode == 143, err.read_text()[-3000:]
    latest, _ = check_visible_checkpoints(root)
    assert [c.name for c in checkpoint.complete(root)] == before and latest == checkpoint.latest(root).step
    assert list(root.glob(".tmp-checkpoint-*")), "expected the cut-off save's temporary folder"
    assert events(out.read_text(), "mft.summary") == [], "the run claims to have finished its save"
