"""What the trainer compares across ranks, and with a checkpoint, about the data each read."""

import logging
from pathlib import Path

from mft_trainer.data.report import DataReport, TaskCounts, first_rank_with_other_data
from mft_trainer.resume import warn_if_data_changed


def report(**documents_by_task: int) -> DataReport:
    return DataReport([TaskCounts(name, [], train_documents=n, valid_documents=1, train_rows=n, valid_rows=1,
                                  train_tokens=10 * n) for name, n in documents_by_task.items()])


def test_ranks_with_the_same_rows_agree():
    shape = report(code=9, exam=4).shape()
    assert first_rank_with_other_data([shape, dict(shape), dict(shape)]) is None


def test_the_first_rank_that_read_other_rows_is_named_with_both_counts():
    shapes = [report(code=9, exam=4).shape(), report(code=9, exam=4).shape(), report(code=10, exam=4).shape()]
    assert first_rank_with_other_data(shapes) == (
        "task code: rank 0 read 9 + 1 documents, 9 + 1 rows, 90 train tokens, "
        "rank 2 10 + 1 documents, 10 + 1 rows, 100 train tokens")
    missing = [report(code=9, exam=4).shape(), report(code=9).shape()]
    assert first_rank_with_other_data(missing) == "task exam: rank 0 read 4 + 1 documents, 4 + 1 rows, " \
                                                  "40 train tokens, rank 1 no such task"


def test_a_resume_onto_changed_data_warns_and_names_the_tasks(caplog):
    config = {"data": {"paths": ["/d/code", "/d/exam"]}, "training": {"seed": 7}}
    saved = {"data_shape": report(code=9, exam=4).shape(), "config": config}
    with caplog.at_level(logging.WARNING, logger="mft_trainer"):
        warn_if_data_changed(Path("/ck/checkpoint-8"), saved, config, report(code=9, exam=4).shape())
        # Saved before shapes were: unknown.
        warn_if_data_changed(Path("/ck/checkpoint-8"), {"config": config}, config, report(code=9, exam=5).shape())
        # Another seed moves the split itself, and resume.check already named it.
        reseeded = {**config, "training": {"seed": 8}}
        warn_if_data_changed(Path("/ck/checkpoint-8"), saved, reseeded, report(code=9, exam=5).shape())
        assert not caplog.records
        warn_if_data_changed(Path("/ck/checkpoint-8"), saved, config, report(code=9, exam=5).shape())
    (record,) = caplog.records
    assert "resuming from /ck/checkpoint-8, written when tasks exam had other document or row counts" in record.message
