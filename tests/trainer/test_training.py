"""Real training runs: ``mft-train train`` under ``torchrun --nproc_per_node=2`` (gloo), tiny GPT-NeoX,
the tiny tokenizer and the sample multi-task data. Each run is shared by the tests that read it."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from mft_trainer import checkpoint

from tests.training_processes import PYTHON, REPO, TINY, TOKENIZER, child_env

from .conftest import TORCHRUN, events, run_training, torchrun_command, write_config
from .test_checkpoint import RunsCode

pytestmark = pytest.mark.slow

DATA = [str(REPO / "examples" / "data" / task) for task in ("code-exam", "code-helper", "code-text")]


def config(mount: Path, mode: str = "sst", *, base: Path | None = None, **training) -> dict:
    raw = {
        "mode": mode,
        "model": {"tokenizer_path": str(TOKENIZER)} | ({"path": str(base)} if base else {"config": TINY}),
        "data": {"paths": DATA, "valid_split": 0.1, "padding_mode": "pack"},
        "training": {"epochs": 2, "per_device_train_batch_size": 4, "per_device_valid_batch_size": 8,
                     "gradient_accumulation_steps": 2, "seq_length": 256, "learning_rate": 3e-3, "min_lr": 3e-4,
                     "num_warmup_steps": 2, "log_interval": 1, "evaluation_strategy": ["steps", "epoch"],
                     "evaluation_steps": 3, "early_stopping_patience": 0, "checkpoint_activations": True,
                     "seed": 7} | training,
        "checkpoint": {"mount_path": str(mount), "steps": 3, "save_total_limit": 2, "extra_save_by_epoch": True},
    }
    if mode == "lora":
        raw["lora"] = {"r": 8, "alpha": 16, "dropout": 0.05}
    return raw


def train(tmp: Path, name: str, raw: dict, nproc: int = 2) -> subprocess.CompletedProcess:
    proc = run_training(write_config(tmp / f"{name}.yaml", raw), nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def step_losses(stdout: str) -> dict[int, float]:
    """Training loss per step (progress lines written right after a step, not after an evaluation)."""
    out = {}
    for e in events(stdout, "mft.progress"):
        out.setdefault(e["step"], e["loss"])
    return out


@pytest.fixture(scope="module")
def sst(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sst")
    raw = config(tmp / "ckpt")
    return tmp, raw, train(tmp, "sst", raw)


@pytest.fixture(scope="module")
def lora(tmp_path_factory, base_model):
    tmp = tmp_path_factory.mktemp("lora")
    raw = config(tmp / "ckpt", "lora", base=base_model, weighted_loss_mode="case4", max_steps=9, learning_rate=1e-2)
    return tmp, raw, train(tmp, "lora", raw)


@pytest.fixture(scope="module")
def sft(tmp_path_factory, base_model):
    tmp = tmp_path_factory.mktemp("sft")
    raw = config(tmp / "ckpt", "sft", base=base_model, weighted_loss_mode="case1", max_steps=8,
                 checkpoint_activations=False)
    raw["data"]["padding_mode"] = "padding"
    return tmp, raw, train(tmp, "sft", raw)


def assert_learns(stdout: str) -> None:
    losses = list(step_losses(stdout).values())
    assert len(losses) >= 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    summary = events(stdout, "mft.summary")[-1]
    assert summary["skipped_steps"] == 0 and summary["steps"] == len(losses)


def test_sst_runs_to_completion_and_learns(sst):
    _, _, proc = sst
    assert_learns(proc.stdout)
    assert events(proc.stdout, "mft.summary")[-1]["stopped_by"] in ("completed", "max_steps")
    assert "parallel_mode(data=2), checkpoint(GPTNeoXLayer)" in proc.stderr  # ATorch applied the strategy


def test_sft_padding_runs_to_completion_and_learns(sft):
    assert_learns(sft[2].stdout)


def test_lora_runs_to_completion_and_learns(lora):
    assert_learns(lora[2].stdout)


def test_progress_lines_follow_the_protocol(sst):
    _, _, proc = sst
    keys = {"kind", "step", "total_steps", "epoch", "loss", "valid_loss", "lr", "tokens_per_second", "mfu",
            "eta_seconds", "time"}
    progress = events(proc.stdout, "mft.progress")
    assert progress and all(set(p) == keys for p in progress)
    assert any(p["valid_loss"] is not None for p in progress)
    for c in events(proc.stdout, "mft.checkpoint"):
        assert set(c) == {"kind", "name", "latest", "best", "best_valid_loss"}
    summary = events(proc.stdout, "mft.summary")[-1]
    assert summary["data"]  # the data report's counts


def test_tensorboard_scalars_are_written(sst):
    root = Path(sst[1]["checkpoint"]["mount_path"])
    assert list((root / "tensorboard").glob("events.out.tfevents.*"))


def test_rotation_keeps_best_latest_and_epoch_checkpoints_all_resumable(sst):
    tmp, raw, proc = sst
    root = Path(raw["checkpoint"]["mount_path"])
    kept = checkpoint.complete(root)
    steps = [c for c in kept if c.epoch is None]
    epochs = [c for c in kept if c.epoch is not None]
    saved = [c["name"] for c in events(proc.stdout, "mft.checkpoint")]
    assert len(epochs) == 2 and all(c.name in saved for c in epochs)  # never rotated
    latest = max(steps, key=lambda c: c.step)
    scored = [c for c in steps if c.valid_loss is not None]
    best = min(scored, key=lambda c: c.valid_loss)
    assert {latest.path, best.path} <= {c.path for c in steps} and len(steps) == raw["checkpoint"]["save_total_limit"]
    assert len(saved) > len(kept)  # something was rotated out
    assert not list(root.glob(".tmp-*"))
    for c in kept:
        names = {p.name for p in c.path.iterdir()}
        assert {"model.safetensors", "config.json", "optimizer.pt", "rank-00000.pt", "rank-00001.pt",
                "trainer_state.json", "tokenizer.json"} <= names, (c.name, names)
        state = checkpoint.load_trainer_state(c.path)
        assert state["state"]["step"] == c.step and state["world_size"] == 2


def test_checkpoint_weights_load_with_transformers(sst):
    from transformers import AutoModelForCausalLM

    root = Path(sst[1]["checkpoint"]["mount_path"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint.latest(root).path)
    assert model.config.hidden_size == TINY["hidden_size"]


def kill_after_first_checkpoint(cfg: Path) -> None:
    """Start a run, SIGKILL the whole launch (torchrun and workers) once a checkpoint is reported."""
    proc = subprocess.Popen(torchrun_command(2, "train", "--config", str(cfg)), env=child_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if '"kind": "mft.checkpoint"' in line:
                break
    finally:
        # torchrun starts each worker in a session of its own: kill them by ancestry, not by group.
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        proc.wait()


@pytest.mark.parametrize("which", ["sst", "lora"])
def test_resume_after_a_kill_follows_the_uninterrupted_run(request, which, tmp_path):
    _, raw, full = request.getfixturevalue(which)
    resumed_raw = json.loads(json.dumps(raw))
    resumed_raw["checkpoint"]["mount_path"] = str(tmp_path / "ckpt")
    cfg = write_config(tmp_path / "resume.yaml", resumed_raw)
    kill_after_first_checkpoint(cfg)
    start = checkpoint.latest(tmp_path / "ckpt").step
    assert 0 < start < events(full.stdout, "mft.summary")[-1]["steps"]

    resumed = run_training(cfg)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert f"resuming from {tmp_path / 'ckpt'}" in resumed.stderr
    expected, got = step_losses(full.stdout), step_losses(resumed.stdout)
    assert min(got) == start + 1
    for step, value in got.items():
        assert value == pytest.approx(expected[step], abs=1e-6), step
    weights = "adapter_model.safetensors" if which == "lora" else "model.safetensors"
    final_full = load_file(checkpoint.latest(Path(raw["checkpoint"]["mount_path"])).path / weights)
    final_resumed = load_file(checkpoint.latest(tmp_path / "ckpt").path / weights)
    assert final_full.keys() == final_resumed.keys()
    for key in final_full:
        torch.testing.assert_close(final_resumed[key], final_full[key], atol=1e-6, rtol=0)


def saved_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, keyed by file and position: weights, optimizer, RNG states."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(f"{prefix}/{key}", value)
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(f"{prefix}/{i}", value)

    for file in sorted(path.iterdir()):
        if file.suffix == ".safetensors":
            walk(file.name, load_file(file))
        elif file.suffix == ".pt":
            walk(file.name, torch.load(file, weights_only=True))
    return out


def checkpoint_events_in_order(stdout: str) -> list[tuple[str, int]]:
    """("progress", step) and ("checkpoint", step) in the order the trainer printed them."""
    order = []
    for line in stdout.splitlines():
        if line.startswith('{"kind": "mft.progress"'):
            order.append(("progress", json.loads(line)["step"]))
        elif line.startswith('{"kind": "mft.checkpoint"'):
            order.append(("checkpoint", checkpoint.NAME.match(json.loads(line)["name"]).group(1)))
    return [(kind, int(step)) for kind, step in order]


@pytest.mark.parametrize("async_save", [False, True])
def test_background_saves_write_the_same_checkpoints_without_holding_the_loop(sst, async_save, tmp_path):
    """Each phase of a write slowed to 0.3 s. In the background (the default) later steps run while a
    write is in flight; with ``async_save: false`` no step starts before its checkpoint is on disk.
    Either way the checkpoints are bitwise those of the undelayed run (the ``sst`` fixture)."""
    _, reference_raw, reference = sst
    raw = json.loads(json.dumps(reference_raw))
    raw["checkpoint"] |= {"mount_path": str(tmp_path / "ckpt"), "async_save": async_save}
    proc = run_training(write_config(tmp_path / "run.yaml", raw), MFT_TEST_CHECKPOINT_DELAY="0.3")
    assert proc.returncode == 0, proc.stderr[-6000:]

    order = checkpoint_events_in_order(proc.stdout)
    overtaken = [(step, later) for i, (kind, step) in enumerate(order) if kind == "checkpoint"
                 for later_kind, later in order[:i] if later_kind == "progress" and later > step]
    if async_save:
        assert overtaken, f"no step ran while a checkpoint was being written: {order}"
    else:
        assert not overtaken, f"steps ran before their checkpoint was written: {overtaken}"
    assert step_losses(proc.stdout) == step_losses(reference.stdout)

    ours = checkpoint.complete(tmp_path / "ckpt")
    theirs = checkpoint.complete(Path(reference_raw["checkpoint"]["mount_path"]))
    assert [c.name for c in ours] == [c.name for c in theirs]
    for mine, other in zip(ours, theirs):
        got, expected = saved_tensors(mine.path), saved_tensors(other.path)
        assert got.keys() == expected.keys(), mine.name
        # NumPy's global RNG is seeded by the OS at import, not by training.seed: each run has its own.
        for key in [key for key in expected if "/rng/numpy/" not in key]:
            assert torch.equal(got[key], expected[key]), f"{mine.name}: {key}"


def test_lora_checkpoint_holds_the_adapter_and_full_state(lora):
    root = Path(lora[1]["checkpoint"]["mount_path"])
    names = {p.name for p in checkpoint.latest(root).path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "rank-00001.pt"} <= names
    assert "model.safetensors" not in names


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    """A plain process: SIGTERM mid-run -> finish the step, save, exit 143."""
    raw = config(tmp_path / "ckpt", epochs=50, evaluation_strategy=["no"])
    raw["checkpoint"]["steps"] = 1000
    cfg = write_config(tmp_path / "term.yaml", raw)
    proc = subprocess.Popen([PYTHON, "-m", "mft_trainer", "train", "--config", str(cfg)], env=child_env(),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if '"step": 2,' in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-4000:]
    saved = checkpoint.latest(tmp_path / "ckpt")
    assert saved is not None and saved.step >= 2
    assert events(out, "mft.summary")[-1]["stopped_by"] == "preempted"


def test_sigterm_to_the_pod_launcher_checkpoints_every_worker_and_exits_143(tmp_path):
    """The pod's command: `mft-train launch -- torchrun ...`. SIGTERM to it (what the kubelet sends)
    reaches both ranks, which agree on the step, save together, and the pod exits 143 (retried)."""
    raw = config(tmp_path / "ckpt", epochs=50, evaluation_strategy=["no"])
    raw["checkpoint"]["steps"] = 1000
    cfg = write_config(tmp_path / "term.yaml", raw)
    command = [PYTHON, "-m", "mft_trainer", "launch", "--grace-seconds", "60", "--",
               *torchrun_command(2, "train", "--config", str(cfg))]
    proc = subprocess.Popen(command, env=child_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if '"step": 2,' in line:
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-4000:]
    saved = checkpoint.latest(tmp_path / "ckpt")
    assert saved is not None and {"rank-00000.pt", "rank-00001.pt"} <= {p.name for p in saved.path.iterdir()}
    assert err.count("exiting with 143") == 2, err[-4000:]


def test_sigterm_to_one_node_of_two_checkpoints_and_both_pods_exit_143(tmp_path):
    """Two pods (nodes) of one job, each `mft-train launch -- torchrun --nnodes=2`; only one gets
    SIGTERM (its node is drained). All ranks agree to stop and save; the other pod's torchrun takes
    its workers' exit for a failure (exit 1), and the pod must still exit 143, or the PyTorchJob's
    ExitCode policy fails the whole job instead of restarting it."""
    raw = config(tmp_path / "ckpt", epochs=50, evaluation_strategy=["no"])
    raw["checkpoint"]["steps"] = 1000
    cfg = write_config(tmp_path / "nodes.yaml", raw)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pods = [subprocess.Popen(
        [PYTHON, "-m", "mft_trainer", "launch", "--grace-seconds", "60", "--", TORCHRUN, "--nnodes=2",
         "--nproc_per_node=1", f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
         "-m", "mft_trainer", "train", "--config", str(cfg)],
        env=child_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for line in pods[0].stdout:
        if '"step": 2,' in line:
            break
    time.sleep(0.2)
    pods[1].send_signal(signal.SIGTERM)  # the worker's node only
    errors = [pod.communicate(timeout=180)[1] for pod in pods]
    assert [pod.returncode for pod in pods] == [143, 143], errors[0][-3000:] + errors[1][-3000:]
    saved = checkpoint.latest(tmp_path / "ckpt")
    assert saved is not None and {"rank-00000.pt", "rank-00001.pt"} <= {p.name for p in saved.path.iterdir()}


def _copy_of_run(run: tuple, tmp_path: Path, **lora) -> tuple[dict, Path]:
    """The config of a finished run, pointed at a copy of its checkpoints, with ``lora`` changed."""
    _, raw, _ = run
    mount = tmp_path / "ckpt"
    shutil.copytree(raw["checkpoint"]["mount_path"], mount)
    changed = copy.deepcopy(raw)
    changed["checkpoint"]["mount_path"] = str(mount)
    changed["lora"].update(lora)
    return changed, mount


def test_checkpoints_of_another_run_are_refused_before_anything_loads(lora, tmp_path):
    # A retained volume found by a new job: an adapter of rank 8 cannot continue as one of rank 4.
    changed, mount = _copy_of_run(lora, tmp_path, r=4)
    before = sorted(p.name for p in mount.iterdir())
    proc = run_training(write_config(tmp_path / "changed.yaml", changed), nproc=1)
    assert proc.returncode == 1, proc.stderr[-3000:]
    latest = checkpoint.latest(mount).path
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"mft-train: {latest} was written by another run (lora.r: 8 in the checkpoint, 4 now)")
    assert "give the job another checkpoint volume or delete the checkpoint-* folders" in message
    assert "Traceback" not in proc.stderr and "records" not in proc.stderr  # refused before the data was read
    assert sorted(p.name for p in mount.iterdir()) == before


def test_a_checkpoint_file_that_would_run_code_is_refused_and_fails_the_job(lora, tmp_path):
    changed, mount = _copy_of_run(lora, tmp_path)
    planted = checkpoint.latest(mount).path / checkpoint.rank_file(0)
    witness = tmp_path / "code-ran"
    torch.save({"sampler": {"epoch": 0, "offset": 0}, "rng": RunsCode(witness)}, planted)
    proc = run_training(write_config(tmp_path / "changed.yaml", changed), nproc=1)
    assert proc.returncode == 1, proc.stderr[-3000:]  # not retried: the next pod would find the same file
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"mft-train: {planted}: refused to load: it holds posix.system, which no checkpoint of the trainer holds")
    assert "Traceback" not in proc.stderr and not witness.exists()


def test_resuming_under_other_batch_settings_warns_and_goes_on(lora, tmp_path):
    changed, mount = _copy_of_run(lora, tmp_path, dropout=0.1)  # dropout: not part of what the weights are
    changed["training"] |= {"seed": 8, "weight_decay": 0.1}
    proc = run_training(write_config(tmp_path / "changed.yaml", changed), nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written with other data or batch settings (training.seed: 7 in the checkpoint, 8 now)" in proc.stderr
    # The optimizer state restores the checkpoint's weight decay; like the learning rate, the configured one wins.
    assert "training.weight_decay: 0.0 in the checkpoint, 0.1 now: the resumed run uses 0.1" in proc.stderr
    assert "lora.dropout: 0.05 in the checkpoint, 0.1 now: the resumed run uses 0.1" in proc.stderr  # likewise
    assert "had other document or row counts" not in proc.stderr  # the seed moved the split: named already
    assert events(proc.stdout, "mft.summary")[-1]["steps"] == 9  # the finished run, resumed at its end


def test_resuming_onto_data_edited_since_warns_and_goes_on(lora, tmp_path):
    changed, mount = _copy_of_run(lora, tmp_path)
    # Mounted at the same path, code-exam has one record more: its split and order moved.
    exam = Path(changed["data"]["paths"][0])
    data = tmp_path / "mnt" / "examples" / "data"
    shutil.copytree(exam.parent, data)
    with open(data / exam.name / "exam.jsonl", "a") as more:
        more.write('{"prompt": "What is 1 + 1 in Python?", "answer": "2"}\n')
    changed["data"]["paths"] = [str(data / Path(p).name) for p in changed["data"]["paths"]]
    saved = checkpoint.latest(mount).path
    state = json.loads((saved / checkpoint.STATE_FILE).read_text())
    state["config"]["data"]["paths"] = changed["data"]["paths"]  # as if the checkpoint had been written there
    (saved / checkpoint.STATE_FILE).write_text(json.dumps(state))
    proc = run_training(write_config(tmp_path / "changed.yaml", changed), nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written with other data or batch settings" not in proc.stderr
    assert f"resuming from {saved}, written when tasks code-exam had other document or row counts" in proc.stderr


def test_merge_lora_gives_the_logits_of_base_plus_adapter(lora, base_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from mft_trainer.lora import load_for_inference

    adapter = checkpoint.latest(Path(lora[1]["checkpoint"]["mount_path"])).path
    out = tmp_path / "merged"
    proc = subprocess.run([PYTHON, "-m", "mft_trainer", "merge-lora", "--base", str(base_model),
                           "--adapter", str(adapter), "--out", str(out)],
                          env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    ids = torch.randint(2, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
        with_adapter = load_for_inference(adapter, base_model).eval()(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(base_model).eval()(input_ids=ids).logits
    torch.testing.assert_close(merged, with_adapter, atol=1e-4, rtol=0)
    assert (merged - base).abs().max() > 1e-3  # the adapter learned something


def test_generate_cli_answers_from_a_lora_checkpoint(lora):
    adapter = checkpoint.latest(Path(lora[1]["checkpoint"]["mount_path"])).path
    proc = subprocess.run([PYTHON, "-m", "mft_trainer", "generate", "--model", str(adapter), "--prompt",
                           "What is 2 + 2 in Python?", "--max-new-tokens", "8", "--device", "cpu"],
                          env=child_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.endswith("\n") and "Traceback" not in proc.stderr  # one answer printed for the prompt


def test_a_resume_with_another_batch_size_finishes(tmp_path):
    """The data position saved at a step of 2 rows is not a step boundary for 8: the resumed epoch
    must still end (it once waited forever for a step that could not come)."""
    raw = config(tmp_path / "ckpt", per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=3,
                 evaluation_strategy=["no"])
    train(tmp_path, "small", raw, nproc=1)
    bigger = copy.deepcopy(raw)
    bigger["training"].update(per_device_train_batch_size=8, max_steps=0)
    proc = run_training(write_config(tmp_path / "bigger.yaml", bigger), nproc=1, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per_device_train_batch_size: 2 in the checkpoint, 8 now" in proc.stderr
    summary = events(proc.stdout, "mft.summary")[-1]
    # The steps left are counted from the data position, in steps of the new size, to the last epoch's end.
    assert summary["steps"] == summary["total_steps"] > 3
    assert summary["stopped_by"] == "completed" and summary["epoch"] == 2
    again = copy.deepcopy(bigger)
    again["training"]["gradient_accumulation_steps"] = 2  # a finished run, resumed with other steps
    proc = run_training(write_config(tmp_path / "again.yaml", again), nproc=1, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert step_losses(proc.stdout) == {}
    assert events(proc.stdout, "mft.summary")[-1]["stopped_by"] == "completed"

    # Starting over on the same volume: the earlier run's checkpoints go aside, none is rotated out
    # by this run's, and "latest" is this run's.
    fresh = copy.deepcopy(raw)
    fresh["checkpoint"].update(resume="never", steps=1)
    fresh["training"]["max_steps"] = 2
    earlier = sorted(c.name for c in checkpoint.complete(tmp_path / "ckpt"))
    earlier_logs = sorted(p.name for p in (tmp_path / "ckpt" / "tensorboard").iterdir())
    proc = train(tmp_path, "fresh", fresh, nproc=1)
    assert "checkpoint.resume is never: moved the checkpoints and TensorBoard logs already in" in proc.stderr
    assert [c.name for c in checkpoint.complete(tmp_path / "ckpt")] == ["checkpoint-1", "checkpoint-2"]
    assert events(proc.stdout, "mft.summary")[-1]["latest"] == "checkpoint-2"
    (previous,) = (tmp_path / "ckpt" / checkpoint.PREVIOUS_RUNS).iterdir()
    assert sorted(c.name for c in checkpoint.complete(previous)) == earlier
    # TensorBoard shows this run's curves alone, the earlier runs' are kept with their checkpoints.
    assert sorted(p.name for p in (previous / "tensorboard").iterdir()) == earlier_logs
    assert not set(earlier_logs) & {p.name for p in (tmp_path / "ckpt" / "tensorboard").iterdir()}


def test_the_end_of_an_epoch_on_an_evaluated_step_is_evaluated_once(tmp_path):
    # A repeated evaluation would count as one without improvement against early-stopping patience.
    raw = config(tmp_path / "ckpt", epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                 evaluation_steps=1, max_valid_batches=1)
    proc = train(tmp_path, "once", raw, nproc=1)
    evaluated = [e["step"] for e in events(proc.stdout, "mft.progress") if e["tokens_per_second"] is None]
    assert evaluated == list(range(1, events(proc.stdout, "mft.summary")[-1]["steps"] + 1))


def test_the_last_epoch_checkpoint_carries_the_final_valid_loss_without_epoch_evaluations(tmp_path):
    """The end of training is evaluated before its epoch-end save (evaluated by steps alone, and not
    at this step), so the last checkpoint has the final valid loss and can be the best."""
    raw = config(tmp_path / "ckpt", epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                 evaluation_strategy=["steps"], evaluation_steps=1000, max_valid_batches=1)
    raw["checkpoint"]["save_strategy"] = "epoch"
    proc = train(tmp_path, "last", raw, nproc=1)
    assert "checkpoint.save_strategy is epoch but training.evaluation_strategy (steps) has no epoch" in proc.stderr
    summary = events(proc.stdout, "mft.summary")[-1]
    last = summary["steps"]
    assert [e["step"] for e in events(proc.stdout, "mft.progress") if e["tokens_per_second"] is None] == [last]
    saved = checkpoint.complete(tmp_path / "ckpt")
    assert [(c.name, c.valid_loss) for c in saved] == [(f"checkpoint-{last}", summary["final_valid_loss"]),
                                                       (f"checkpoint-{last}-epoch-1", summary["final_valid_loss"])]
    assert summary["best"] == f"checkpoint-{last}" and summary["best_valid_loss"] == summary["final_valid_loss"]


def evaluated_steps(stdout: str) -> list[int]:
    """Steps whose evaluation printed a progress line (one without throughput)."""
    return [e["step"] for e in events(stdout, "mft.progress") if e["tokens_per_second"] is None]


def test_the_last_step_checkpoint_carries_the_final_valid_loss(tmp_path):
    """The last step (max_steps) is a checkpoint step and evaluated only as the end of training: it is
    evaluated before that save, so the checkpoint has the final valid loss and is the best; a pod
    restarted after completion finds it evaluated."""
    raw = config(tmp_path / "ckpt", max_steps=4, evaluation_strategy=["epoch"], max_valid_batches=1)
    raw["checkpoint"]["steps"] = 2
    proc = train(tmp_path, "last", raw, nproc=1)
    summary = events(proc.stdout, "mft.summary")[-1]
    assert evaluated_steps(proc.stdout) == [4]
    assert [(c.name, c.valid_loss) for c in checkpoint.complete(tmp_path / "ckpt")] == \
        [("checkpoint-2", None), ("checkpoint-4", summary["final_valid_loss"])]
    assert summary["best"] == "checkpoint-4" and summary["best_valid_loss"] == summary["final_valid_loss"]

    again = train(tmp_path, "again", raw, nproc=1)
    assert evaluated_steps(again.stdout) == [] and step_losses(again.stdout) == {}


def test_an_epoch_checkpoint_at_a_step_checkpoint_links_its_files(tmp_path):
    """The epoch's last step is a step checkpoint's (21 steps, one every 7), and evaluated before it
    (the end of training); the epoch checkpoint of that step shares every file of it but
    trainer_state.json, its own, which records the closed epoch."""
    raw = config(tmp_path / "ckpt", epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                 evaluation_strategy=["epoch"], max_valid_batches=1)
    raw["checkpoint"] |= {"steps": 7, "save_total_limit": 10}
    proc = train(tmp_path, "linked", raw, nproc=1)
    summary = events(proc.stdout, "mft.summary")[-1]
    last = summary["steps"]
    assert last % 7 == 0 and evaluated_steps(proc.stdout) == [last]
    step, epoch = (checkpoint.latest(tmp_path / "ckpt").path.with_name(name)
                   for name in (f"checkpoint-{last}", f"checkpoint-{last}-epoch-1"))
    assert sorted(p.name for p in epoch.iterdir()) == sorted(p.name for p in step.iterdir())
    for file in step.iterdir():
        assert os.path.samefile(file, epoch / file.name) == (file.name != checkpoint.STATE_FILE), file.name
    states = [checkpoint.load_trainer_state(path) for path in (step, epoch)]
    assert [s["valid_loss"] for s in states] == [summary["final_valid_loss"]] * 2
    assert [(s["state"]["epoch"], s["state"]["offset"] > 0) for s in states] == [(0, True), (1, False)]
    assert summary["best"] == f"checkpoint-{last}"


def test_patience_running_out_at_the_last_evaluation_is_a_completed_run(tmp_path):
    # Two epochs, evaluated at each end; so small a learning rate changes no weight: the second valid
    # loss is no better than the first.
    raw = config(tmp_path / "ckpt", epochs=2, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                 learning_rate=1e-30, min_lr=0, num_warmup_steps=0, evaluation_strategy=["epoch"],
                 early_stopping_patience=1, max_valid_batches=1)
    proc = train(tmp_path, "last", raw, nproc=1)
    valid = [e["valid_loss"] for e in events(proc.stdout, "mft.progress") if e["tokens_per_second"] is None]
    assert len(valid) == 2 and valid[1] >= valid[0], valid  # patience ran out at the last evaluation
    assert "early stopping: no improvement of the valid loss in 1 evaluations" in proc.stderr
    assert events(proc.stdout, "mft.summary")[-1]["stopped_by"] == "completed"


def test_early_stopping_stays_stopped(tmp_path):
    # A learning rate this large makes the valid loss worse soon, and patience 2 stops the run there.
    raw = config(tmp_path / "ckpt", epochs=1, per_device_train_batch_size=8, gradient_accumulation_steps=1,
                 learning_rate=0.5, num_warmup_steps=0, evaluation_steps=1, early_stopping_patience=2,
                 max_valid_batches=1)
    raw["checkpoint"]["steps"] = 1
    summary = events(train(tmp_path, "stops", raw, nproc=1).stdout, "mft.summary")[-1]
    assert summary["stopped_by"] == "early_stop", summary

    again = run_training(write_config(tmp_path / "again.yaml", raw), nproc=1)  # a pod restarted after it
    assert again.returncode == 0, again.stderr[-3000:]
    assert "early stopping: decided at step" in again.stderr
    assert step_losses(again.stdout) == {}
    assert events(again.stdout, "mft.summary")[-1] | {"time": 0} == summary | {"time": 0}
