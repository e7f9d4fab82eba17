"""Rows from documents: hand-computed cases and properties of pack, padding and concat."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mft_trainer.data.builder import make_rows
from mft_trainer.data.documents import TaskDocuments
from mft_trainer.data.packing import pack_greedy, window_count
from mft_trainer.data.rows import IGNORE, DocumentView, RowDataset


def documents(docs: list[tuple[list[int], list[int]]]) -> TaskDocuments:
    """In-memory TaskDocuments from (ids, mask) pairs."""
    lengths = [len(ids) for ids, _ in docs]
    return TaskDocuments(
        "t",
        np.array([i for ids, _ in docs for i in ids], dtype=np.int32),
        np.array([m for _, mask in docs for m in mask], dtype=np.uint8),
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        [],
        np.array([len(docs)], dtype=np.int64),
    )


def rows_of(docs, padding_mode, seq_length, lengths=None):
    task = documents(docs)
    lengths = task.lengths if lengths is None else np.asarray(lengths)
    part = make_rows(DocumentView(task, np.arange(len(task)), lengths), padding_mode, seq_length)
    return [part.row(i) for i in range(len(part))], part


def test_next_fit_boundaries():
    assert pack_greedy(np.array([3, 4, 5, 2, 6]), 8).tolist() == [0, 2, 4, 5]
    assert pack_greedy(np.array([4, 4, 4]), 8).tolist() == [0, 2, 3]
    assert pack_greedy(np.array([], dtype=np.int64), 8).tolist() == [0]
    with pytest.raises(ValueError, match="a document of 9 tokens does not fit in a row of 8"):
        pack_greedy(np.array([9]), 8)


def test_window_count():
    assert [window_count(t, 4) for t in (0, 1, 2, 5, 9, 10)] == [0, 0, 1, 1, 2, 3]


def test_packed_row_by_hand():
    (row,), _ = rows_of([([10, 11, 12], [0, 1, 1]), ([20, 21], [0, 1])], "pack", 8)
    assert row["input_ids"].tolist() == [10, 11, 12, 20, 21]
    assert row["labels"].tolist() == [11, 12, IGNORE, 21, IGNORE]
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1]
    assert row["sample_index"].tolist() == [0, 0, 0, 1, 1]


def test_last_buffer_is_emitted():
    rows, _ = rows_of([([1] * 5, [1] * 5), ([2] * 5, [1] * 5), ([3] * 2, [1] * 2)], "pack", 8)
    assert [r["input_ids"].tolist() for r in rows] == [[1] * 5, [2] * 5 + [3] * 2]


def test_padding_rows_hold_one_document():
    rows, _ = rows_of([([10, 11], [0, 1]), ([20, 21, 22], [1, 1, 1])], "padding", 8)
    assert [r["input_ids"].tolist() for r in rows] == [[10, 11], [20, 21, 22]]
    assert rows[1]["labels"].tolist() == [21, 22, IGNORE]


def test_truncated_lengths_cut_documents():
    rows, _ = rows_of([([10, 11, 12, 13], [0, 1, 1, 1]), ([20, 21], [0, 1])], "pack", 3, lengths=[3, 2])
    assert [r["input_ids"].tolist() for r in rows] == [[10, 11, 12], [20, 21]]
    assert rows[0]["labels"].tolist() == [11, 12, IGNORE]


def test_concat_windows_by_hand():
    rows, part = rows_of([([1, 2, 3], [1, 1, 1]), ([4, 5], [1, 1])], "concat", 2)
    assert [r["input_ids"].tolist() for r in rows] == [[1, 2], [3, 4]]
    assert [r["labels"].tolist() for r in rows] == [[2, 3], [4, 5]]
    assert [r["position_ids"].tolist() for r in rows] == [[0, 1], [0, 1]]
    assert [r["sample_index"].tolist() for r in rows] == [[0, 0], [0, 0]]
    assert part.row_lengths().tolist() == [2, 2]


def test_concat_never_mixes_tasks():
    task_a = rows_of([([1, 2, 3], [1, 1, 1])], "concat", 2)[1]
    task_b = rows_of([([7, 8, 9, 10], [1, 1, 1, 1])], "concat", 2)[1]
    dataset = RowDataset([task_a, task_b])
    rows = [dataset[i] for i in range(len(dataset))]
    assert [(r["task_id"], r["input_ids"].tolist(), r["labels"].tolist()) for r in rows] == [
        (0, [1, 2], [2, 3]),
        (1, [7, 8], [8, 9]),
        (1, [9], [10]),
    ]


document = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(2, 99), min_size=n, max_size=n), st.lists(st.integers(0, 1), min_size=n, max_size=n)
    )
)


@settings(max_examples=150, deadline=None)
@given(
    docs=st.lists(document, min_size=1, max_size=25),
    seq_length=st.integers(12, 40),
    mode=st.sampled_from(["pack", "padding"]),
)
def test_rows_hold_whole_samples(docs, seq_length, mode):
    rows, part = rows_of(docs, mode, seq_length)
    samples = []
    for row in rows:
        n = len(row["input_ids"])
        assert 0 < n <= seq_length
        for k in range(row["sample_index"].max() + 1):
            at = np.flatnonzero(row["sample_index"] == k)
            assert at.tolist() == list(range(at[0], at[-1] + 1))  # contiguous
            assert row["position_ids"][at].tolist() == list(range(len(at)))  # restart per sample
            samples.append((row["input_ids"][at].tolist(), row["labels"][at].tolist()))
    # Every document is one whole sample, in order: tokens are conserved and no sample is split.
    assert [ids for ids, _ in samples] == [ids for ids, _ in docs]
    # Labels never cross a sample: the next token when it is trained on, never at a sample's end.
    for (ids, labels), (_, mask) in zip(samples, docs):
        assert labels == [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    assert part.row_lengths().tolist() == [len(r["input_ids"]) for r in rows]


@settings(max_examples=100, deadline=None)
@given(docs=st.lists(document, min_size=1, max_size=20), seq_length=st.integers(1, 16))
def test_concat_stream_is_every_target_once(docs, seq_length):
    rows, _ = rows_of(docs, "concat", seq_length)
    stream = [i for ids, _ in docs for i in ids]
    mask = [m for _, ms in docs for m in ms]
    assert all(len(r["input_ids"]) <= seq_length for r in rows)
    assert [i for r in rows for i in r["input_ids"].tolist()] == stream[:-1]
    assert [i for r in rows for i in r["labels"].tolist()] == [t if m else IGNORE for t, m in zip(stream[1:], mask[1:])]
