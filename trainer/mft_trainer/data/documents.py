"""The documents of one task as three flat arrays, in memory (JSONL) or memory-mapped (binary),
and the per-document decisions made before packing: over-long policy and train/valid split."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mft_trainer.data.encoding import EncodedChunk
from mft_trainer.data.errors import DataError
from mft_trainer.data.report import FileCounts


@dataclass
class TaskDocuments:
    """Document d is tokens[offsets[d]:offsets[d + 1]] with loss_mask over the same range. Documents
    come in file order; `file_ends[f]` is the number of documents in files 0..f."""

    name: str
    tokens: np.ndarray  # uint16 or int32
    loss_mask: np.ndarray  # uint8
    offsets: np.ndarray  # int64, documents + 1
    files: list[FileCounts]
    file_ends: np.ndarray  # int64, one per file
    # Binary datasets only: where the ids and masks were read, and the tokenizer's size. An id at or
    # above it is a damaged file, which would otherwise surface as an index error (a device-side
    # assert on a GPU) deep inside the model; a damaged mask would silently change what is trained on.
    tokens_file: Path | None = None
    vocab_size: int | None = None
    loss_mask_file: Path | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def check(self, document: int, ids: np.ndarray, mask: np.ndarray) -> None:
        """Raise DataError if ``ids`` or ``mask``, read from ``document`` of a binary dataset, hold a
        value preprocess never writes: an id the tokenizer does not have, a mask other than 0 or 1."""
        if self.vocab_size is None or not ids.size:
            return
        if not (0 <= int(ids.min()) and int(ids.max()) < self.vocab_size):
            bad = int(ids[(ids < 0) | (ids >= self.vocab_size)][0])
            raise DataError(f"{self.tokens_file}: document {document} holds token id {bad}, but the tokenizer has "
                            f"{self.vocab_size} ids: the file is damaged; run mft-train preprocess again")
        if int(mask.max()) > 1:
            bad = int(mask[mask > 1][0])
            raise DataError(f"{self.loss_mask_file}: document {document} holds loss mask value {bad}, but a loss "
                            f"mask is 0 or 1: the file is damaged; run mft-train preprocess again")

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def count_per_file(ends: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """How many of the documents flagged in the boolean array `selected` each file holds, given the
    files' cumulative document counts `ends`."""
    files = np.searchsorted(ends, np.flatnonzero(selected), side="right")
    return np.bincount(files, minlength=len(ends))


def file_ends(files: list[FileCounts]) -> np.ndarray:
    return np.cumsum([f.records for f in files], dtype=np.int64)


def tally(chunks: Iterable[EncodedChunk], files: list[FileCounts]) -> Iterator[EncodedChunk]:
    """Pass chunks through, counting records and skips in their file's counts."""
    for chunk in chunks:
        counts = files[chunk.file_index]
        counts.records += len(chunk.lengths)
        for reason, message in chunk.skips:
            counts.add_skip(reason, message)
        yield chunk


def collect_documents(name: str, files: list[FileCounts], chunks: Iterable[EncodedChunk]) -> TaskDocuments:
    """Join encoded chunks (in file order) into one in-memory TaskDocuments."""
    tokens, masks, lengths = [], [], []
    for chunk in tally(chunks, files):
        tokens.append(chunk.tokens)
        masks.append(chunk.loss_mask)
        lengths.append(chunk.lengths)
    offsets = np.concatenate([[0], np.cumsum(_join(lengths, np.int64))]).astype(np.int64)
    return TaskDocuments(name, _join(tokens, np.int32), _join(masks, np.uint8), offsets, files, file_ends(files))


def chunk_documents(name: str, chunk: EncodedChunk, counts: FileCounts) -> TaskDocuments:
    """The documents of one encoded chunk, all of one file, whose counts are ``counts``."""
    offsets = np.concatenate([[0], np.cumsum(chunk.lengths)]).astype(np.int64)
    return TaskDocuments(name, chunk.tokens, chunk.loss_mask, offsets, [counts],
                         np.array([len(chunk.lengths)], dtype=np.int64))


def _join(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def apply_and_count_overlong_policy(documents: TaskDocuments, seq_length: int,
                                    policy: str) -> tuple[np.ndarray, np.ndarray]:
    """The over-long policy as training applies it (one code path for `train`, `tokenize` and the
    counts of `preprocess`): each document's length after it and whether it is kept, a truncation
    that leaves no target dropping the document as well. Adds what it truncates, drops, and
    truncates without targets to the files' counts."""
    count_overlong(documents.files, documents.file_ends, documents.lengths, seq_length, policy)
    lengths, kept = apply_overlong_policy(documents.lengths, seq_length, policy)
    if policy == "truncate":
        emptied = emptied_by_truncation(documents, seq_length)
        kept &= ~emptied
        for counts, n in zip(documents.files, count_per_file(documents.file_ends, emptied)):
            counts.truncated_without_targets += int(n)
    return lengths, kept


def apply_overlong_policy(lengths: np.ndarray, seq_length: int, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after the policy (truncate keeps the first seq_length tokens) and which documents are kept."""
    if policy == "truncate":
        return np.minimum(lengths, seq_length), np.ones(len(lengths), dtype=bool)
    return lengths, lengths <= seq_length


def count_overlong(
    files: list[FileCounts], ends: np.ndarray, lengths: np.ndarray, seq_length: int, policy: str
) -> None:
    """Add to each file's counts how many of its documents the over-long policy truncates or drops."""
    name = "truncated" if policy == "truncate" else "dropped"
    for counts, n in zip(files, count_per_file(ends, lengths > seq_length)):
        setattr(counts, name, getattr(counts, name) + int(n))


def emptied_by_truncation(documents: TaskDocuments, seq_length: int) -> np.ndarray:
    """Which documents truncation to seq_length leaves without a target token (an answer that starts
    beyond it). Reads only the over-long documents' masks."""
    emptied = np.zeros(len(documents), dtype=bool)
    for d in np.flatnonzero(documents.lengths > seq_length):
        start = documents.offsets[d]
        emptied[d] = not documents.loss_mask[start + 1:start + seq_length].any()
    return emptied


def split_documents(count: int, valid_fraction: float, seed: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and valid document ids of one task.

    Seeded by (seed, task name) only, so the split does not depend on the number of ranks, on the other
    tasks or on seq_length. Every task with two or more documents gets at least one valid document, so
    each task has a validation loss.
    """
    valid_count = min(count - 1, max(1, round(count * valid_fraction))) if count >= 2 else 0
    order = np.random.default_rng([seed, zlib.crc32(task.encode())]).permutation(count)
    return np.sort(order[valid_count:]), np.sort(order[:valid_count])
