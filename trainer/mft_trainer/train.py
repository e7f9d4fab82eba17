"""The training loop of ``mft-train train``: read it top to bottom.

One optimizer step consumes, on every rank, ``gradient_accumulation_steps`` micro-batches of
``per_device_train_batch_size`` rows (the last step of an epoch: the rows left). The loss of a step is the ``weighted_loss_mode`` formula applied
to that whole global batch (see ``loss.py``), so gradient accumulation and world size change nothing
but speed. Data position, RNG, optimizer, scheduler, best metric and early-stopping state all go
into every checkpoint, and a resumed run repeats an uninterrupted one step for step.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mft_trainer import checkpoint, distributed, loss, metrics, resume
from mft_trainer.accelerate import Accelerated, accelerate, clip_grad_norm, no_sync, unwrap
from mft_trainer.commands.launch import FAILURE_MARKER_ENV, PREEMPTION_MARKER_ENV
from mft_trainer.config import TrainerConfig, to_dict
from mft_trainer.model import build_model, count_parameters, model_inputs
from mft_trainer.schedule import build_scheduler, restart_schedule

log = logging.getLogger("mft_trainer")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: in the range the PyTorchJob ExitCode policy retries
# What a collective raises when the process at the other end went away: gloo's RuntimeError texts,
# and NCCL's for a remote failure (the c10d store's network and timeout errors have types of their own).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited or there was a network error")


@dataclass
class TrainState:
    """Everything beyond weights, optimizer and RNG that a resumed run needs (trainer_state.json)."""

    step: int = 0
    epoch: int = 0  # epochs completed
    offset: int = 0  # sample indices this rank consumed in the current epoch
    tokens: float = 0.0  # input tokens seen, all ranks
    skipped_steps: int = 0  # updates dropped for a non-finite loss or gradient
    best_valid_loss: float | None = None
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    last_valid_loss: float | None = None
    last_save_step: int = -1
    last_loss: float | None = None


@dataclass
class StepResult:
    loss: float
    task_loss: list[float | None]
    lr: float  # the rate this step's update used
    tokens: float
    grad_norm: float | None
    skipped: bool


@dataclass
class Run:
    """What the loop works with, built once by ``setup``."""

    config: TrainerConfig
    world: distributed.World
    tokenizer: Any
    datasets: Any
    sampler: Any
    acc: Accelerated
    scheduler: Any
    total_steps: int
    num_params: int
    writer: checkpoint.Writer
    state: TrainState = field(default_factory=TrainState)
    num_trainable: int = 0  # parameters the optimizer updates (LoRA: the adapter's)


def main(config: TrainerConfig) -> int:
    """Set up and train; the exit code. A worker that stops early tells `mft-train launch` whether
    it stopped for a preemption (of its pod, or of a peer's while the job started: retried) or
    failed by itself (not retried)."""
    preemption = Preemption(config.checkpoint.preemption_grace_seconds)  # setup takes minutes: see Preemption
    try:
        run = setup(config)
        preemption.training = True
        return train(run, preemption)
    except Exception as error:
        if _lost_peer(error) and not preemption.started:
            log.error("a peer went away before training began, taken for its pod's preemption: exiting with %d "
                      "(%s)", PREEMPTED_EXIT_CODE, error)
            _mark(PREEMPTION_MARKER_ENV)
            return PREEMPTED_EXIT_CODE
        if not (_lost_peer(error) or preemption.requested):  # not stopped from outside: a failure of its own
            _mark(FAILURE_MARKER_ENV)
        raise


def train(run: Run, preemption: Preemption) -> int:
    """The training loop, the last evaluation and save, and the summary; the exit code."""
    config = run.config
    reporter = metrics.Reporter(config.output_dir, run.world.is_main, run.total_steps)
    throughput = metrics.Throughput(_flops_per_token(run), metrics.peak_flops(config.training.bf16), run.world.size)
    t, state = config.training, run.state
    stop = _stopped_early(run)

    while stop is None:
        started = time.perf_counter()  # a step's time includes batching its rows
        for micro_batches in epoch_steps(run) if state.step < run.total_steps and state.epoch < t.epochs else ():
            result = train_step(run, micro_batches)
            throughput.add(result.tokens, time.perf_counter() - started)
            state.step += 1
            state.offset += sum(len(batch["task_ids"]) for batch in micro_batches)
            state.tokens += result.tokens
            state.skipped_steps += result.skipped
            state.last_loss = result.loss if not result.skipped else state.last_loss

            if state.step % t.log_interval == 0 or state.step == run.total_steps:
                log_step(run, reporter, result, throughput.report(run.total_steps - state.step))
            if _evaluation_due(run):
                stop = evaluate_and_track(run, reporter)
            if config.checkpoint.save_strategy == "steps" and state.step % config.checkpoint.steps == 0:
                save(run, reporter)
            agreed = _agreed_stop(run, preemption)  # on every step: a collective all ranks take part in
            stop = stop or agreed
            if stop == "preempted":
                _mark(PREEMPTION_MARKER_ENV)  # now: if a peer dies while all save, this pod still exits as preempted
            if stop or state.step >= run.total_steps:
                break
            started = time.perf_counter()
        # Also when a preempted run stopped at the last step of an epoch: its resume closes it.
        if stop != "preempted" and _epoch_done(run):
            state.epoch += 1
            state.offset = 0
            stop = end_of_epoch(run, reporter) or stop
        if state.step >= run.total_steps or state.epoch >= t.epochs:
            break

    if stop != "preempted" and _evaluates(t) and state.last_eval_step != state.step:
        evaluate_and_track(run, reporter)
    if state.last_save_step != state.step:
        save(run, reporter)
    _stop_if_a_write_failed(run, wait=True)  # every checkpoint on disk before the summary lists them
    run.writer.close()
    summarize(run, reporter, stop or ("completed" if state.epoch >= t.epochs else "max_steps"))
    reporter.close()
    distributed.barrier()
    distributed.shutdown()
    if stop == "preempted":
        log.warning("preempted: checkpoint saved at step %d, exiting with %d", state.step, PREEMPTED_EXIT_CODE)
        return PREEMPTED_EXIT_CODE
    return 0


def _stopped_early(run: Run) -> str | None:
    """A resumed run whose early stopping was already decided stays stopped (a pod restarted
    after the decision must not train on); a larger patience now lets it go on."""
    state, patience = run.state, run.config.training.early_stopping_patience
    if patience > 0 and state.evals_without_improvement >= patience:
        log.info("early stopping: decided at step %d (no improvement of the valid loss in %d evaluations)",
                 state.last_eval_step, state.evals_without_improvement)
        return "early_stop"
    return None


def _evaluation_due(run: Run) -> bool:
    """Whether this step is evaluated in the loop: every evaluation_steps, and the last step, before
    its save, so that the last checkpoint carries the final valid loss (also when it is a step or
    the last epoch's checkpoint)."""
    t, step = run.config.training, run.state.step
    return ("steps" in t.evaluation_strategy and step % t.evaluation_steps == 0) or \
        (step >= run.total_steps and _evaluates(t))


def _agreed_stop(run: Run, preemption: Preemption) -> str | None:
    """What makes every rank stop after this step, agreed on in one all-reduce (on a GPU, one host
    sync per step): a checkpoint write that failed on rank 0 (raised), or a SIGTERM that reached any
    rank ("preempted"; the signal may reach the ranks at different times)."""
    failure = run.writer.failure() if run.world.is_main else None
    flags = torch.tensor([float(preemption.requested), float(failure is not None)], device=run.world.device)
    preempted, failed = distributed.all_reduce_max(flags).tolist()
    preemption.started = True  # every rank took part: none went away during setup
    if failed:
        _raise_write_failure(failure)
    return "preempted" if preempted else None


def _stop_if_a_write_failed(run: Run, wait: bool = False) -> None:
    """Raise, on every rank at once, a checkpoint write that failed on rank 0 (with ``wait``: once
    every write is done): training on would only add work that no checkpoint keeps, and ranks that
    went on would wait for the stopped one in the next collective."""
    failure = run.writer.failure(wait) if run.world.is_main else None
    failed = distributed.all_reduce_max(torch.tensor([float(failure is not None)], device=run.world.device))
    if failed.item() > 0:
        _raise_write_failure(failure)


def _raise_write_failure(failure: BaseException | None) -> None:
    """Raise rank 0's write failure, with its message, on every rank."""
    message = distributed.broadcast_from_main(str(failure) if failure else None)
    raise checkpoint.WriteError(message) from failure


def _epoch_done(run: Run) -> bool:
    return run.state.offset >= len(run.sampler)


def _mark(marker_env: str) -> None:
    """Leave `mft-train launch` the file it names in ``marker_env``: on a pod that got no SIGTERM
    itself, torchrun reports any stop of its workers as a failure (exit 1), and the supervisor
    tells a preemption from a failure by these files (see commands/launch.py)."""
    marker = os.environ.get(marker_env)
    if marker:
        Path(marker).touch()


def _lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective's or the c10d store's on finding a peer process gone."""
    if isinstance(error, (dist.DistNetworkError, dist.DistStoreError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in PEER_GONE)


def setup(config: TrainerConfig) -> Run:
    from mft_trainer.data import EpochSampler, build_datasets, load_tokenizer

    world = distributed.init()
    _configure_logging(world)
    t = config.training
    if t.bf16 and not torch.cuda.is_available():
        log.info("training.bf16 is a GPU setting; no CUDA device here, so this run computes in fp32")
    torch.manual_seed(t.seed)  # the same on every rank: identical initial weights
    root = config.output_dir
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        for name in checkpoint.finish_replacements(root):
            log.info("installed %s, whose replacement of an older copy was interrupted", name)
        for name in checkpoint.clean_stale(root):
            log.info("removed %s left by an interrupted write", name)
        for name in checkpoint.clean_unmarked(root):
            log.info("removed %s left by an interrupted deletion (no %s)", name, checkpoint.STATE_FILE)
        if config.checkpoint.resume == "never":
            moved = checkpoint.set_aside(root, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            if moved:
                log.warning("checkpoint.resume is never: moved the checkpoints and TensorBoard logs already in %s "
                            "to %s (delete that folder to free its space)", root, moved)
    distributed.barrier()

    resume_from = checkpoint.latest(root) if config.checkpoint.resume == "auto" else None
    saved = None
    if resume_from is not None:
        saved = checkpoint.load_trainer_state(resume_from.path)
        resume.check(resume_from.path, saved.get("config"), to_dict(config))  # before data and weights load
        log.info("resuming from %s", resume_from.path)
    state = _restored_state(saved, world) if saved else TrainState()
    tokenizer = load_tokenizer(config)
    datasets = build_datasets(config, tokenizer)  # logs its own report
    _same_data_on_every_rank(datasets)
    if saved:
        resume.warn_if_data_changed(resume_from.path, saved, to_dict(config), datasets.report.shape())
    sampler = EpochSampler(datasets.train, world.rank, world.size, t.seed,
                           config.data.task_sampling, config.data.sampling_temperature)
    total_steps = state.step + _steps_left(state, len(sampler), t)
    if t.max_steps > 0:
        total_steps = min(total_steps, t.max_steps)

    model = _build(config, tokenizer, resume_from.path if resume_from else None)
    num_params = count_parameters(model)  # before FSDP shards it
    num_trainable = count_parameters(model, trainable_only=True)
    log.info("mode %s, %d parameters", config.mode, num_params)
    acc = accelerate(model, t, world)

    scheduler = build_scheduler(acc.optimizer, t, total_steps)
    _warn_if_no_checkpoint_is_evaluated(config)
    writer = checkpoint.Writer(background=config.checkpoint.async_save and world.is_main)
    run = Run(config, world, tokenizer, datasets, sampler, acc, scheduler, total_steps, num_params, writer,
              state=state, num_trainable=num_trainable)

    if resume_from is not None:
        configured_decays = _weight_decays(acc.optimizer)
        rank_state = checkpoint.load_training_state(resume_from.path, acc, scheduler, world)
        restart_schedule(scheduler, t.learning_rate)  # the configured peak, which may have changed
        _keep_weight_decays(acc.optimizer, configured_decays)  # like the learning rate
        if rank_state is not None:
            checkpoint.set_rng_state(rank_state["rng"])  # last: nothing after this may draw random numbers
    return run


def _weight_decays(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["weight_decay"] for group in optimizer.param_groups]


def _keep_weight_decays(optimizer: torch.optim.Optimizer, configured: list[float]) -> None:
    """Put back the configured weight decay of each parameter group, which the optimizer state of
    the checkpoint replaced: a run resumed with another training.weight_decay uses the new one."""
    for group, decay in zip(optimizer.param_groups, configured):
        if group["weight_decay"] != decay:
            log.info("training.weight_decay: %s in the checkpoint, %s now: the resumed run uses %s",
                     group["weight_decay"], decay, decay)
            group["weight_decay"] = decay


def _restored_state(saved: dict[str, Any], world: distributed.World) -> TrainState:
    state = TrainState(**saved["state"])
    if saved["world_size"] != world.size:
        # Same global data position, rounded down; ranks the checkpoint lacks start new RNG streams.
        state.offset = state.offset * saved["world_size"] // world.size
        fresh = f", new RNG streams for ranks {saved['world_size']} and up" if world.size > saved["world_size"] else ""
        log.warning("resuming %d-rank state with %d ranks: data position kept%s", saved["world_size"], world.size, fresh)
    return state


def _steps_left(state: TrainState, rows: int, t: Any) -> int:
    """Steps from the data position to the end of the last epoch. Counted from the position, not
    from the step: a run resumed with another batch or world size takes steps of another size."""
    if state.epoch >= t.epochs:
        return 0
    rows_per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps
    # Every row of an epoch is trained: its last step takes the rows left, fewer than a whole step.
    this_epoch = -(-max(0, rows - state.offset) // rows_per_step)
    return this_epoch + (t.epochs - state.epoch - 1) * -(-rows // rows_per_step)


def _warn_if_no_checkpoint_is_evaluated(config: TrainerConfig) -> None:
    """The best checkpoint is chosen among those saved at an evaluated step."""
    t, ck = config.training, config.checkpoint
    if ck.save_strategy == "steps" and "steps" in t.evaluation_strategy and ck.steps % t.evaluation_steps:
        log.warning("checkpoint.steps (%d) is not a multiple of training.evaluation_steps (%d): checkpoints saved "
                    "between evaluations carry no valid loss, and the best checkpoint is chosen among the others",
                    ck.steps, t.evaluation_steps)
    if ck.save_strategy == "epoch" and _evaluates(t) and "epoch" not in t.evaluation_strategy:
        log.warning("checkpoint.save_strategy is epoch but training.evaluation_strategy (%s) has no epoch: "
                    "checkpoints saved at the end of an epoch carry no valid loss unless that step is evaluated "
                    "anyway (the last one is), and the best checkpoint is chosen among the others",
                    ", ".join(t.evaluation_strategy))


def _build(config: TrainerConfig, tokenizer: Any, resume_path: Any) -> torch.nn.Module:
    if config.mode != "lora":
        return build_model(config, tokenizer, weights=resume_path)
    from mft_trainer.lora import apply_lora

    return apply_lora(build_model(config, tokenizer), config.lora, adapter=resume_path)


def epoch_steps(run: Run) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The remaining steps of the current epoch: lists of collated micro-batches.

    The order is a function of (seed, epoch) only, so starting at ``offset`` (indices consumed, which
    the loop counts itself) puts a resumed run exactly where the interrupted one stopped. The last
    step takes the rows left: the same number on every rank (the sampler pads ranks to one length),
    and the loss is normalized by the step's own target counts, so a short step weighs its tokens
    like any other.
    """
    from mft_trainer.data import collate

    t, state = run.config.training, run.state
    bs, ga = t.per_device_train_batch_size, t.gradient_accumulation_steps
    run.sampler.load_state_dict({"epoch": state.epoch, "offset": state.offset})
    indices = list(run.sampler)
    pad = _pad_id(run.tokenizer)
    for start in range(0, len(indices), bs * ga):
        step = indices[start:start + bs * ga]
        yield [collate([run.datasets.train[i] for i in step[m:m + bs]], pad) for m in range(0, len(step), bs)]


def train_step(run: Run, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
    """Forward/backward every micro-batch, then one update, or none when anything is non-finite."""
    acc, device, mode = run.acc, run.world.device, run.config.training.weighted_loss_mode
    num_tasks = len(run.datasets.tasks)
    targets = [loss.targets(b["labels"], b["task_ids"], b["sample_index"], num_tasks) for b in micro_batches]
    counts = distributed.all_reduce_sum(distributed.to_device(sum(t.counts for t in targets), device))
    acc.model.train()
    sums = torch.zeros(2, num_tasks, dtype=torch.float64, device=device)
    tokens = 0.0
    for i, (batch, batch_targets) in enumerate(zip(micro_batches, targets)):
        with no_sync(acc, last_micro_batch=i == len(micro_batches) - 1):
            logits = acc.model(**model_inputs(batch, device)).logits
            batch_sums = loss.loss_sums(logits, batch_targets.to(device))
            # Data-parallel gradients are averaged over ranks; the global loss is their sum.
            (loss.combine(batch_sums, counts, mode) * run.world.size).backward()
        sums += batch_sums.detach().double()
        tokens += float((batch["sample_index"] >= 0).sum())

    reduced = distributed.all_reduce_sum(torch.cat([sums.flatten(), torch.tensor([tokens], device=device,
                                                                                 dtype=torch.float64)]))
    sums, tokens = reduced[:-1].view(2, num_tasks), float(reduced[-1])
    step_loss = float(loss.combine(sums, counts, mode))
    task_loss = loss.per_task_loss(sums, counts)
    grad_norm, lr = None, _lr(run)
    # The reduced loss is the same on every rank (a NaN anywhere makes it NaN everywhere), and so
    # is the gradient norm, so every rank takes the same decision without another collective.
    no_targets = float(counts[0].sum()) == 0
    skipped = no_targets or not math.isfinite(step_loss)
    if not skipped:
        grad_norm = float(clip_grad_norm(acc, run.config.training.max_grad_norm))
        skipped = not math.isfinite(grad_norm)
    if no_targets:
        log.warning("step %d: no target tokens in the global batch, update skipped", run.state.step + 1)
    elif skipped:
        log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s), update skipped",
                    run.state.step + 1, step_loss, grad_norm)
    else:
        acc.optimizer.step()
    run.scheduler.step()  # the schedule follows steps, taken or skipped
    acc.optimizer.zero_grad(set_to_none=True)
    return StepResult(step_loss, task_loss, lr, tokens, grad_norm, skipped)


@torch.no_grad()
def evaluate(run: Run) -> tuple[float | None, list[float | None]]:
    """Valid loss (the training formula over the whole valid set, as one batch) and per-task losses.

    Rank r takes positions r, r+W, ... of ``validation_order``, which interleaves the tasks, so that
    ``max_valid_batches`` keeps a sample of every task, the same at each evaluation. Every rank runs
    the same number of forward passes (FSDP needs that), padding its last batches with label-free
    copies of a row.
    """
    from mft_trainer.data import collate, validation_order

    t, valid, world = run.config.training, run.datasets.valid, run.world
    num_tasks, bs = len(run.datasets.tasks), t.per_device_valid_batch_size
    if len(valid) == 0:
        return None, [None] * num_tasks
    mine = [int(i) for i in validation_order(valid.task_sizes, t.seed)[world.rank::world.size]]
    batches = math.ceil(math.ceil(len(valid) / world.size) / bs)
    if t.max_valid_batches > 0:
        batches = min(batches, t.max_valid_batches)
    acc, device = run.acc, world.device
    acc.model.eval()
    stats = torch.zeros(4, num_tasks, dtype=torch.float64, device=device)
    for b in range(batches):
        chosen = mine[b * bs:(b + 1) * bs]
        rows = [valid[i] for i in chosen] + [_without_targets(valid[(mine or [0])[0]])] * (bs - len(chosen))
        batch = collate(rows, _pad_id(run.tokenizer))
        batch_targets = loss.targets(batch["labels"], batch["task_ids"], batch["sample_index"], num_tasks)
        logits = acc.model(**model_inputs(batch, device)).logits
        stats[:2] += loss.loss_sums(logits, batch_targets.to(device)).double()
        stats[2:] += distributed.to_device(batch_targets.counts, device)
    acc.model.train()
    stats = distributed.all_reduce_sum(stats)
    sums, counts = stats[:2], stats[2:]
    if counts[0].sum() == 0:
        return None, [None] * num_tasks
    return float(loss.combine(sums, counts, t.weighted_loss_mode)), loss.per_task_loss(sums, counts)


def evaluate_and_track(run: Run, reporter: metrics.Reporter) -> str | None:
    """Evaluate, update best metric and patience; return "early_stop" when patience runs out before the
    last step."""
    state, patience = run.state, run.config.training.early_stopping_patience
    valid_loss, task_loss = evaluate(run)
    if valid_loss is not None and not math.isfinite(valid_loss):
        # NaN would become the best (it compares false) and stop every later loss from improving on it.
        log.warning("step %d: non-finite valid loss (%s): no score, neither a best checkpoint nor an evaluation "
                    "without improvement", state.step, valid_loss)
        valid_loss = None
    state.last_eval_step, state.last_valid_loss = state.step, valid_loss
    if valid_loss is None:
        return None
    if state.best_valid_loss is None or valid_loss < state.best_valid_loss:
        state.best_valid_loss, state.evals_without_improvement = valid_loss, 0
    else:
        state.evals_without_improvement += 1
    reporter.progress(step=state.step, epoch=_epoch(run), loss=state.last_loss, valid_loss=valid_loss,
                      lr=_lr(run), throughput={})
    reporter.scalars(state.step, {"valid/loss": valid_loss,
                                  **_per_task("valid/loss", run.datasets.tasks, task_loss)})
    if patience > 0 and state.evals_without_improvement >= patience:
        log.info("early stopping: no improvement of the valid loss in %d evaluations", patience)
        # At the last step training ends anyway: it completed, it did not stop early.
        return "early_stop" if state.step < run.total_steps else None
    return None


def end_of_epoch(run: Run, reporter: metrics.Reporter) -> str | None:
    t, ck, state = run.config.training, run.config.checkpoint, run.state
    # The end of training is evaluated before this save, so that the last checkpoint carries the
    # final valid loss and can be the best: here when no step ran first (a resumed run closing a
    # finished epoch), else the loop evaluated the last step.
    last = state.epoch >= t.epochs or state.step >= run.total_steps
    # Not twice at one step: a repeated result would count as an evaluation without improvement.
    evaluates = ("epoch" in t.evaluation_strategy or (last and _evaluates(t))) and state.last_eval_step != state.step
    stop = evaluate_and_track(run, reporter) if evaluates else None
    if ck.save_strategy == "epoch":
        save(run, reporter)
    if ck.extra_save_by_epoch:
        save(run, reporter, epoch=state.epoch)
    return stop


def save(run: Run, reporter: metrics.Reporter, epoch: int | None = None) -> Path:
    """Checkpoint the current step, then rotate. An epoch checkpoint at the step of one just saved
    hard-links that one's files instead (all but trainer_state.json: its own records the closed epoch).

    The loop waits for the in-memory snapshot only; the writer puts it on disk in the background.
    A new snapshot first waits for the previous write, so at most one copy is held at a time.
    """
    state, world = run.state, run.world
    root, name = run.config.output_dir, checkpoint.name_for(state.step, epoch)
    trainer_state = _trainer_state(run)
    if epoch is not None and state.last_save_step == state.step:
        write = partial(checkpoint.copy, root, root / checkpoint.name_for(state.step), name, trainer_state)
    else:
        _stop_if_a_write_failed(run, wait=True)  # and the staging memory is free for this snapshot
        rank_state = {"sampler": {"epoch": state.epoch, "offset": state.offset}}
        snap = checkpoint.snapshot(run.acc, run.scheduler, rank_state, world, run.writer.staging)
        write = partial(checkpoint.persist, root, name, snap, model=run.acc.model, tokenizer=run.tokenizer,
                        trainer_state=trainer_state)
    state.last_save_step = state.step
    if world.is_main:
        run.writer.submit(partial(_write_and_rotate, write, run, reporter, name))
    return root / name


def _trainer_state(run: Run) -> dict[str, Any]:
    """The trainer_state.json of a checkpoint of the current step."""
    state = run.state
    valid_loss = state.last_valid_loss if state.last_eval_step == state.step else None
    return {"state": asdict(state) | {"last_save_step": state.step}, "valid_loss": valid_loss,
            "world_size": run.world.size, "mode": run.config.mode, "config": to_dict(run.config),
            "data_shape": run.datasets.report.shape()}


def _same_data_on_every_rank(datasets: Any) -> None:
    """Every rank reads the data on its own. Files changing while the job starts (still being copied,
    appended to) would give ranks other rows, and the rank that runs out first would leave the others
    waiting in a collective until its timeout, without a word about the data."""
    from mft_trainer.data import DataError
    from mft_trainer.data.report import first_rank_with_other_data

    other = first_rank_with_other_data(distributed.all_gather(datasets.report.shape()))
    if other:
        raise DataError(f"data.paths: the ranks read different data ({other}): were files changing while the job "
                        f"started? Start it again once they are complete")


def _write_and_rotate(write: Any, run: Run, reporter: metrics.Reporter, name: str) -> None:
    root = run.config.output_dir
    started = time.perf_counter()
    write()
    log.info("saved %s in %.2fs", name, time.perf_counter() - started)
    for removed in checkpoint.rotate(root, run.config.checkpoint.save_total_limit):
        log.info("rotated out %s", removed)
    latest, best = checkpoint.latest(root), checkpoint.best(root)
    reporter.checkpoint(name=name, latest=latest.name if latest else None, best=best.name if best else None,
                        best_valid_loss=best.valid_loss if best else None)


def log_step(run: Run, reporter: metrics.Reporter, result: StepResult, throughput: dict[str, Any]) -> None:
    state = run.state
    reporter.progress(step=state.step, epoch=_epoch(run), loss=result.loss, valid_loss=state.last_valid_loss,
                      lr=result.lr, throughput=throughput)
    reporter.scalars(state.step, {"train/loss": result.loss, "train/lr": result.lr,
                                  "train/grad_norm": result.grad_norm, "train/skipped_steps": state.skipped_steps,
                                  "train/tokens_per_second": throughput["tokens_per_second"],
                                  "train/mfu": throughput["mfu"],
                                  **_per_task("train/loss", run.datasets.tasks, result.task_loss)})


def summarize(run: Run, reporter: metrics.Reporter, stop: str) -> None:
    if not run.world.is_main:
        return
    root, state = run.config.output_dir, run.state
    latest, best = checkpoint.latest(root), checkpoint.best(root)
    reporter.summary(steps=state.step, total_steps=run.total_steps, epoch=_epoch(run), final_loss=state.last_loss,
                     final_valid_loss=state.last_valid_loss, best_valid_loss=state.best_valid_loss,
                     stopped_by=stop, skipped_steps=state.skipped_steps, tokens=state.tokens,
                     checkpoints=[c.name for c in checkpoint.complete(root)],
                     latest=latest.name if latest else None, best=best.name if best else None,
                     data=run.datasets.report.to_dict())


class Preemption:
    """SIGTERM handling, from the worker's start.

    During setup (rendezvous, tokenizing every task, model load, wrapping: minutes on a large corpus)
    there is nothing new to save, so SIGTERM ends the worker at once, with exit code 143. Once
    ``training``, it asks for a checkpoint at the end of the current step, then exit 143: torchrun
    forwards SIGTERM to every worker, and the request is agreed on by all ranks (max all-reduce), so
    they stop at the same step even if the signal reached them at different times. If the worker
    has not stopped within the grace period, a watchdog exits anyway with the retryable code.

    ``started`` is set once every rank has agreed on a first step. Until then a peer that goes away
    is taken for one preempted during setup, and this worker exits as preempted too (``main``). Had
    the peer failed instead, its own pod exits with its failure, which fails the job all the same.
    """

    def __init__(self, grace_seconds: int):
        self.grace_seconds = grace_seconds
        self.requested = False
        self.training = False
        self.started = False
        self._pid = os.getpid()
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked tokenizer process inherited it: end as SIGTERM would without one
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        if not self.training:
            log.warning("SIGTERM before training began: nothing to save yet, exiting with %d", PREEMPTED_EXIT_CODE)
            _exit_during_setup()
        if self.requested:
            return
        self.requested = True
        log.warning("SIGTERM: saving a checkpoint after this step (grace %ds)", self.grace_seconds)
        watchdog = threading.Timer(self.grace_seconds, os._exit, args=(PREEMPTED_EXIT_CODE,))
        watchdog.daemon = True
        watchdog.start()


def _exit_during_setup() -> None:
    """End the worker now, with its tokenizer processes: forked, they hold its sockets open, so a
    peer would wait in its collective until they end instead of finding this worker gone. Not by
    raising an exception, which an at-fork hook or a finalizer would only print; what setup writes
    (rank 0's clean-up of interrupted saves) is safe to end at any moment."""
    for child in multiprocessing.active_children():
        child.terminate()
    if os.getpgrp() == os.getpid():  # torchrun's workers lead their group: it has a child forked this instant too
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # else the handler would run again, on its own signal
        os.killpg(os.getpid(), signal.SIGTERM)
    os._exit(PREEMPTED_EXIT_CODE)


def _without_targets(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "labels": row["labels"] * 0 + loss.IGNORE_INDEX}


def _evaluates(t: Any) -> bool:
    return any(s in t.evaluation_strategy for s in ("steps", "epoch"))


def _epoch(run: Run) -> float:
    return run.state.epoch + run.state.offset / len(run.sampler)


def _lr(run: Run) -> float:
    return float(run.acc.optimizer.param_groups[0]["lr"])


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _per_task(prefix: str, tasks: list[str], values: list[float | None]) -> dict[str, float | None]:
    return {f"{prefix}/{task}": value for task, value in zip(tasks, values)}


def _flops_per_token(run: Run) -> float:
    cfg = unwrap(run.acc.model).config
    return metrics.flops_per_token(run.num_params, run.num_trainable, cfg.num_hidden_layers, cfg.hidden_size,
                                   run.config.training.seq_length)


def _configure_logging(world: distributed.World) -> None:
    logging.basicConfig(level=logging.INFO if world.is_main else logging.WARNING,
                        format=f"%(asctime)s rank{world.rank} %(levelname)s %(name)s: %(message)s")
