"""Counts of everything read, skipped, truncated and dropped: nothing leaves the pipeline unreported."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FileCounts:
    path: str
    records: int = 0  # records read into documents
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    first_skips: dict[str, str] = field(default_factory=dict)  # one "file:line: message" per reason
    truncated: int = 0
    dropped: int = 0
    truncated_without_targets: int = 0  # truncated documents with no target left: dropped as well

    def add_skip(self, reason: str, message: str) -> None:
        self.skipped += 1
        self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
        self.first_skips.setdefault(reason, message)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FileCounts:
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


@dataclass
class TaskCounts:
    name: str
    files: list[FileCounts]
    train_documents: int = 0
    valid_documents: int = 0
    train_rows: int = 0
    valid_rows: int = 0
    train_tokens: int = 0
    valid_tokens: int = 0


@dataclass
class DataReport:
    tasks: list[TaskCounts] = field(default_factory=list)

    @property
    def files(self) -> list[FileCounts]:
        return [f for task in self.tasks for f in task.files]

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def shape(self) -> dict[str, list[int]]:
        """What the rows of each task depend on, compactly: documents and rows, train then valid,
        and train tokens. Equal shapes mean the same rows (the data is read the same way)."""
        return {task.name: [task.train_documents, task.valid_documents, task.train_rows, task.valid_rows,
                            task.train_tokens] for task in self.tasks}

    def summary(self) -> str:
        emptied = self.total("truncated_without_targets")
        lines = [
            f"data: {len(self.tasks)} tasks, {self.total('records')} records, {self.total('skipped')} skipped, "
            f"{self.total('truncated')} truncated"
            + (f" ({emptied} of them without targets, dropped)" if emptied else "")
            + f", {self.total('dropped')} dropped"
        ]
        for task in self.tasks:
            lines.append(
                f"  task {task.name}" + (_split_line(task) if task.train_documents or task.valid_documents else "")
            )
            lines += [f"    {_file_line(f)}" for f in task.files]
        return "\n".join(lines)


def _split_line(task: TaskCounts) -> str:
    return (
        f": train {task.train_documents} documents in {task.train_rows} rows ({task.train_tokens} tokens), "
        f"valid {task.valid_documents} documents in {task.valid_rows} rows ({task.valid_tokens} tokens)"
    )


def _file_line(counts: FileCounts) -> str:
    line = f"{counts.path}: {counts.records} records"
    for name in ("skipped", "truncated", "dropped", "truncated_without_targets"):
        if getattr(counts, name):
            line += f", {getattr(counts, name)} {name.replace('_', ' ')}"
    if counts.skip_reasons:
        reasons = "; ".join(
            f"{n} {reason}, first at {counts.first_skips[reason]}" for reason, n in counts.skip_reasons.items()
        )
        line += f" ({reasons})"
    return line


def first_rank_with_other_data(shapes: list[dict[str, list[int]]]) -> str | None:
    """Which rank read other rows than rank 0, and how (``DataReport.shape`` of each rank, in rank
    order), or None when every rank read the same."""
    for rank, shape in enumerate(shapes):
        if shape != shapes[0]:
            task = min(name for name in shape.keys() | shapes[0].keys() if shape.get(name) != shapes[0].get(name))
            return f"task {task}: rank 0 read {_counts(shapes[0].get(task))}, rank {rank} {_counts(shape.get(task))}"
    return None


def _counts(shape: list[int] | None) -> str:
    if shape is None:
        return "no such task"
    train_documents, valid_documents, train_rows, valid_rows, train_tokens = shape
    return (f"{train_documents} + {valid_documents} documents, {train_rows} + {valid_rows} rows, "
            f"{train_tokens} train tokens")
