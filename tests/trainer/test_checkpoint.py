"""Checkpoint bookkeeping on plain folders (completeness, stale temp folders, rotation), the
background writer, and what a written checkpoint says about its weights."""

import copy
import dataclasses
import errno
import json
import os
import threading
import time

import pytest
import torch

from mft_trainer import checkpoint, distributed
from mft_trainer.accelerate import Accelerated


def fake(root, name, valid_loss=None, complete=True):
    path = root / name
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / checkpoint.STATE_FILE).write_text(json.dumps({"valid_loss": valid_loss}))
    return path


def test_only_folders_with_trainer_state_count_and_temp_folders_are_cleaned(tmp_path):
    fake(tmp_path, "checkpoint-3")
    fake(tmp_path, "checkpoint-6", complete=False)  # a crash before trainer_state.json: not a checkpoint
    fake(tmp_path, ".tmp-checkpoint-9")
    assert [c.name for c in checkpoint.complete(tmp_path)] == ["checkpoint-3"]
    assert checkpoint.latest(tmp_path).step == 3
    assert checkpoint.clean_stale(tmp_path) == [".tmp-checkpoint-9"]
    assert not (tmp_path / ".tmp-checkpoint-9").exists()


def test_rotation_keeps_best_and_latest_and_never_epoch_checkpoints(tmp_path):
    fake(tmp_path, "checkpoint-2", 3.0)
    fake(tmp_path, "checkpoint-4", 1.0)  # best
    fake(tmp_path, "checkpoint-5-epoch-1", 2.5)
    fake(tmp_path, "checkpoint-6", 2.0)
    fake(tmp_path, "checkpoint-8", None)  # latest, not evaluated
    assert checkpoint.rotate(tmp_path, 2) == ["checkpoint-2", "checkpoint-6"]
    assert [c.name for c in checkpoint.complete(tmp_path)] == ["checkpoint-4", "checkpoint-5-epoch-1", "checkpoint-8"]
    assert checkpoint.best(tmp_path).name == "checkpoint-4"
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_non_finite_valid_loss_is_no_score(tmp_path):
    # A diverged evaluation: as the smallest loss it would be the best, and rotation would delete the real best.
    fake(tmp_path, "checkpoint-2", float("nan"))  # json writes NaN, and reads it back
    fake(tmp_path, "checkpoint-4", 1.0)
    fake(tmp_path, "checkpoint-6", float("inf"))
    fake(tmp_path, "checkpoint-8", 2.5)
    assert [c.valid_loss for c in checkpoint.complete(tmp_path)] == [None, 1.0, None, 2.5]
    assert checkpoint.best(tmp_path).name == "checkpoint-4"
    assert checkpoint.rotate(tmp_path, 2) == ["checkpoint-2", "checkpoint-6"]


def test_rotation_limit_one_keeps_the_latest_and_zero_keeps_all(tmp_path):
    fake(tmp_path, "checkpoint-2", 1.0)
    fake(tmp_path, "checkpoint-4", 2.0)
    assert checkpoint.rotate(tmp_path, 0) == []
    assert checkpoint.rotate(tmp_path, 1) == ["checkpoint-2"]


def test_epoch_copy_links_every_file_but_its_own_trainer_state(tmp_path):
    source = fake(tmp_path, "checkpoint-4", 1.0)
    copy = checkpoint.copy(tmp_path, source, "checkpoint-4-epoch-1", {"valid_loss": 1.0, "state": {"epoch": 1}})
    assert checkpoint.latest(tmp_path).epoch == 1
    assert os.path.samefile(copy / "model.safetensors", source / "model.safetensors")  # a hard link: no space
    assert checkpoint.load_trainer_state(copy)["state"] == {"epoch": 1}  # the closed epoch: a file of its own
    assert checkpoint.load_trainer_state(source) == {"valid_loss": 1.0}


def test_epoch_copy_copies_the_files_on_a_volume_without_hard_links(tmp_path, monkeypatch):
    def refuse(source, target):  # what GCS FUSE or Azure Files over SMB answer
        raise OSError(errno.EPERM, "Operation not permitted", source)

    source = fake(tmp_path, "checkpoint-4", 1.0)
    monkeypatch.setattr(checkpoint.os, "link", refuse)
    copy = checkpoint.copy(tmp_path, source, "checkpoint-4-epoch-1", {"valid_loss": 1.0})
    assert [(c.name, c.valid_loss) for c in checkpoint.complete(tmp_path)] == \
        [("checkpoint-4", 1.0), ("checkpoint-4-epoch-1", 1.0)]
    assert not os.path.samefile(copy / "model.safetensors", source / "model.safetensors")
    assert (copy / "model.safetensors").read_bytes() == b"x"
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_write_that_fails_on_the_volume_is_removed_and_names_the_checkpoint(tmp_path, monkeypatch):
    def full(folder, trainer_state):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / checkpoint.STATE_FILE))

    source = fake(tmp_path, "checkpoint-4", 1.0)
    monkeypatch.setattr(checkpoint, "_write_state", full)
    with pytest.raises(checkpoint.WriteError) as failed:
        checkpoint.copy(tmp_path, source, "checkpoint-4-epoch-1", {"valid_loss": 1.0})
    target = tmp_path / "checkpoint-4-epoch-1"
    assert str(failed.value) == f"checkpoint write to {target} failed: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]  # its half-written .tmp- folder is gone


def test_saving_a_name_again_replaces_it_and_a_crash_in_between_keeps_the_new_copy(tmp_path):
    fake(tmp_path, "checkpoint-4", 2.0)
    source = fake(tmp_path, "checkpoint-2", 1.0)
    checkpoint.copy(tmp_path, source, "checkpoint-4", {"valid_loss": 1.0})
    assert checkpoint.best(tmp_path).name == "checkpoint-2"
    assert json.loads((tmp_path / "checkpoint-4" / checkpoint.STATE_FILE).read_text())["valid_loss"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # Killed after the older copy moved aside, before the new one (complete, fsynced) was renamed in.
    (tmp_path / "checkpoint-4").rename(tmp_path / f"{checkpoint.REPLACED_PREFIX}checkpoint-4")
    fake(tmp_path, ".tmp-checkpoint-4", 0.5)
    assert checkpoint.finish_replacements(tmp_path) == ["checkpoint-4"]
    checkpoint.clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert checkpoint.best(tmp_path).name == "checkpoint-4"  # the new copy


def test_a_replacement_killed_before_anything_moved_keeps_the_older_copy(tmp_path):
    fake(tmp_path, "checkpoint-4", 2.0)
    fake(tmp_path, ".tmp-checkpoint-4", 0.5)  # written, not yet installed
    assert checkpoint.finish_replacements(tmp_path) == []
    checkpoint.clean_stale(tmp_path)
    assert [c.valid_loss for c in checkpoint.complete(tmp_path)] == [2.0]


def test_a_run_that_does_not_resume_sets_the_earlier_checkpoints_aside(tmp_path):
    for name in ("checkpoint-4", "checkpoint-6", "checkpoint-6-epoch-1"):
        fake(tmp_path, name, 1.0)
    moved = checkpoint.set_aside(tmp_path, "20261129T100000Z")
    assert moved == tmp_path / checkpoint.PREVIOUS_RUNS / "20261129T100000Z"
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoint-4", "checkpoint-6", "checkpoint-6-epoch-1"]
    assert checkpoint.complete(tmp_path) == [] and checkpoint.set_aside(tmp_path, "later") is None
    fake(tmp_path, "checkpoint-2", 1.0)  # a second start within the same second
    assert checkpoint.set_aside(tmp_path, "20261129T100000Z").name == "20261129T100000Z-1"


def test_the_earlier_run_s_tensorboard_logs_go_aside_too(tmp_path):
    # Else TensorBoard draws both runs' curves as one, from step 1 again.
    (tmp_path / "tensorboard").mkdir()
    (tmp_path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    moved = checkpoint.set_aside(tmp_path, "20261129T100000Z")  # also with no checkpoint to move
    assert [p.name for p in moved.iterdir()] == ["tensorboard"] and not (tmp_path / "tensorboard").exists()
    assert (moved / "tensorboard" / "events.out.tfevents.1").exists()


def test_writer_runs_jobs_in_order_off_the_caller_thread_and_reraises_failures():
    done: list[tuple[int, str]] = []
    gate = threading.Event()
    writer = checkpoint.Writer(background=True)
    writer.submit(lambda: (gate.wait(5), done.append((1, threading.current_thread().name))))
    writer.submit(lambda: done.append((2, threading.current_thread().name)))
    assert done == []  # the caller was not held: the first job is still waiting for the gate
    gate.set()
    writer.wait()
    assert [n for n, _ in done] == [1, 2]
    assert all(name.startswith("checkpoint-writer") for _, name in done)

    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.wait()
    writer.close()


def test_writer_reports_a_failed_write_without_waiting_for_the_one_in_flight():
    gate = threading.Event()
    writer = checkpoint.Writer(background=True)
    writer.submit(lambda: None)
    writer.submit(lambda: 1 / 0)
    writer.submit(lambda: gate.wait(5))
    for _ in range(500):  # what the loop asks after every step
        if writer.failure() is not None:
            break
        time.sleep(0.01)
    assert isinstance(writer.failure(), ZeroDivisionError) and not gate.is_set()  # the third is still in flight
    gate.set()
    with pytest.raises(ZeroDivisionError):
        writer.close()


def test_a_write_failing_in_the_foreground_is_held_like_one_in_the_background():
    writer = checkpoint.Writer(background=False)
    writer.submit(lambda: None)
    assert writer.failure() is None
    writer.submit(lambda: 1 / 0)  # not raised here: every rank learns of it at the same step
    assert isinstance(writer.failure(wait=True), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        writer.close()


def test_writer_in_the_foreground_runs_each_job_at_once():
    done = []
    writer = checkpoint.Writer(background=False)
    writer.submit(lambda: done.append(threading.current_thread().name))
    assert done == [threading.current_thread().name]
    writer.close()


def test_host_copy_is_independent_of_later_updates_and_keeps_ties():
    weight = torch.ones(3)
    state = {"a": weight, "tied": weight.detach(), "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}, "lr": [0.1]}}
    copied = checkpoint._host_copy(state, {}, {})
    weight.add_(1)
    state["opt"]["state"][0]["exp_avg"].add_(5)
    assert torch.equal(copied["a"], torch.ones(3))
    assert copied["a"] is copied["tied"]  # one tensor, as save_pretrained expects for tied weights
    assert torch.equal(copied["opt"]["state"][0]["exp_avg"], torch.zeros(2))
    assert copied["opt"]["lr"] == [0.1]


def test_snapshots_copy_into_the_writers_staging_memory_from_one_save_to_the_next():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    acc = Accelerated(model=model, optimizer=optimizer, strategy=["parallel_mode"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    world, writer = distributed.World(rank=0, local_rank=0, size=1, device=torch.device("cpu")), \
        checkpoint.Writer(background=True)

    first = checkpoint.snapshot(acc, scheduler, {}, world, writer.staging)
    first_weight = first.weights["weight"].clone()
    staged = {key: tensor.data_ptr() for key, tensor in writer.staging.items()}
    with torch.no_grad():
        model.weight.add_(1)
    second = checkpoint.snapshot(acc, scheduler, {}, world, writer.staging)

    assert {key: tensor.data_ptr() for key, tensor in writer.staging.items()} == staged  # no new memory
    assert second.weights["weight"].data_ptr() == first.weights["weight"].data_ptr()
    assert torch.equal(second.weights["weight"], first_weight + 1)  # the state at the second save
    assert torch.equal(second.optimizer["state"]["weight"]["exp_avg"], optimizer.state[model.weight]["exp_avg"])

    optimizer.state[model.weight]["exp_avg"] = torch.zeros(2, 4)  # a tensor the state no longer has
    checkpoint.snapshot(acc, scheduler, {}, world, writer.staging)
    assert len(writer.staging) == len(staged)  # staging follows the state: the stale copy is dropped
    writer.close()
    assert checkpoint.Writer(background=False).staging is None  # foreground saves hold no memory between saves


def test_config_describes_the_model_written_not_the_live_one_in_training(tmp_path, tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from .conftest import tiny_model

    model = tiny_model(len(tokenizer))
    model.config.use_cache = False  # as build_model trains it
    snap = checkpoint.Snapshot(weights={k: v.clone() for k, v in model.state_dict().items()}, optimizer={},
                               scheduler={}, rank_states=[{}])
    model.to(torch.bfloat16)  # what FSDP's bf16 mixed precision shows mid-step, while a write runs
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # as load_tokenizer sets one
    path = checkpoint.persist(tmp_path, "checkpoint-1", snap, model=model, tokenizer=tokenizer, trainer_state={})
    assert {t.dtype for t in load_file(path / "model.safetensors").values()} == {torch.float32}
    written = json.loads((path / "config.json").read_text())
    assert written["dtype"] == written["torch_dtype"] == "float32"  # torch_dtype: what older readers take
    # The chat template where every transformers release reads it.
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"] == tokenizer.chat_template
    # Served with the KV cache on (tools read config.use_cache), trained on without it.
    assert AutoConfig.from_pretrained(path).use_cache is True
    assert model.config.use_cache is False


def test_a_lora_snapshot_copies_the_adapter_only_and_its_checkpoint_loads_back(tmp_path, tokenizer):
    """The frozen base model stays out of host memory: neither the snapshot nor the writer's staging
    memory holds any of it, and the adapter written from it is the live model's."""
    from safetensors.torch import load_file

    from mft_trainer.config import LoraConfig
    from mft_trainer.lora import WEIGHTS_FILE, apply_lora, peft_name

    from .conftest import tiny_model

    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["query_key_value", "dense"])
    model = apply_lora(tiny_model(len(tokenizer), seed=3), lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=torch.arange(2, 10)[None]).logits.sum().backward()
    optimizer.step()  # LoRA B starts at zero: after a step the adapter is not the identity
    acc = Accelerated(model=model, optimizer=optimizer, strategy=["parallel_mode"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    world, writer = distributed.World(rank=0, local_rank=0, size=1, device=torch.device("cpu")), \
        checkpoint.Writer(background=True)

    snap = checkpoint.snapshot(acc, scheduler, {}, world, writer.staging)
    adapter = {key: value for key, value in model.state_dict().items() if peft_name(key, "default")}
    assert snap.weights.keys() == adapter.keys() and all(".lora_" in key for key in adapter)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # The adapter's weights, and per weight Adam's two moments and its step count.
    assert sum(t.numel() for t in writer.staging.values()) == 3 * trainable + len(adapter)
    writer.close()

    path = checkpoint.persist(tmp_path, "checkpoint-1", snap, model=model, tokenizer=tokenizer,
                              trainer_state={})
    assert {peft_name(key, "default") for key in adapter} == load_file(path / WEIGHTS_FILE).keys()
    resumed = apply_lora(tiny_model(len(tokenizer), seed=3), lora, adapter=path)  # what a resume loads
    for key, value in resumed.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], atol=0, rtol=0)



@pytest.mark.parametrize("dropout", [0.3, 0.0])
def test_a_resumed_adapter_takes_the_configured_dropout_and_records_it(tmp_path, tokenizer, caplog, dropout):
    """The adapter's own adapter_config.json has the dropout it was trained with; like the learning
    rate, a resumed run uses the configured one (peft makes a dropout of 0 an identity)."""
    from mft_trainer.config import LoraConfig
    from mft_trainer.lora import apply_lora, save_adapter

    from .conftest import tiny_model

    lora = LoraConfig(r=4, alpha=8, dropout=0.05, target_modules=["query_key_value", "dense"])
    save_adapter(apply_lora(tiny_model(len(tokenizer), seed=3), lora), None, tmp_path)
    with caplog.at_level("INFO", logger="mft_trainer"):
        resumed = apply_lora(tiny_model(len(tokenizer), seed=3), dataclasses.replace(lora, dropout=dropout),
                             adapter=tmp_path)
    assert f"lora.dropout: 0.05 in the checkpoint, {dropout} now: the resumed run uses {dropout}" in caplog.text
    layers = [m.lora_dropout["default"] for m in resumed.modules() if hasattr(m, "lora_dropout")]
    assert len(layers) == 2 * len(resumed.base_model.model.gpt_neox.layers)
    if dropout:
        assert all(isinstance(layer, torch.nn.Dropout) and layer.p == dropout for layer in layers)
    else:
        assert all(isinstance(layer, torch.nn.Identity) for layer in layers)
    save_adapter(resumed, None, tmp_path / "again")  # what its checkpoints record
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["lora_dropout"] == dropout


ONE_RANK = distributed.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))


def optimized(tokenizer, steps: int = 1, fused: bool | None = None) -> Accelerated:
    """A tiny GPT-NeoX with its AdamW built as ATorch builds it (decay and no-decay groups), after ``steps``."""
    from mft_trainer.accelerate import param_groups

    from .conftest import tiny_model

    model = tiny_model(len(tokenizer)).train()
    optimizer = torch.optim.AdamW(param_groups(model), lr=0.1, weight_decay=0.1, fused=fused)
    for _ in range(steps):
        ids = torch.arange(2, 10)[None]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return Accelerated(model=model, optimizer=optimizer, strategy=["parallel_mode"])


def constant_schedule(acc: Accelerated) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(acc.optimizer, lambda step: 1.0)


def save(tmp_path, acc: Accelerated, tokenizer):
    snap = checkpoint.snapshot(acc, constant_schedule(acc), {"sampler": {"epoch": 0, "offset": 8}}, ONE_RANK)
    return checkpoint.persist(tmp_path, "checkpoint-1", snap, model=acc.model, tokenizer=tokenizer, trainer_state={})


def state_by_name(acc: Accelerated) -> dict[str, dict[str, torch.Tensor]]:
    names = {param: name for name, param in acc.model.named_parameters()}
    return {names[param]: state for param, state in acc.optimizer.state.items()}


def assert_same_state(got: dict[str, dict[str, torch.Tensor]], expected: dict[str, dict[str, torch.Tensor]]) -> None:
    assert got.keys() == expected.keys() and expected
    for name, state in expected.items():
        assert got[name].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(got[name][key], value), f"{name}: {key}"


def test_the_optimizer_state_is_saved_by_parameter_name_and_restored_to_each_parameter(tmp_path, tokenizer):
    acc = optimized(tokenizer)
    path = save(tmp_path, acc, tokenizer)
    saved = torch.load(path / checkpoint.OPTIMIZER_FILE, weights_only=True)["optimizer"]
    # FSDP's own form, so that either strategy resumes the other's checkpoints (test_fsdp.py).
    assert saved["state"].keys() == state_by_name(acc).keys()
    assert [len(group["params"]) for group in saved["param_groups"]] == [10, 18]  # decay, no decay
    resumed = optimized(tokenizer, steps=0)
    checkpoint.load_training_state(path, resumed, constant_schedule(resumed), ONE_RANK)
    assert_same_state(state_by_name(resumed), state_by_name(acc))


def test_an_optimizer_state_keyed_by_position_is_still_restored(tmp_path, tokenizer):
    acc = optimized(tokenizer, steps=2)
    path = save(tmp_path, acc, tokenizer)
    # What data parallelism wrote before the state was keyed by name: optimizer.state_dict(), by position.
    torch.save({"optimizer": acc.optimizer.state_dict(), "scheduler": constant_schedule(acc).state_dict()},
               path / checkpoint.OPTIMIZER_FILE)
    resumed = optimized(tokenizer, steps=0)
    checkpoint.load_training_state(path, resumed, constant_schedule(resumed), ONE_RANK)
    assert_same_state(state_by_name(resumed), state_by_name(acc))


def test_a_state_saved_by_unfused_adamw_resumes_into_the_fused_kernel(tmp_path, tokenizer):
    acc = optimized(tokenizer, steps=2)  # as checkpoints were written before AdamW was fused
    path = save(tmp_path, acc, tokenizer)
    resumed = optimized(tokenizer, steps=0, fused=True)
    checkpoint.load_training_state(path, resumed, constant_schedule(resumed), ONE_RANK)
    assert all(group["fused"] for group in resumed.optimizer.param_groups)
    assert_same_state(state_by_name(resumed), state_by_name(acc))
    ids = torch.arange(2, 10)[None]
    resumed.model(input_ids=ids, labels=ids).loss.backward()
    resumed.optimizer.step()  # the fused kernel takes the loaded state (its step counts included)


def draws() -> tuple:
    import random

    import numpy as np

    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rank_state_round_trips_and_resumes_every_random_stream(tmp_path, tokenizer):
    acc = optimized(tokenizer)
    path = save(tmp_path, acc, tokenizer)
    expected = draws()  # what follows the saved state
    rank_state = checkpoint.load_training_state(path, acc, constant_schedule(acc), ONE_RANK)
    assert rank_state["sampler"] == {"epoch": 0, "offset": 8}
    checkpoint.set_rng_state(rank_state["rng"])
    assert draws() == expected


def test_a_rank_file_from_before_the_numpy_state_was_a_tensor_still_loads(tmp_path, tokenizer):
    import random

    import numpy as np

    acc = optimized(tokenizer)
    path = save(tmp_path, acc, tokenizer)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"sampler": {"epoch": 0, "offset": 8}, "rng": legacy}, path / checkpoint.rank_file(0))
    expected = draws()
    checkpoint.set_rng_state(checkpoint.load_training_state(path, acc, constant_schedule(acc), ONE_RANK)["rng"])
    assert draws() == expected


class RunsCode:
    """What a file planted on the checkpoint volume could hold: unpickling it calls os.system."""

    def __init__(self, witness):
        self.witness = witness

    def __reduce__(self):
        return os.system, (f"touch {self.witness}",)


def test_a_file_that_would_run_code_when_loaded_is_refused_naming_it(tmp_path, tokenizer):
    acc = optimized(tokenizer)
    path = save(tmp_path, acc, tokenizer)
    witness = tmp_path / "code-ran"
    torch.save({"sampler": {"epoch": 0, "offset": 8}, "rng": RunsCode(witness)}, path / checkpoint.rank_file(0))
    with pytest.raises(checkpoint.UnsafeFile) as refused:
        checkpoint.load_training_state(path, acc, constant_schedule(acc), ONE_RANK)
    assert str(refused.value).startswith(f"{path / checkpoint.rank_file(0)}: refused to load: it holds posix.system, "
                                         f"which no checkpoint of the trainer holds, and loading it could run code")
    assert not witness.exists()

