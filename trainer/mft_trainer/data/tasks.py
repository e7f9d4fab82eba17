"""Task folders: `data.paths` is a list of folders, one task each, named by the folder's last component."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mft_trainer.data.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TaskSource:
    name: str
    path: Path
    files: tuple[Path, ...] = ()  # the JSONL files, in name order; empty for binary tasks


def task_name(path: str) -> str:
    """The last path component, ignoring trailing slashes ("data/code-exam/" -> "code-exam")."""
    return Path(path.rstrip("/")).name


def discover_jsonl_tasks(paths: list[str]) -> list[TaskSource]:
    return [TaskSource(task_name(p), Path(p), _jsonl_files(Path(p))) for p in _checked_folders(paths)]


def discover_binary_tasks(paths: list[str]) -> list[TaskSource]:
    for path in _checked_folders(paths):
        if not (Path(path) / MANIFEST).is_file():
            raise DataError(
                f"{path}: expected a preprocessed task folder with {MANIFEST} (written by mft-train preprocess), "
                f"found none"
            )
    return [TaskSource(task_name(p), Path(p)) for p in paths]


def _checked_folders(paths: list[str]) -> list[str]:
    if not paths:
        raise DataError("data.paths: expected at least one task folder, found none")
    seen: dict[str, str] = {}
    for path in paths:
        folder = Path(path)
        if not folder.exists():
            raise DataError(f"{path}: task folder does not exist")
        if not folder.is_dir():
            raise DataError(f"{path}: expected a task folder, found a file")
        name = task_name(path)
        if name in seen:
            raise DataError(
                f"{path}: duplicate task name {name!r} (also {seen[name]}); task names are the folders' last "
                f"path components and must be unique"
            )
        seen[name] = path
    return paths


def _jsonl_files(folder: Path) -> tuple[Path, ...]:
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    if not entries:
        raise DataError(f"{folder}: empty task folder: expected *.jsonl or *.jsonl.gz files, found no files")
    files = tuple(p for p in entries if p.name.endswith(JSONL_SUFFIXES))
    if not files:
        found = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DataError(f"{folder}: expected *.jsonl or *.jsonl.gz files, found only {found}")
    return files
