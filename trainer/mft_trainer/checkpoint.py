"""Checkpoints: atomic, Hugging Face-loadable, and resumable in every mode.

Layout of ``<mount_path>/checkpoint-<step>[-epoch-<k>]/``:

    config.json, model.safetensors        full model (sst, sft), ``save_pretrained``
    adapter_config.json, adapter_model.safetensors   LoRA adapter instead (peft)
    tokenizer files
    optimizer.pt                          optimizer + LR scheduler state, keyed by parameter name
    rank-<r>.pt                           RNG states and data position of rank r
    trainer_state.json                    step, epoch, best metric, early stopping, counters; written
                                          last, so its presence marks a complete checkpoint

Saving has two halves: ``snapshot`` copies the state to host memory (collective, the only part
the training loop waits for), then rank 0 ``persist``s it, on the ``Writer``'s background thread
unless asynchronous saving is off. Everything is written into ``.tmp-<name>``, fsynced, and
renamed into place; a crash mid-write leaves only a ``.tmp-*`` folder, which the next start removes
(or, if the crash came while a complete one replaced an older copy of the same name, installs).
A write that fails (a full, read-only or broken volume) removes its ``.tmp-<name>`` at once and
raises ``WriteError``, which the training loop checks for after every step.
Rotation keeps the best step checkpoint by valid loss and the newest ones; epoch checkpoints are
never rotated. A run that does not resume first moves the checkpoints it finds, and the TensorBoard
logs, to ``previous-runs/<time>/``.

The optimizer state is keyed by parameter name, as FSDP's own, under every strategy: a checkpoint of
one rank resumes on several (FSDP), and one of several on one. Files written when data parallelism
saved ``optimizer.state_dict()`` (keyed by position) are converted on load. Our ``.pt`` files are
read with ``weights_only``: tensors and plain Python values only, so a file placed on the checkpoint
volume cannot run code in the next resume.

Fault-injection tests set ``MFT_TEST_CHECKPOINT_DELAY`` (seconds, unset or 0 by default) to pause
between the phases of a write and of a deletion, so that a kill can land inside each phase.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import re
import shutil
import time
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mft_trainer import distributed
from mft_trainer.accelerate import Accelerated, unwrap
from mft_trainer.durable import fsync, fsync_tree
from mft_trainer.metrics import TENSORBOARD_DIR
from mft_trainer.data.tokenizer import save_tokenizer
from mft_trainer.model import write_serving_config

NAME = re.compile(r"^checkpoint-(\d+)(?:-epoch-(\d+))?$")
STATE_FILE = "trainer_state.json"
TEST_DELAY_ENV = "MFT_TEST_CHECKPOINT_DELAY"
OPTIMIZER_FILE = "optimizer.pt"
TMP_PREFIX = ".tmp-"
REPLACED_PREFIX = f"{TMP_PREFIX}replaced-"  # an older copy of a name saved again, until the new one is in place
PREVIOUS_RUNS = "previous-runs"


class WriteError(RuntimeError):
    """A checkpoint could not be written: the volume is full, read-only or broken. Permanent: a
    restarted pod would meet the same volume."""


class UnsafeFile(RuntimeError):
    """A checkpoint file holds objects whose loading could run code: not a file the trainer wrote.
    Permanent: a restarted pod would find the same file."""


@dataclass(frozen=True)
class Saved:
    path: Path
    step: int
    epoch: int | None  # set for checkpoint-<step>-epoch-<k>
    valid_loss: float | None

    @property
    def name(self) -> str:
        return self.path.name


def name_for(step: int, epoch: int | None = None) -> str:
    return f"checkpoint-{step}" if epoch is None else f"checkpoint-{step}-epoch-{epoch}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def complete(root: Path) -> list[Saved]:
    """Complete checkpoints under ``root``, oldest first (a step's plain one before its epoch one)."""
    found = []
    for path in root.glob("checkpoint-*"):
        match = NAME.match(path.name)
        if not match or not (path / STATE_FILE).is_file():
            continue
        state = json.loads((path / STATE_FILE).read_text())
        epoch = int(match.group(2)) if match.group(2) else None
        found.append(Saved(path, int(match.group(1)), epoch, _score(state.get("valid_loss"))))
    return sorted(found, key=lambda c: (c.step, c.epoch is not None, c.epoch or 0))


def _score(valid_loss: float | None) -> float | None:
    """A valid loss that can rank checkpoints, or None: a non-finite one (a diverged evaluation) is
    no score, else it would be the minimum (NaN compares false) or the worst possible best."""
    return valid_loss if valid_loss is not None and math.isfinite(valid_loss) else None


def latest(root: Path) -> Saved | None:
    found = complete(root)
    return found[-1] if found else None


def best(root: Path) -> Saved | None:
    scored = [c for c in complete(root) if c.valid_loss is not None]
    return min(scored, key=lambda c: c.valid_loss) if scored else None


def finish_replacements(root: Path) -> list[str]:
    """Install the new copy of each checkpoint whose replacement was interrupted between moving the
    older copy aside and renaming the new one into place (rank 0, at start, before ``clean_stale``).
    The new copy was complete and fsynced before the older one moved. Returns the names installed."""
    installed = []
    for replaced in root.glob(f"{REPLACED_PREFIX}*"):
        name = replaced.name.removeprefix(REPLACED_PREFIX)
        final, new = root / name, root / f"{TMP_PREFIX}{name}"
        if not final.exists() and (new / STATE_FILE).is_file():
            os.rename(new, final)
            installed.append(name)
    if installed:
        fsync(root)
    return sorted(installed)


def clean_stale(root: Path) -> list[str]:
    """Remove leftovers of interrupted writes and deletions (rank 0, before anything is saved)."""
    removed = []
    for path in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def clean_unmarked(root: Path) -> list[str]:
    """Remove ``checkpoint-*`` folders without trainer_state.json (rank 0, at start). Saves only ever
    rename complete folders into place, so such a folder is the leftover of a deletion interrupted
    between unmarking and moving aside: never resumable, only taking space."""
    removed = []
    for path in root.glob("checkpoint-*"):
        if NAME.match(path.name) and path.is_dir() and not (path / STATE_FILE).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return sorted(removed)


def set_aside(root: Path, label: str) -> Path | None:
    """Move every checkpoint folder and the TensorBoard logs into ``previous-runs/<label>/`` (rank 0,
    at the start of a run that does not resume): rotation and "latest" must see this run's
    checkpoints only, TensorBoard this run's curves only, and nothing of the earlier run is deleted.
    Returns the folder, or None when there was nothing to move."""
    found = sorted(p for p in root.glob("checkpoint-*") if NAME.match(p.name) and p.is_dir())
    found += [p for p in (root / TENSORBOARD_DIR,) if p.is_dir()]
    if not found:
        return None
    target = root / PREVIOUS_RUNS / label
    copies = 0
    while target.exists():  # two starts within one label (a second) get folders of their own
        copies += 1
        target = root / PREVIOUS_RUNS / f"{label}-{copies}"
    target.mkdir(parents=True)
    for path in found:
        os.rename(path, target / path.name)
    fsync(target)
    fsync(root)
    return target


def rotate(root: Path, limit: int) -> list[str]:
    """Keep at most ``limit`` step checkpoints: the latest, the best by valid loss, then the newest."""
    if limit <= 0:
        return []
    steps = [c for c in complete(root) if c.epoch is None]
    if len(steps) <= limit:
        return []
    keep = {steps[-1].path}
    scored = [c for c in steps if c.valid_loss is not None]
    if limit >= 2 and scored:
        keep.add(min(scored, key=lambda c: c.valid_loss).path)
    for c in reversed(steps):
        if len(keep) >= limit:
            break
        keep.add(c.path)
    removed = []
    for c in steps:
        if c.path not in keep:
            _delete(c.path)
            removed.append(c.name)
    return removed


@dataclass
class Snapshot:
    """Everything a checkpoint holds, copied to host memory: training may go on while it is written."""

    weights: dict[str, torch.Tensor]  # a LoRA model's: its adapter's only
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rank_states: list[dict[str, Any]]  # index = rank: RNG states and data position


def snapshot(acc: Accelerated, scheduler: Any, rank_state: dict[str, Any],
             world: distributed.World, staging: dict[tuple, torch.Tensor] | None = None) -> Snapshot | None:
    """Copy the training state to host memory (every rank calls this); rank 0 gets it, others None.

    Under FSDP the gathers are collective and already produce fresh host tensors; under data
    parallelism every rank holds the same weights and optimizer state, so only rank 0 copies them,
    into the ``staging`` tensors the previous snapshot left (a ``Writer``'s: allocating and faulting
    in fresh memory is most of a copy's time). The caller makes sure no write still reads them.

    A LoRA model's weights are its adapter's tensors only, all that its checkpoint writes: a copy of
    the frozen base model would take the base model's size in host memory at every save.
    """
    rank_states = distributed.gather_to_main({**rank_state, "rng": rng_state()})
    adapter_name = _lora_adapter_name(acc.model)
    if acc.uses_fsdp:
        weights = _full_state_dict(acc) if adapter_name is None else _gathered_adapter(acc, adapter_name, world)
        optimizer = _optimizer_state(acc)
    elif world.is_main:
        staging = {} if staging is None else staging
        memo: dict[tuple, torch.Tensor] = {}
        weights = _host_copy(_saved_entries(unwrap(acc.model).state_dict(), adapter_name), memo, staging)
        optimizer = _by_name(_host_copy(acc.optimizer.state_dict(), memo, staging), _param_names(acc))
        staging.clear()
        staging.update(memo)  # keep what this snapshot used, drop what the state no longer has
    if not world.is_main:
        return None
    return Snapshot(weights, optimizer, deepcopy(scheduler.state_dict()), rank_states)


def persist(root: Path, name: str, snap: Snapshot, *, model: torch.nn.Module, tokenizer: Any,
            trainer_state: dict[str, Any]) -> Path:
    """Write ``snap`` as checkpoint ``name`` (rank 0 only, safe off the training thread) and return its
    final path: files into ``.tmp-<name>``, fsync, trainer_state.json last, then one rename."""
    with _staged(root, name) as tmp:
        tmp.mkdir(parents=True)
        _test_pause()
        _save_weights(unwrap(_fsdp_inner(model)), snap.weights, tmp)
        save_tokenizer(tokenizer, tmp)
        torch.save({"optimizer": snap.optimizer, "scheduler": snap.scheduler}, tmp / OPTIMIZER_FILE)
        for rank, state in enumerate(snap.rank_states):
            torch.save(state, tmp / rank_file(rank))
        _test_pause()
        _write_state(tmp, trainer_state)
        fsync_tree(tmp)
    _test_pause()
    return _install(tmp, root / name)


class Writer:
    """Runs checkpoint writes after the training loop has moved on: one at a time, in submission
    order, on one background thread; a failed write is raised by the next ``wait`` and reported by
    ``failure`` as soon as it failed. With ``background=False`` each job runs at once on the
    caller's thread, and a failure is held all the same."""

    def __init__(self, background: bool):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer") if background else None
        self._pending: list[Future] = []
        # Host memory a snapshot copies into, kept from one save to the next (``snapshot``) when
        # writes run in the background: it costs no more than the copy each save holds anyway.
        # In the foreground the copy is only held while a save runs.
        self.staging: dict[tuple, torch.Tensor] | None = {} if background else None

    def submit(self, job: Callable[[], Any]) -> None:
        if self._pool is not None:
            self._pending.append(self._pool.submit(job))
            return
        done: Future = Future()
        try:
            done.set_result(job())
        except Exception as exc:  # held, as a background job's, for every rank to learn of at once
            done.set_exception(exc)
        self._pending.append(done)

    def failure(self, wait: bool = False) -> BaseException | None:
        """The exception of a write that failed, if any: among the writes done, or with ``wait``
        among all, once done. Writes that succeeded are forgotten."""
        if wait:
            futures.wait(self._pending)
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        return next((f.exception() for f in self._pending if f.done()), None)

    def wait(self) -> None:
        """Block until every submitted write is on disk; re-raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def copy(root: Path, source: Path, name: str, trainer_state: dict[str, Any]) -> Path:
    """The files of a complete checkpoint under a second name (hard links, or copies where the
    volume has none; same atomic rename), with ``trainer_state`` as its own trainer_state.json
    (an epoch checkpoint at the step of a step checkpoint records the closed epoch); rank 0 only."""
    with _staged(root, name) as tmp:
        shutil.copytree(source, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(STATE_FILE))
        _write_state(tmp, trainer_state)
        fsync_tree(tmp)  # copied files are new data (linked ones were on disk already)
    return _install(tmp, root / name)


@contextlib.contextmanager
def _staged(root: Path, name: str) -> Iterator[Path]:
    """The ``.tmp-<name>`` a checkpoint is written into, not yet there. A write failing on the
    volume is removed at once (on a full volume it would hold its space until the next start) and
    raised as a ``WriteError``; not so in ``_install``, where the folder may be the only complete copy."""
    tmp = root / f"{TMP_PREFIX}{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"checkpoint write to {root / name} failed: {exc.strerror or exc}") from exc


def _write_state(folder: Path, trainer_state: dict[str, Any]) -> None:
    (folder / STATE_FILE).write_text(json.dumps(trainer_state, indent=2, sort_keys=True))


def _link_or_copy(source: str, target: str) -> None:
    """A hard link costs no space or time; some volumes refuse link(2) (GCS FUSE, Azure Files over
    SMB, object-store FUSE drivers), and there a real copy takes its place."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _install(tmp: Path, final: Path) -> Path:
    """Rename the complete ``tmp`` into place and return ``final``. When the name exists (a resumed
    run saving its own step again) the older copy moves aside first and goes after, so a crash at
    any moment leaves one complete copy that the next start keeps (``finish_replacements``)."""
    replaced = final.with_name(f"{REPLACED_PREFIX}{final.name}")
    if final.exists():
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final, replaced)
        _test_pause()
    os.rename(tmp, final)
    fsync(final.parent)
    shutil.rmtree(replaced, ignore_errors=True)
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def load_training_state(path: Path, acc: Accelerated, scheduler: Any, world: distributed.World) -> dict[str, Any] | None:
    """Restore optimizer and scheduler; return this rank's saved state (RNG, data position), or None
    when the checkpoint was written by fewer ranks than this run has."""
    # Memory-mapped: under FSDP only rank 0 reads the optimizer tensors (and broadcasts them), the
    # others the scheduler.
    state = _load(path / OPTIMIZER_FILE, mmap=True)
    _load_optimizer_state(acc, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    file = path / rank_file(world.rank)
    return _load(file) if file.exists() else None


# NumPy's uint32 arrays, and nothing else of NumPy: the NumPy RNG state of rank files written before
# it was stored as a tensor. Allowed: the function arrays are pickled with (numpy._core.multiarray.
# _reconstruct, private), the array and dtype classes, and the uint32 dtype; no object dtype.
_LEGACY_GLOBALS = [np.empty(0).__reduce__()[0], np.ndarray, np.dtype, np.dtypes.UInt32DType]


def _load(file: Path, mmap: bool = False) -> Any:
    """One of our ``.pt`` files: tensors and plain Python values, refused if it holds anything else."""
    with torch.serialization.safe_globals(_LEGACY_GLOBALS):
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as exc:
            raise UnsafeFile(f"{file}: refused to load: it holds {_unsafe_global(exc)}, which no checkpoint of "
                             f"the trainer holds, and loading it could run code. Was it replaced? Delete its "
                             f"checkpoint folder to resume from an earlier one") from None


def _unsafe_global(error: pickle.UnpicklingError) -> str:
    found = re.search(r"GLOBAL (\S+)|got <class '([^']+)'>", str(error))
    return next(name for name in found.groups() if name) if found else "an object that is not a tensor"


def rng_state() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    # The keys as a tensor: a NumPy array would need NumPy's classes allowed when the file is loaded.
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _save_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None, folder: Path) -> None:
    from peft import PeftModel

    if isinstance(model, PeftModel):
        from mft_trainer.lora import save_adapter

        save_adapter(model, state_dict, folder)
    else:
        model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        _write_serving_config(folder / "config.json", state_dict)


def _write_serving_config(config_file: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Make config.json describe the written model as it is served, not the live one in training
    (edited in the file: this runs off the training thread, and the live model must keep its own).

    - dtype: the written weights' own. save_pretrained takes it from the live parameters, which
      under FSDP's bf16 mixed precision are bf16 views mid-step.
    - use_cache: true. Training turns the KV cache off; tools that read config.use_cache would
      generate without it.
    """
    dtype = next(t.dtype for t in state_dict.values() if t.is_floating_point())
    write_serving_config(config_file, dtype=str(dtype).removeprefix("torch."), use_cache=True)


def _host_copy(obj: Any, memo: dict[tuple, torch.Tensor], staging: dict[tuple, torch.Tensor]) -> Any:
    """``obj`` with every tensor copied to host memory, into the staging tensor of the same source
    when there is one; tensors that share storage (tied weights) stay shared, so ``save_pretrained``
    sees the same ties as on the live model."""
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape), obj.stride(), obj.dtype)
        if key not in memo:
            target = staging.get(key)
            if target is None:  # page-locked for a GPU source: its copy then runs at DMA speed
                target = torch.empty_like(obj, device="cpu", pin_memory=obj.is_cuda)
            memo[key] = target.copy_(obj.detach())
        return memo[key]
    if isinstance(obj, dict):
        return {k: _host_copy(v, memo, staging) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v, memo, staging) for v in obj)
    return obj


def _lora_adapter_name(model: torch.nn.Module) -> str | None:
    """The active adapter of a (wrapped) LoRA model; None for a full model."""
    from peft import PeftModel

    inner = unwrap(_fsdp_inner(model))
    return inner.active_adapter if isinstance(inner, PeftModel) else None


def _saved_entries(state_dict: dict[str, torch.Tensor], adapter_name: str | None) -> dict[str, torch.Tensor]:
    """What a checkpoint writes of ``state_dict``: all of it, or a LoRA adapter's entries only."""
    if adapter_name is None:
        return state_dict
    return {key: tensor for key, tensor in state_dict.items() if _in_adapter(key, adapter_name)}


def _in_adapter(key: str, adapter_name: str) -> bool:
    """Whether the state_dict entry ``key`` is one that ``lora.save_adapter`` writes."""
    from mft_trainer.lora import peft_name

    return peft_name(key, adapter_name) is not None


def _gathered_adapter(acc: Accelerated, adapter_name: str, world: distributed.World) -> dict[str, torch.Tensor]:
    """A LoRA adapter's tensors gathered from the FSDP shards into rank 0's host memory (collective;
    the other ranks get an empty dict), under their state_dict names.

    An adapter tensor shares its FSDP unit's flat parameter with the unit's frozen base weights, so
    each unit holding some is gathered whole, on the device and one at a time, as a forward pass
    does; units without any (the root's embeddings, unless saved with the adapter) are not gathered,
    and only the adapter's tensors are copied to the host. The parameters summoned are the
    full-precision ones, also under bf16 mixed precision. The root is initialized first, as a
    forward pass does: a save may come before any (a resumed run closing a finished epoch), and
    summoning an inner unit of an uninitialized root makes that unit a root, which breaks the next
    forward pass.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp._runtime_utils import _lazy_init

    _lazy_init(acc.model, acc.model)  # what the first forward pass does; a no-op after it
    weights: dict[str, torch.Tensor] = {}
    for unit, params in _adapter_params_by_unit(acc.model, adapter_name).items():
        with FSDP.summon_full_params(unit, recurse=False, writeback=False, rank0_only=True):
            if world.is_main:
                weights.update({name: param.detach().to("cpu", copy=True) for name, param in params.items()})
    return weights


def _adapter_params_by_unit(model: torch.nn.Module, adapter_name: str) -> dict[torch.nn.Module, dict[str, Any]]:
    """The adapter's parameters, by the FSDP unit that shards them and by state_dict name (the same
    order on every rank: the model's)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp._common_utils import clean_tensor_name  # FSDP's own state_dict names

    owner = {}
    for unit in FSDP.fsdp_modules(model):  # outer units first: an inner one claims its own parameters
        owner.update({param: unit for param in unit.parameters()})
    by_unit: dict[torch.nn.Module, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        name = clean_tensor_name(name)
        if _in_adapter(name, adapter_name):
            by_unit.setdefault(owner[param], {})[name] = param
    return by_unit


def _fsdp_inner(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return model.module if isinstance(model, FSDP) else model


def _full_state_config(acc: Accelerated):
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    # Offload from accelerator memory only: shards on the CPU are gathered into fresh host clones
    # anyway, and FSDP's offload of CPU tensors crashes the process (torch 2.13, gloo). Rank 0
    # alone holds the gathered state, and alone provides it on load: every rank holding a full
    # copy would take a node's host memory times its GPUs (Adam's state of 1.4B parameters: 11 GB).
    offload = acc.model.compute_device.type != "cpu"
    return FSDP.state_dict_type(acc.model, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
                                FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True))


def _full_state_dict(acc: Accelerated) -> dict[str, torch.Tensor]:
    """Weights gathered from the FSDP shards into host memory on rank 0 (collective)."""
    with _full_state_config(acc):
        return acc.model.state_dict()


def _optimizer_state(acc: Accelerated) -> dict[str, Any]:
    """Optimizer state gathered from the FSDP shards into rank 0's host memory (collective; the
    other ranks get an empty dict)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with _full_state_config(acc):
        return FSDP.optim_state_dict(acc.model, acc.optimizer)


def _load_optimizer_state(acc: Accelerated, state: dict[str, Any]) -> None:
    """Load a state keyed by parameter name (or by position: written before names were) into the
    optimizer, whichever strategy wrote it: FSDP maps names to its shards, data parallelism to
    positions."""
    names = _param_names(acc)
    if _keyed_by_position(state):
        state = _by_name(state, names)
    if acc.uses_fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with _full_state_config(acc):
            state = FSDP.optim_state_dict_to_load(acc.model, acc.optimizer, state)
    else:
        state = _by_position(state, names)
    acc.optimizer.load_state_dict(_with_kernels_of(acc.optimizer, state))


def _with_kernels_of(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with ``optimizer``'s choice of kernels (fused, foreach): loading replaces each param
    group with the saved one, so a checkpoint written before AdamW was fused would turn fusing off for
    the rest of the job, and for every checkpoint after it."""
    groups = [group | {key: current.get(key) for key in ("fused", "foreach")}
              for group, current in zip(state["param_groups"], optimizer.param_groups)]
    return state | {"param_groups": groups}


def _param_names(acc: Accelerated) -> list[list[str]]:
    """The names of the optimizer's parameters, group by group, in its order: the plain HF/peft
    model's names, without DDP, FSDP or activation-checkpointing wrapper prefixes, as FSDP's
    optimizer state has them."""
    from torch.distributed.fsdp._common_utils import clean_tensor_name

    names = {param: clean_tensor_name(name) for name, param in unwrap(acc.model).named_parameters()}
    return [[names[param] for param in group["params"]] for group in acc.optimizer.param_groups]


def _keyed_by_position(state: dict[str, Any]) -> bool:
    return any(isinstance(key, int) for group in state["param_groups"] for key in group["params"])


def _by_name(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """``optimizer.state_dict()`` (parameters numbered in group order) keyed by parameter name.
    The groups (decay, then no decay) come from the model's parameters in its own order, under
    every strategy, so the optimizer that wrote ``state`` numbered them as ``names`` lists them."""
    _check_group_sizes([group["params"] for group in state["param_groups"]], names)
    name_of = {key: name for group, group_names in zip(state["param_groups"], names)
               for key, name in zip(group["params"], group_names)}
    return {"state": {name_of[key]: value for key, value in state["state"].items()},
            "param_groups": [{**group, "params": group_names}
                             for group, group_names in zip(state["param_groups"], names)]}


def _by_position(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """A state keyed by parameter name as ``optimizer.state_dict()`` keys it: by position in the
    groups of the optimizer it is loaded into (whatever order the writer listed them in)."""
    saved = [group["params"] for group in state["param_groups"]]
    _check_group_sizes(saved, names)
    for saved_group, group_names in zip(saved, names):
        if set(saved_group) != set(group_names):
            raise ValueError(f"the optimizer state is for other parameters than this model's: "
                             f"{sorted(set(saved_group) ^ set(group_names))[:3]}")
    position = {name: index for index, name in enumerate(name for group in names for name in group)}
    return {"state": {position[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [position[name] for name in group_names]}
                             for group, group_names in zip(state["param_groups"], names)]}


def _check_group_sizes(saved: list[list[Any]], names: list[list[str]]) -> None:
    if [len(group) for group in saved] != [len(group) for group in names]:
        raise ValueError(f"the optimizer state has parameter groups of {[len(g) for g in saved]} parameters, "
                         f"this model's optimizer of {[len(g) for g in names]}")


def _delete(path: Path) -> None:
    """Unmark, move aside, then remove: a crash never leaves a half-deleted folder that looks complete."""
    (path / STATE_FILE).unlink(missing_ok=True)
    _test_pause()
    doomed = path.with_name(f"{TMP_PREFIX}deleting-{path.name}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _test_pause() -> None:
    delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
