"""EpochSampler: which rows each rank reads, epoch by epoch, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mft_trainer.data.rows import RowDataset

TASK_SAMPLING = ("proportional", "uniform", "temperature")
VALIDATION_STREAM = 0x7A11D  # validation_order's random stream, apart from the epochs' [seed, epoch]


class EpochSampler:
    """Deterministic distributed sampler.

    An epoch is a global order of len(dataset) row indices that depends only on (seed, epoch), never on
    the number of ranks. Rank r reads positions r, r + W, r + 2W, ... of that order (W = world_size),
    after the order is padded by repetition to a multiple of W, as torch's DistributedSampler does, so
    every rank runs the same number of steps and collectives never wait for a rank that ran out. After
    k indices per rank, exactly the first k*W positions of the order have been read; that is what makes
    resuming exact, even with another world size (up to the rounding of k*W / W').

    Task sampling decides the order:
      proportional  a shuffle of all tasks' rows together: each row once per epoch (the reference's mix)
      uniform       each position draws a task with equal probability
      temperature   each position draws task t with probability proportional to rows_t ** (1 / temperature)
    With uniform and temperature, a task's rows are read in shuffled cycles: a small task repeats, a
    large one is cut short; the epoch length stays the number of rows.

    `offset` counts the indices this rank has yielded. A DataLoader with workers fetches indices ahead
    of the batches it returns; a loop that checkpoints mid-epoch should then save the number of samples it
    has actually consumed as the offset.
    """

    def __init__(
        self,
        dataset: RowDataset,
        rank: int,
        world_size: int,
        seed: int,
        task_sampling: str = "proportional",
        temperature: float = 1.0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({world_size}), found {rank}")
        if task_sampling not in TASK_SAMPLING:
            raise ValueError(f"task_sampling: expected one of {', '.join(TASK_SAMPLING)}, found {task_sampling!r}")
        if temperature <= 0:
            raise ValueError(f"temperature: expected a number > 0, found {temperature}")
        self.task_sizes = np.asarray(dataset.task_sizes, dtype=np.int64)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.task_sampling, self.temperature = task_sampling, temperature
        self.epoch, self.offset = 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning, unless it is the epoch a restored state is in the middle of."""
        if epoch != self.epoch:
            self.epoch, self.offset = epoch, 0

    def __len__(self) -> int:
        return -(-int(self.task_sizes.sum()) // self.world_size)

    def __iter__(self) -> Iterator[int]:
        indices = self.rank_indices()
        while self.offset < len(indices):
            index = int(indices[self.offset])
            self.offset += 1
            yield index

    def rank_indices(self) -> np.ndarray:
        """This rank's whole share of the current epoch, from its start."""
        padded = np.resize(self.epoch_order(), len(self) * self.world_size)
        return padded[self.rank :: self.world_size]

    def epoch_order(self) -> np.ndarray:
        """The global order of the current epoch (all ranks together)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = int(self.task_sizes.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        if self.task_sampling == "proportional":
            return rng.permutation(total)
        task_starts = np.cumsum(self.task_sizes) - self.task_sizes
        drawn = rng.choice(len(self.task_sizes), size=total, p=self.task_probabilities())
        order = np.empty(total, dtype=np.int64)
        for task, size in enumerate(self.task_sizes):
            positions = np.flatnonzero(drawn == task)
            cycles = -(-len(positions) // size) if size else 0
            rows = np.concatenate([rng.permutation(size) for _ in range(cycles)] or [np.empty(0, np.int64)])
            order[positions] = task_starts[task] + rows[: len(positions)]
        return order

    def task_probabilities(self) -> np.ndarray:
        present = self.task_sizes > 0
        if self.task_sampling == "uniform":
            weights = present.astype(np.float64)
        elif self.task_sampling == "temperature":
            # size ** (1/T) in log space, relative to the largest task: with a small T the powers
            # themselves overflow (2000 ** 100 is inf in float64) and the probabilities become NaN.
            # An empty task counts as size 1 here (log 0), which never exceeds a present task's log.
            logs = np.log(np.maximum(self.task_sizes, 1).astype(np.float64)) / self.temperature
            weights = np.where(present, np.exp(logs - logs.max()), 0.0)
        else:
            weights = self.task_sizes.astype(np.float64)
        return weights / weights.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` stopped; a state saved with another world size resumes at the same
        global position, rounded down (a few rows may be read twice, none skipped)."""
        saved_world_size = state.get("world_size", self.world_size)
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"]) * saved_world_size // self.world_size


def validation_order(task_sizes: list[int], seed: int) -> np.ndarray:
    """A fixed order of the valid rows (tasks back to back, as in a RowDataset) that interleaves the
    tasks: the first row of every task, then each task at its share of the rows (row k of a task of
    n rows at k / n), each task's rows shuffled by ``seed``.

    Any prefix of it is then a stratified sample: a capped evaluation (``max_valid_batches``) sees
    every task once it reads as many rows as there are tasks, each task in its proportion, the same
    rows at every evaluation, and a nested set on another number of ranks.
    """
    rng = np.random.default_rng([seed, VALIDATION_STREAM])
    sizes = np.asarray(task_sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    rows = np.concatenate([start + rng.permutation(size) for start, size in zip(starts, sizes)])
    shares = np.concatenate([np.arange(size) / size for size in sizes])
    return rows[np.argsort(shares, kind="stable")]  # equal shares: the tasks in their order
