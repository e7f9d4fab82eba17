"""collate: dynamic right padding with the documented pad values."""

from functools import partial

import numpy as np
import torch
from data_fixtures import EXAMPLES, make_config
from mft_trainer.data import EpochSampler, build_datasets, collate
from mft_trainer.data.rows import samples_row
from torch.utils.data import DataLoader


def test_pads_to_the_longest_row():
    short = samples_row(np.array([5, 6]), np.array([0, 1]), [2]) | {"task_id": 1}
    long = samples_row(np.array([7, 8, 9, 10]), np.array([0, 1, 0, 1]), [2, 2]) | {"task_id": 0}
    batch = collate([short, long], pad_token_id=99)
    assert batch["input_ids"].tolist() == [[5, 6, 99, 99], [7, 8, 9, 10]]
    assert batch["labels"].tolist() == [[6, -100, -100, -100], [8, -100, 10, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0], [0, 1, 0, 1]]
    assert batch["sample_index"].tolist() == [[0, 0, -1, -1], [0, 0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["task_ids"].tolist() == [1, 0]
    assert all(t.dtype == torch.long for t in batch.values())


def test_with_a_data_loader(tiny_dir, tiny_tokenizer):
    datasets = build_datasets(make_config(tiny_dir, [EXAMPLES / "code-exam"], seq_length=128), tiny_tokenizer)
    sampler = EpochSampler(datasets.train, rank=0, world_size=2, seed=0)
    loader = DataLoader(
        datasets.train,
        batch_size=4,
        sampler=sampler,
        collate_fn=partial(collate, pad_token_id=tiny_tokenizer.pad_token_id),
    )
    batches = list(loader)
    assert len(batches) == -(-len(sampler) // 4)
    assert all(b["input_ids"].shape[1] <= 128 and (b["task_ids"] == 0).all() for b in batches)
    assert sampler.state_dict()["offset"] == len(sampler)
