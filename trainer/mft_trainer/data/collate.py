"""collate: rows -> a batch padded to its longest row."""

from __future__ import annotations

import numpy as np
import torch

from mft_trainer.data.rows import IGNORE, Row

# Value of each per-token field on padding positions.
PAD_VALUES = {"labels": IGNORE, "position_ids": 0, "sample_index": -1}


def collate(rows: list[Row], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels, position_ids, sample_index, attention_mask: [batch, longest row], right-padded
    (pad id, -100, 0, -1, 0); task_ids: [batch]."""
    width = max(len(row["input_ids"]) for row in rows)
    pad_values = {"input_ids": pad_token_id, **PAD_VALUES}
    batch = {name: np.full((len(rows), width), value, dtype=np.int64) for name, value in pad_values.items()}
    batch["attention_mask"] = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        for name in pad_values:
            batch[name][i, :n] = row[name]
        batch["attention_mask"][i, :n] = 1
    tensors = {name: torch.from_numpy(array) for name, array in batch.items()}
    tensors["task_ids"] = torch.tensor([row["task_id"] for row in rows], dtype=torch.long)
    return tensors
