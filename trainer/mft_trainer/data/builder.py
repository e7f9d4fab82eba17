"""build_datasets: task folders -> train and valid RowDatasets and a report of every count."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast

from mft_trainer.config import TrainerConfig
from mft_trainer.data.assembly import AssemblyStyle, data_mode
from mft_trainer.data.binary import dataset_settings, open_task
from mft_trainer.data.documents import (
    TaskDocuments,
    apply_and_count_overlong_policy,
    collect_documents,
    split_documents,
)
from mft_trainer.data.encoding import Encoder, default_workers, encode_files
from mft_trainer.data.errors import DataError
from mft_trainer.data.packing import one_per_row, pack_greedy
from mft_trainer.data.report import DataReport, FileCounts, TaskCounts
from mft_trainer.data.rows import DocumentView, RowDataset, SampleRows, TaskRows, WindowRows
from mft_trainer.data.tasks import discover_binary_tasks, discover_jsonl_tasks

log = logging.getLogger("mft_trainer.data")


@dataclass
class Datasets:
    tasks: list[str]  # index = task_id
    train: RowDataset
    valid: RowDataset
    report: DataReport


def build_datasets(config: TrainerConfig, tokenizer: PreTrainedTokenizerFast) -> Datasets:
    """Every rank calls this and gets the same datasets: the split and the rows depend only on the
    data, the config and the seed; the sampler decides what each rank reads."""
    if config.data.padding_mode == "concat" and data_mode(config.mode) != "sst":
        raise DataError(f"data.padding_mode: concat is only allowed with mode sst, found mode {config.mode}")
    report = DataReport()
    train: list[TaskRows] = []
    valid: list[TaskRows] = []
    for documents in load_documents(config, tokenizer):
        counts = TaskCounts(documents.name, documents.files)
        task_train, task_valid = _task_rows(documents, config, counts)
        train.append(task_train)
        valid.append(task_valid)
        report.tasks.append(counts)
    log.info("%s", report.summary())
    for counts in report.tasks:
        if not counts.train_documents:  # it would weigh nothing, silently
            raise DataError(f"task {counts.name}: no documents left to train on ({_losses(counts)})")
    if report.total("skipped"):
        log.warning(
            "%d bad records skipped (data.on_bad_record: skip); see the data report above", report.total("skipped")
        )
    return Datasets([t.name for t in report.tasks], RowDataset(train), RowDataset(valid), report)


def _losses(counts: TaskCounts) -> str:
    files = counts.files
    return (f"{sum(f.records for f in files)} records read, {sum(f.skipped for f in files)} skipped as bad, "
            f"{sum(f.dropped for f in files)} dropped as over-long, "
            f"{sum(f.truncated_without_targets for f in files)} truncated without targets, "
            f"{counts.valid_documents} held out for validation; see the data report above")


def load_documents(config: TrainerConfig, tokenizer: PreTrainedTokenizerFast) -> list[TaskDocuments]:
    """Each task's documents: tokenized from JSONL on all cores, or memory-mapped from a binary dataset."""
    data = config.data
    if data.format == "bin":
        settings = dataset_settings(config, tokenizer)
        return [
            open_task(task, settings, len(tokenizer), data.on_bad_record) for task in discover_binary_tasks(data.paths)
        ]
    tasks = discover_jsonl_tasks(data.paths)
    encoder = Encoder(tokenizer, AssemblyStyle.from_config(data, config.mode))
    workers = default_workers([path for task in tasks for path in task.files])
    return [
        collect_documents(
            task.name,
            [FileCounts(str(p)) for p in task.files],
            encode_files(task.files, encoder, data.on_bad_record, workers),
        )
        for task in tasks
    ]


def _task_rows(documents: TaskDocuments, config: TrainerConfig, counts: TaskCounts) -> tuple[TaskRows, TaskRows]:
    data, seq_length = config.data, config.training.seq_length
    lengths, kept = documents.lengths, np.ones(len(documents), dtype=bool)
    if data.padding_mode != "concat":  # a concat stream has no over-long documents
        lengths, kept = apply_and_count_overlong_policy(documents, seq_length, data.overlong_policy)
    # Split before dropping, so that the split does not move when seq_length changes.
    train_ids, valid_ids = split_documents(len(documents), data.valid_split, config.training.seed, documents.name)
    train_ids, valid_ids = train_ids[kept[train_ids]], valid_ids[kept[valid_ids]]
    train = make_rows(DocumentView(documents, train_ids, lengths[train_ids]), data.padding_mode, seq_length)
    valid = make_rows(DocumentView(documents, valid_ids, lengths[valid_ids]), data.padding_mode, seq_length)
    counts.train_documents, counts.valid_documents = len(train_ids), len(valid_ids)
    counts.train_rows, counts.valid_rows = len(train), len(valid)
    counts.train_tokens, counts.valid_tokens = train.view.total_tokens, valid.view.total_tokens
    return train, valid


def make_rows(view: DocumentView, padding_mode: str, seq_length: int) -> SampleRows | WindowRows:
    if padding_mode == "concat":
        return WindowRows(view, seq_length)
    if padding_mode == "pack":
        return SampleRows(view, pack_greedy(view.lengths, seq_length))
    return SampleRows(view, one_per_row(len(view.ids)))
