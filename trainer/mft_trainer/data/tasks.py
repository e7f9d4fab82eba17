"""Task folders: `data.paths` is a list of folders, one task each, named by the folder's last component."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mft_trainer.data.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
MANIFEST = "manifest.json"
log = logging.getLogger("mft_trainer.data")


@dataclass(frozen=True)
class TaskSource:
    name: str
    path: Path
    files: tuple[Path, ...] = ()  # the JSONL files, in name order; empty for binary tasks


def task_name(path: str) -> str:
    """The folder's own name, however the path spells it ("data/code-exam/" and "code-exam/." ->
    "code-exam"; "." -> the current folder's name)."""
    return Path(os.path.abspath(path)).name


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
    entries = sorted(folder.iterdir())
    files = tuple(p for p in entries if _is_jsonl(p))
    for path in files:  # by name: a data file that cannot be read is an error, not something to skip
        _check_readable(path)
    others = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in files]
    if not files:
        if not any(p.is_file() for p in entries):
            raise DataError(f"{folder}: empty task folder: expected *.jsonl or *.jsonl.gz files, found no files")
        raise DataError(f"{folder}: expected *.jsonl or *.jsonl.gz files, found only {_names(others)}")
    if others:
        log.warning("%s: reading %d JSONL files, ignoring %s (only *.jsonl and *.jsonl.gz files are data)",
                    folder, len(files), _names(others))
    return files


def _check_readable(path: Path) -> None:
    def unreadable(found: str) -> DataError:
        return DataError(f"{path}: a JSONL data file that cannot be read: expected a readable file, found {found}")

    if path.is_symlink() and not path.exists():  # typically a link into a volume that is not mounted
        raise unreadable(f"a dangling symlink to {os.readlink(path)}")
    if not path.is_file():
        raise unreadable("a folder" if path.is_dir() else "something that is not a regular file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise unreadable(f"an error opening it: {exc.strerror}") from exc


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith(JSONL_SUFFIXES)


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
