"""Binary datasets (`data.format: bin`): one folder per task, written by `mft-train preprocess`.

    {task}/tokens.bin      token ids of all documents back to back (uint16 if the vocabulary fits, else int32)
    {task}/loss_mask.bin   uint8, one per token, before the shift
    {task}/offsets.bin     int64, documents + 1: document d is tokens[offsets[d]:offsets[d+1]]
    {task}/manifest.json   format version, tokenizer hash, mode, assembly settings, dtype, sizes and
                           per-file counts (records, skipped with reasons, truncated/dropped at seq_length)
                           and each source file's absolute path, size and mtime when it was read

Documents are stored whole; the over-long policy is applied when training loads them, so one
preprocessed dataset serves any seq_length. Loading memory-maps the three files: tokens are never read
until a row needs them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerFast

from mft_trainer.config import TrainerConfig
from mft_trainer.data.assembly import AssemblyStyle, data_mode
from mft_trainer.data.documents import (
    TaskDocuments,
    apply_and_count_overlong_policy,
    chunk_documents,
    file_ends,
    tally,
)
from mft_trainer.data.encoding import Encoder, default_workers, encode_files
from mft_trainer.data.errors import DataError
from mft_trainer.data.report import DataReport, FileCounts, TaskCounts
from mft_trainer.data.tasks import MANIFEST, TaskSource, discover_jsonl_tasks
from mft_trainer.data.tokenizer import tokenizer_fingerprint
from mft_trainer.durable import fsync, fsync_tree

FORMAT, VERSION = "mft-bin", 1
TOKENS, LOSS_MASK, OFFSETS = "tokens.bin", "loss_mask.bin", "offsets.bin"
log = logging.getLogger("mft_trainer.data")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def dataset_settings(config: TrainerConfig, tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Everything that changes the stored ids or masks: a dataset is usable only if all of it matches."""
    data = config.data
    return {
        "tokenizer_hash": tokenizer_fingerprint(tokenizer),
        "mode": data_mode(config.mode),
        "eos_token": tokenizer.eos_token,
        "role_start": data.role_start,
        "role_end": data.role_end,
        "markers_as_special_tokens": data.markers_as_special_tokens,
        "normalize_punctuation": data.normalize_punctuation,
    }


def preprocess(
    config: TrainerConfig,
    tokenizer: PreTrainedTokenizerFast,
    inputs: list[str],
    output: Path,
    seq_length: int | None,
    workers: int,
) -> DataReport:
    """Tokenize JSONL task folders into binary task folders under `output`, one after the other.

    All or nothing: every task is written to a hidden partial folder, and only when all of them are
    complete are they renamed into place. A failure or an interruption leaves no task folder behind,
    so the same command can simply be run again.
    """
    tasks = discover_jsonl_tasks(inputs)
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: expected a folder (or nothing) for --output, found a file")
    for task in tasks:
        if (output / task.name).exists():
            raise DataError(f"{output / task.name}: already exists; remove it or choose another --output")
    writer = TaskWriter(config, tokenizer, seq_length, workers)
    partials = [output / f".{task.name}.partial" for task in tasks]
    try:
        report = DataReport([TaskCounts(task.name, writer.write(task, partial))
                             for task, partial in zip(tasks, partials)])
        for partial in partials:  # on disk before a rename publishes them
            fsync_tree(partial)
    except BaseException as exc:
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, a read-only volume: a message, not a traceback
            raise DataError(f"{exc.filename or output}: cannot write the dataset: {exc.strerror or exc}") from exc
        raise
    for task, partial in zip(tasks, partials):
        os.rename(partial, output / task.name)
    fsync(output)
    return report


class TaskWriter:
    """Writes JSONL task folders as binary task folders, all with the same tokenizer and settings."""

    def __init__(self, config: TrainerConfig, tokenizer: PreTrainedTokenizerFast, seq_length: int | None, workers: int):
        self.data = config.data
        self.encoder = Encoder(tokenizer, AssemblyStyle.from_config(config.data, config.mode))
        self.dtype = token_dtype(len(tokenizer))
        self.seq_length, self.workers = seq_length, workers
        self.manifest = {
            "format": FORMAT,
            "version": VERSION,
            **dataset_settings(config, tokenizer),
            "vocab_size": len(tokenizer),
            "token_dtype": self.dtype.name,
            "seq_length": seq_length,
            "overlong_policy": config.data.overlong_policy,
        }

    def write(self, task: TaskSource, folder: Path) -> list[FileCounts]:
        """Write one task into a fresh ``folder`` (anything there before is removed); return its
        per-file counts."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        files = [FileCounts(str(path)) for path in task.files]
        sources = [_source(path) for path in task.files]  # before reading: a change while reading is a change
        workers = default_workers(task.files, self.workers)
        chunks = encode_files(task.files, self.encoder, self.data.on_bad_record, workers)
        lengths = []
        with open(folder / TOKENS, "wb") as tokens, open(folder / LOSS_MASK, "wb") as mask:
            for chunk in tally(chunks, files):
                chunk.tokens.astype(self.dtype).tofile(tokens)
                chunk.loss_mask.tofile(mask)
                lengths.append(chunk.lengths)
                if self.seq_length:  # counts only: documents are stored whole, loading applies the policy
                    apply_and_count_overlong_policy(chunk_documents(task.name, chunk, files[chunk.file_index]),
                                                    self.seq_length, self.data.overlong_policy)
        all_lengths = np.concatenate(lengths or [np.empty(0, np.int64)])
        np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64).tofile(folder / OFFSETS)
        manifest = self.manifest | {
            "task": task.name,
            "documents": len(all_lengths),
            "tokens": int(all_lengths.sum()),
            "files": [dataclasses.asdict(f) | {"source": source} for f, source in zip(files, sources)],
        }
        # A file name that is not UTF-8 holds surrogate escapes (\udce9 for byte 0xe9). backslashreplace
        # writes them as JSON's own \u escapes: valid UTF-8, and json.loads gives the same name back.
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        (folder / MANIFEST).write_bytes(text.encode("utf-8", "backslashreplace"))
        return files


def _source(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def open_task(
    task: TaskSource, expected_settings: dict[str, Any], vocab_size: int, on_bad_record: str
) -> TaskDocuments:
    """Memory-map a preprocessed task folder after checking it was made for this training setup and
    that its files have the sizes the manifest promises. Token ids (against ``vocab_size``) and loss
    masks are checked as rows read them (a whole-file scan would read every token at each start)."""
    folder = task.path
    manifest = _read_manifest(folder)
    _check_settings(folder, manifest, expected_settings)
    dtype = np.dtype(manifest["token_dtype"])
    n_tokens, n_documents = manifest["tokens"], manifest["documents"]
    tokens = _map(folder / TOKENS, dtype, n_tokens)
    loss_mask = _map(folder / LOSS_MASK, np.dtype(np.uint8), n_tokens)
    offsets = _map(folder / OFFSETS, np.dtype(np.int64), n_documents + 1)
    if offsets[0] != 0 or offsets[-1] != n_tokens or np.any(np.diff(offsets) < 0):
        raise DataError(f"{folder / OFFSETS}: corrupt document index: expected offsets rising from 0 to {n_tokens}")
    # Truncation and drop counts are recomputed for the training seq_length by the loader.
    files = [dataclasses.replace(FileCounts.from_dict(f), truncated=0, dropped=0, truncated_without_targets=0)
             for f in manifest["files"]]
    if sum(f.records for f in files) != n_documents:
        raise DataError(
            f"{folder / MANIFEST}: corrupt manifest: file record counts do not add up to {n_documents} documents"
        )
    _check_skips(folder, files, on_bad_record)
    _warn_about_changed_sources(folder, manifest["files"])
    return TaskDocuments(task.name, tokens, loss_mask, offsets, files, file_ends(files), tokens_file=folder / TOKENS,
                         vocab_size=vocab_size, loss_mask_file=folder / LOSS_MASK)


def _check_skips(folder: Path, files: list[FileCounts], on_bad_record: str) -> None:
    """A dataset preprocessed with on_bad_record: skip lacks its bad records; a job set to fail must
    not train on it as if nothing was wrong."""
    skipped = sum(f.skipped for f in files)
    if on_bad_record != "fail" or not skipped:
        return
    first = next(f for f in files if f.skipped)
    first_skip = next(iter(first.first_skips.values()), first.path)
    raise DataError(
        f"{folder}: expected a dataset without bad records (data.on_bad_record: fail), found {skipped} skipped "
        f"when it was preprocessed with on_bad_record: skip, the first: {first_skip}; fix the records and "
        f"preprocess again, or set data.on_bad_record: skip"
    )


def _warn_about_changed_sources(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Only a warning: training often runs where the sources are not mounted at all, and the dataset
    itself is still consistent."""
    for entry in entries:
        source = entry.get("source")
        if source is None:  # a dataset preprocessed before sources were recorded
            continue
        try:
            stat = os.stat(source["path"])
        except OSError:  # the source is not visible here
            continue
        if (stat.st_size, stat.st_mtime_ns) != (source["size"], source["mtime_ns"]):
            log.warning(
                "%s: changed since %s was preprocessed from it (expected %d bytes modified %s, found %d bytes "
                "modified %s): the dataset holds the old content; run mft-train preprocess again to train on "
                "the new one", source["path"], folder, source["size"], _time(source["mtime_ns"]), stat.st_size,
                _time(stat.st_mtime_ns),
            )


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="milliseconds")


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: expected a JSON manifest written by mft-train preprocess, cannot read it: {exc}"
        ) from exc
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object written by mft-train preprocess, found {type(manifest).__name__}")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(
            f"{path}: expected format {FORMAT} version {VERSION}, found {manifest.get('format')!r} "
            f"version {manifest.get('version')!r}"
        )
    _check_fields(path, manifest)
    return manifest


def _check_fields(path: Path, manifest: dict[str, Any]) -> None:
    """The fields loading relies on, each with the type preprocess writes (a hand-edited or damaged
    manifest gets a message, not a traceback)."""
    def bad(field: str, expected: str, value: Any) -> DataError:
        return DataError(f"{path}: field {field}: expected {expected}, found {value!r}")

    for field in ("tokens", "documents"):
        if not _is_count(manifest.get(field)):
            raise bad(field, "a count (an integer >= 0)", manifest.get(field))
    if manifest.get("token_dtype") not in ("uint16", "int32"):
        raise bad("token_dtype", "uint16 or int32", manifest.get("token_dtype"))
    files = manifest.get("files")
    if not isinstance(files, list):
        raise bad("files", "a list of per-file counts", files)
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not _is_count(entry.get("records")):
            raise bad(f"files[{i}]", "an object with a path and a records count", entry)
        source = entry.get("source")
        if source is not None and not (isinstance(source, dict) and isinstance(source.get("path"), str)
                                       and _is_count(source.get("size")) and _is_integer(source.get("mtime_ns"))):
            raise bad(f"files[{i}].source", "an object with a path, a size and an mtime_ns", source)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return _is_integer(value) and value >= 0


def _check_settings(folder: Path, manifest: dict[str, Any], expected: dict[str, Any]) -> None:
    found = manifest.get("tokenizer_hash")
    if found != expected["tokenizer_hash"]:
        raise DataError(
            f"{folder}: made with another tokenizer: dataset tokenizer hash {found}, training tokenizer hash "
            f"{expected['tokenizer_hash']}; run mft-train preprocess again with the training tokenizer"
        )
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise DataError(
                f"{folder}: {key}: training expects {value!r}, the dataset was preprocessed with "
                f"{manifest.get(key)!r}; run mft-train preprocess again with the training config"
            )


def _map(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    expected = count * dtype.itemsize
    found = path.stat().st_size if path.exists() else None
    if found != expected:
        state = "missing" if found is None else f"{found} bytes"
        raise DataError(
            f"{path}: truncated or corrupt: expected {expected} bytes ({count} x {dtype.name}, per the manifest), found {state}"
        )
    if count == 0:  # an empty file cannot be memory-mapped
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
