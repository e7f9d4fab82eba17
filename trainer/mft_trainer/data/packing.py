"""Which documents share a row, computed from the document lengths alone (vectorised numpy, no token reads)."""

from __future__ import annotations

import numpy as np


def pack_greedy(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Next-fit packing of whole documents in order, as the reference does, but every document is
    placed (the last, partly filled row too).

    Returns row boundaries `b` (int64, rows + 1 entries): row r holds documents b[r] .. b[r+1]-1.
    """
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"a document of {int(lengths.max())} tokens does not fit in a row of {capacity}")
    ends = np.cumsum(lengths)
    # For each document: one past the last document of a row that starts with it.
    row_end = np.searchsorted(ends, ends - lengths + capacity, side="right")
    bounds = [0]
    while bounds[-1] < len(lengths):  # one step per row, not per document
        bounds.append(int(row_end[bounds[-1]]))
    return np.asarray(bounds, dtype=np.int64)


def one_per_row(count: int) -> np.ndarray:
    """Row boundaries of `padding` mode: each document alone in its row."""
    return np.arange(count + 1, dtype=np.int64)


def window_count(total_tokens: int, seq_length: int) -> int:
    """Rows of a `concat` stream: window k holds inputs [k*S, k*S + S) and targets one token further,
    so every token but the first is a target exactly once."""
    return -(-(total_tokens - 1) // seq_length) if total_tokens > 1 else 0
