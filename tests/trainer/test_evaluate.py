"""evaluate: a capped evaluation (``max_valid_batches``) samples every task, the same rows each time;
evaluate_and_track: what a valid loss counts for."""

import math
from types import SimpleNamespace

import pytest
import torch

from mft_trainer import distributed, train
from mft_trainer.accelerate import Accelerated
from mft_trainer.config import DataConfig, ModelConfig, TrainerConfig, TrainingConfig
from mft_trainer.data import build_datasets
from mft_trainer.train import TrainState, evaluate, evaluate_and_track

from tests.training_processes import REPO, TOKENIZER

from .conftest import tiny_model

TASKS = [REPO / "examples" / "data" / task for task in ("code-exam", "code-helper", "code-text")]


@pytest.fixture(scope="module")
def valid_run(tokenizer):
    """Three tasks of 8, 8 and 5 valid rows (one document each), laid out task after task."""
    config = TrainerConfig(model=ModelConfig(tokenizer_path=str(TOKENIZER)),
                           data=DataConfig(paths=[str(p) for p in TASKS], padding_mode="padding"),
                           training=TrainingConfig(seq_length=256))
    datasets = build_datasets(config, tokenizer)
    assert datasets.valid.task_sizes == [8, 8, 5]
    model = tiny_model(len(tokenizer))
    world = distributed.World(rank=0, local_rank=0, size=1, device=torch.device("cpu"))
    return SimpleNamespace(config=config, datasets=datasets, world=world, tokenizer=tokenizer,
                           acc=Accelerated(model=model, optimizer=None, strategy=[]))


def capped(run, batches: int, batch_size: int) -> SimpleNamespace:
    training = TrainingConfig(seq_length=256, per_device_valid_batch_size=batch_size, max_valid_batches=batches)
    return SimpleNamespace(**vars(run) | {"config": SimpleNamespace(training=training)})


def test_a_capped_evaluation_covers_every_task_with_the_same_rows_each_time(valid_run):
    loss, task_loss = evaluate(capped(valid_run, batches=2, batch_size=2))  # 4 of 21 rows
    assert loss is not None and all(value is not None for value in task_loss), task_loss
    assert evaluate(capped(valid_run, batches=2, batch_size=2)) == (loss, task_loss)



def test_a_non_finite_valid_loss_is_no_score_for_best_or_early_stopping(monkeypatch):
    # NaN compares false: as the first score it would stay the best, and patience would run out behind it.
    training = TrainingConfig(early_stopping_patience=1)
    run = SimpleNamespace(state=TrainState(), config=SimpleNamespace(training=training),
                          datasets=SimpleNamespace(tasks=["a", "b", "c"]), sampler=range(8),
                          acc=SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"lr": 0.1}])))
    reporter = SimpleNamespace(progress=lambda **kwargs: None, scalars=lambda step, values: None)
    stops = []
    for step, valid_loss in ((1, math.nan), (2, 2.0), (3, math.inf), (4, 1.5)):
        monkeypatch.setattr(train, "evaluate", lambda run, loss=valid_loss: (loss, [loss] * 3))
        run.state.step = step
        stops.append(evaluate_and_track(run, reporter))
        if not math.isfinite(valid_loss):
            assert run.state.last_valid_loss is None  # what a checkpoint of this step records
    assert stops == [None] * 4
    assert (run.state.best_valid_loss, run.state.evals_without_improvement) == (1.5, 0)
