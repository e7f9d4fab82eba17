"""evaluate: a capped evaluation (``max_valid_batches``) samples every task, the same rows each time."""

from types import SimpleNamespace

import pytest
import torch

from mft_trainer import distributed
from mft_trainer.accelerate import Accelerated
from mft_trainer.config import DataConfig, ModelConfig, TrainerConfig, TrainingConfig
from mft_trainer.data import build_datasets
from mft_trainer.train import evaluate

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

