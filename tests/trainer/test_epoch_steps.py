"""The steps of an epoch: every row of a rank's share once, in the sampler's order, the last step
taking the rows left."""

from types import SimpleNamespace

import numpy as np
import pytest

from mft_trainer.config import TrainerConfig, TrainingConfig
from mft_trainer.data import EpochSampler
from mft_trainer.train import TrainState, epoch_steps


class Rows:
    """Row i holds the single token i."""

    def __init__(self, sizes):
        self.task_sizes = sizes

    def __getitem__(self, i):
        one = np.array([i])
        return {"input_ids": one, "labels": one, "position_ids": one * 0, "sample_index": one * 0, "task_id": 0}


def run_over(rows, batch, accumulation, offset=0, rank=0, world=1):
    training = TrainingConfig(per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
    return SimpleNamespace(config=TrainerConfig(training=training), state=TrainState(offset=offset),
                           sampler=EpochSampler(Rows([rows]), rank, world, seed=1),
                           tokenizer=SimpleNamespace(pad_token_id=0), datasets=SimpleNamespace(train=Rows([rows])))


def trained(steps):
    return [[int(i) for batch in step for i in batch["input_ids"][:, 0]] for step in steps]


@pytest.mark.parametrize(("rows", "batch", "accumulation", "sizes"), [
    (23, 4, 2, [8, 8, 7]), (24, 4, 2, [8, 8, 8]), (5, 4, 2, [5]), (9, 2, 1, [2, 2, 2, 2, 1])])
def test_every_row_is_trained_once_and_the_last_step_takes_the_rest(rows, batch, accumulation, sizes):
    run = run_over(rows, batch, accumulation)
    steps = list(epoch_steps(run))
    assert [len(s) for s in trained(steps)] == sizes
    assert [i for s in trained(steps) for i in s] == [int(i) for i in run.sampler.rank_indices()]
    assert all(len(batch["task_ids"]) <= 4 for step in steps for batch in step)


def test_a_resumed_epoch_goes_on_from_any_offset():
    """A run resumed with another batch size (or world size) is at no step boundary of the new one."""
    whole = [i for s in trained(epoch_steps(run_over(23, 4, 2))) for i in s]
    rest = trained(epoch_steps(run_over(23, 4, 2, offset=6)))
    assert [len(s) for s in rest] == [8, 8, 1] and [i for s in rest for i in s] == whole[6:]
