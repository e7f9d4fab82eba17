"""Rows: what one element of a training batch holds, built on demand from document ranges.

Labels are already shifted: labels[t] is the target of position t, i.e. the next token when that token
is trained on, else -100; the last position of every sample is -100, so nothing is predicted across
samples. position_ids restart at 0 in every sample and sample_index numbers the samples in a row, so
the model can keep attention inside each sample.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from mft_trainer.data.documents import TaskDocuments
from mft_trainer.data.packing import window_count

IGNORE = -100
Row = dict[str, Any]  # input_ids, labels, position_ids, sample_index: int64[n]; task_id: int


class DocumentView:
    """Some documents of one task (one split), after the over-long policy, seen as one token stream."""

    def __init__(self, documents: TaskDocuments, ids: np.ndarray, lengths: np.ndarray):
        """`lengths`: tokens of each document, possibly fewer than stored (truncation)."""
        self.documents = documents
        self.ids = ids  # document ids in `documents`, in stream order
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # stream position of each, + end

    @property
    def total_tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and loss mask of stream positions [start, stop): one slice per document touched."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop, side="left"))
        offsets, tokens, mask = self.documents.offsets, self.documents.tokens, self.documents.loss_mask
        token_parts, mask_parts = [], []
        for k in range(first, last):
            base = int(offsets[self.ids[k]]) - int(self.starts[k])
            lo, hi = base + max(start, int(self.starts[k])), base + min(stop, int(self.starts[k + 1]))
            token_parts.append(tokens[lo:hi])
            mask_parts.append(mask[lo:hi])
            self.documents.check(int(self.ids[k]), token_parts[-1], mask_parts[-1])
        return np.concatenate(token_parts).astype(np.int64), np.concatenate(mask_parts)


class TaskRows(Protocol):
    def __len__(self) -> int: ...
    def row(self, index: int) -> Row: ...
    def row_lengths(self) -> np.ndarray: ...


class SampleRows:
    """`pack` and `padding` rows: row r holds whole documents bounds[r] .. bounds[r+1]-1 of the view."""

    def __init__(self, view: DocumentView, bounds: np.ndarray):
        self.view = view
        self.bounds = bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def row(self, index: int) -> Row:
        first, last = int(self.bounds[index]), int(self.bounds[index + 1])
        starts = self.view.starts[first : last + 1]
        ids, mask = self.view.read(int(starts[0]), int(starts[-1]))
        return samples_row(ids, mask, np.diff(starts))

    def row_lengths(self) -> np.ndarray:
        return np.diff(self.view.starts[self.bounds])


class WindowRows:
    """`concat` rows: the task's stream cut into windows of seq_length inputs plus one target beyond."""

    def __init__(self, view: DocumentView, seq_length: int):
        self.view = view
        self.seq_length = seq_length

    def __len__(self) -> int:
        return window_count(self.view.total_tokens, self.seq_length)

    def row(self, index: int) -> Row:
        start = index * self.seq_length
        ids, mask = self.view.read(start, min(start + self.seq_length + 1, self.view.total_tokens))
        return window_row(ids, mask)

    def row_lengths(self) -> np.ndarray:
        starts = np.arange(len(self), dtype=np.int64) * self.seq_length
        return np.minimum(self.seq_length, self.view.total_tokens - 1 - starts)


def samples_row(ids: np.ndarray, mask: np.ndarray, sample_lengths: np.ndarray) -> Row:
    sample_lengths = np.asarray(sample_lengths, dtype=np.int64)
    sample_starts = np.cumsum(sample_lengths) - sample_lengths
    labels = shifted_labels(ids, mask)
    labels[sample_starts + sample_lengths - 1] = IGNORE
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": np.arange(len(ids), dtype=np.int64) - np.repeat(sample_starts, sample_lengths),
        "sample_index": np.repeat(np.arange(len(sample_lengths), dtype=np.int64), sample_lengths),
    }


def window_row(ids: np.ndarray, mask: np.ndarray) -> Row:
    """A window of n + 1 stream tokens: n inputs, each one's target the next token."""
    n = len(ids) - 1
    return {
        "input_ids": ids[:n],
        "labels": shifted_labels(ids, mask)[:n],
        "position_ids": np.arange(n, dtype=np.int64),
        "sample_index": np.zeros(n, dtype=np.int64),
    }


def shifted_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    labels[:-1] = np.where(mask[1:] == 1, ids[1:], IGNORE)
    return labels


class RowDataset:
    """Map-style dataset over the rows of all tasks of one split; rows of task t come before task t+1's."""

    def __init__(self, parts: list[TaskRows]):
        self.parts = parts
        self.task_sizes = [len(part) for part in parts]
        self._ends = np.cumsum(self.task_sizes, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def task_of(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return int(np.searchsorted(self._ends, index, side="right"))

    def __getitem__(self, index: int) -> Row:
        task = self.task_of(index)
        row = self.parts[task].row(index - int(self._ends[task]) + self.task_sizes[task])
        row["task_id"] = task
        return row

    def row_lengths(self) -> np.ndarray:
        """Tokens of every row, without reading any token."""
        return np.concatenate([part.row_lengths() for part in self.parts] or [np.empty(0, np.int64)])
