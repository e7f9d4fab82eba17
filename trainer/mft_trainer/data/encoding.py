"""Token ids and loss masks: segments -> ids, records -> documents, files -> chunks on all cores.

One code path for `mft-train tokenize`, `mft-train preprocess` and JSONL loading in `train`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from mft_trainer.config import DataConfig
from mft_trainer.data.assembly import AssemblyStyle, Segment, prompt_turns, render
from mft_trainer.data.errors import DataError
from mft_trainer.data.records import LineChunk, RecordError, parse_record, read_line_chunks

CHUNK_BYTES = 1 << 20


class Encoder:
    """Turns segments into token ids and loss masks.

    Markers are tokenized on their own, like the reference does, and cached. Content is tokenized
    with special-token matching off, so a literal "<|endoftext|>" (or a marker that was made a special
    token) inside content stays text and can never end a sample or fake a turn.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, style: AssemblyStyle):
        self.style = style
        self.eos_id: int = tokenizer.eos_token_id
        self.eos_text: str = tokenizer.eos_token
        self._tokenizer = tokenizer
        # A copy, so that switching special-token matching off leaves the caller's tokenizer alone.
        self._content = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._content.encode_special_tokens = True
        self._content.no_truncation()
        self._content.no_padding()
        self._marker_ids: dict[str, list[int]] = {}

    def encode(self, documents: list[list[Segment]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids (int32) and loss mask (uint8) of all documents back to back, and each one's length."""
        contents = [s.text for segments in documents for s in segments if s.kind == "content"]
        content_ids = iter([e.ids for e in self._content.encode_batch_fast(contents, add_special_tokens=False)])
        ids: list[int] = []
        mask: list[int] = []
        lengths = np.empty(len(documents), dtype=np.int64)
        for n, segments in enumerate(documents):
            start = len(ids)
            for segment in segments:
                piece = next(content_ids) if segment.kind == "content" else self._segment_ids(segment)
                ids += piece
                mask += [segment.trainable] * len(piece)
            lengths[n] = len(ids) - start
        return np.array(ids, dtype=np.int32), np.array(mask, dtype=np.uint8), lengths

    def _segment_ids(self, segment: Segment) -> list[int]:
        if segment.kind == "eos":
            return [self.eos_id]
        if segment.text not in self._marker_ids:
            self._marker_ids[segment.text] = self._tokenizer.encode(segment.text, add_special_tokens=False)
        return self._marker_ids[segment.text]


def encode_prompt(
    turns: list[dict] | str,
    tokenizer: PreTrainedTokenizerFast,
    system: str | None = None,
    data_config: DataConfig | None = None,
) -> list[int]:
    """The generation prompt's token ids, tokenized exactly as training tokenizes a conversation.
    The Encoder is built once per tokenizer and settings; the tokenizer must not change afterwards."""
    style = AssemblyStyle.from_config(data_config or DataConfig(), "sft")
    encoders = _prompt_encoders.setdefault(tokenizer, {})
    if style not in encoders:
        encoders[style] = Encoder(tokenizer, style)
    ids, _, _ = encoders[style].encode([style.prompt_segments(prompt_turns(turns, system))])
    return ids.tolist()


_prompt_encoders: WeakKeyDictionary[PreTrainedTokenizerFast, dict[AssemblyStyle, Encoder]] = WeakKeyDictionary()


@dataclass
class EncodedChunk:
    """The documents made from one LineChunk."""

    file_index: int
    tokens: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    lengths: np.ndarray  # int64, one per document
    skips: list[tuple[str, str]]  # (reason, "file:line: message") of each skipped record
    texts: list[str] | None  # the assembled text of each document, when asked for


def encode_chunk(encoder: Encoder, chunk: LineChunk, on_bad_record: str, keep_text: bool) -> EncodedChunk:
    documents: list[list[Segment]] = []
    numbers: list[int] = []  # the line of each document
    skips: list[tuple[str, str]] = []

    def bad(reason: str, message: str) -> None:
        if on_bad_record == "fail":
            raise DataError(message)
        skips.append((reason, message))

    for number, line in enumerate(chunk.lines, start=chunk.first_line):
        if not line.strip():
            continue
        try:
            turns = parse_record(line)
        except RecordError as exc:
            bad(exc.reason, f"{chunk.path}:{number}: {exc}")
            continue
        documents.append(encoder.style.segments(turns))
        numbers.append(number)
    tokens, mask, lengths = encoder.encode(documents)
    untrainable = target_counts(mask, lengths) == 0
    for i in np.flatnonzero(untrainable):
        bad("no targets", f"{chunk.path}:{numbers[i]}: expected something to learn from (a bot turn, or text), "
                          f"found a record without target tokens")
    if untrainable.any():
        keep, kept_tokens = ~untrainable, np.repeat(~untrainable, lengths)
        tokens, mask, lengths = tokens[kept_tokens], mask[kept_tokens], lengths[keep]
        documents = [d for d, k in zip(documents, keep) if k]
    texts = [render(d, encoder.eos_text) for d in documents] if keep_text else None
    return EncodedChunk(chunk.file_index, tokens, mask, lengths, skips, texts)


def target_counts(loss_mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Target tokens of each document (back to back in `loss_mask`, `lengths` long): token t is a
    target when t > 0 and its mask is set (it is predicted from token t - 1)."""
    cumulative = np.concatenate([[0], np.cumsum(loss_mask, dtype=np.int64)])
    ends = np.cumsum(lengths, dtype=np.int64)
    starts = ends - lengths
    return cumulative[ends] - cumulative[np.minimum(starts + 1, ends)]


def encode_files(
    files: Iterable[Path],
    encoder: Encoder,
    on_bad_record: str,
    workers: int = 1,
    keep_text: bool = False,
) -> Iterator[EncodedChunk]:
    """Encoded chunks of the files, in file and line order, computed on `workers` processes.

    At most two chunks per worker are in flight, so memory stays flat however large the files are.
    """
    chunks = (chunk for index, path in enumerate(files) for chunk in read_line_chunks(path, index, CHUNK_BYTES))
    if workers <= 1:
        yield from (encode_chunk(encoder, chunk, on_bad_record, keep_text) for chunk in chunks)
        return
    with _WorkerPool(workers, encoder, on_bad_record, keep_text) as pool:
        yield from pool.encode(chunks)


def default_workers(files: Iterable[Path], cores: int | None = None) -> int:
    """`cores` processes (default: the cores this process may use, shared between the ranks on this
    node), but no more than there are chunks: one for small inputs, where processes cost more than they save."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    total_bytes = sum(path.stat().st_size for path in files)
    return max(1, min(cores, -(-total_bytes // CHUNK_BYTES)))


@dataclass(frozen=True)
class _Lines:
    """Where a chunk's lines come from, for a message about them."""

    path: str
    first: int
    last: int

    @classmethod
    def of(cls, chunk: LineChunk) -> _Lines:
        return cls(chunk.path, chunk.first_line, chunk.first_line + len(chunk.lines) - 1)


class _WorkerPool:
    """Tokenizer processes, forked: they inherit the encoder without pickling it and without
    re-importing torch.

    A worker can die mid-chunk, typically killed by the kernel for memory. ProcessPoolExecutor then
    fails every chunk in flight with BrokenProcessPool (multiprocessing.Pool would wait for ever), but
    cannot say which chunk the dead worker held; the workers note that in shared memory, so that the
    error names the lines.
    """

    def __init__(self, workers: int, encoder: Encoder, on_bad_record: str, keep_text: bool):
        context = multiprocessing.get_context("fork")
        # claims[n % len(claims)]: the pid of the worker encoding chunk n. Only len(claims)
        # consecutive chunks are ever in flight, so no two of them share an entry.
        self._claims = context.RawArray("q", 2 * workers)
        self._executor = ProcessPoolExecutor(
            workers, context, initializer=_init_worker, initargs=(encoder, on_bad_record, keep_text, self._claims)
        )
        self._processes: list[multiprocessing.process.BaseProcess] | None = None

    def encode(self, chunks: Iterable[LineChunk]) -> Iterator[EncodedChunk]:
        """The chunks encoded, in order."""
        pending: deque[tuple[int, _Lines, Future]] = deque()
        try:
            for number, chunk in enumerate(chunks):
                self._claims[number % len(self._claims)] = 0
                pending.append((number, _Lines.of(chunk), self._submit(number, chunk)))
                if len(pending) == len(self._claims):
                    yield pending[0][2].result()
                    pending.popleft()
            while pending:
                yield pending[0][2].result()
                pending.popleft()
        except BrokenProcessPool:
            raise self._death(pending) from None

    def __enter__(self) -> _WorkerPool:
        return self

    def __exit__(self, error_type: type | None, *_: Any) -> None:
        if error_type is not None:  # the chunks in flight are no longer wanted: do not wait for them
            for process in self._processes or ():
                process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, number: int, chunk: LineChunk) -> Future:
        if self._processes is not None:
            return self._executor.submit(_encode_in_worker, number, chunk)
        # The first submit forks all the workers (fork context). Each tokenizes single-threaded (the
        # processes are the parallelism); setting the variable before forking also keeps the
        # tokenizers library from warning about a fork after threads.
        before = set(multiprocessing.active_children())
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            future = self._executor.submit(_encode_in_worker, number, chunk)
        finally:
            if previous is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
        self._processes = [p for p in multiprocessing.active_children() if p not in before]
        return future

    def _death(self, pending: deque[tuple[int, _Lines, Future]]) -> DataError:
        """The error for a pool broken by a worker's death, naming the lines that worker held."""
        self._executor.shutdown(wait=True)  # the pool ends the other workers itself: all exit codes are known
        exit_codes = {p.pid: p.exitcode for p in self._processes or ()}
        for number, lines, future in pending:
            if future.done() and not future.cancelled() and future.exception() is None:
                continue  # encoded: a worker that died later still has this chunk's claim
            code = exit_codes.get(self._claims[number % len(self._claims)])
            if code not in (None, 0, -signal.SIGTERM):  # SIGTERM: ended by the pool after the death
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                return _worker_died(lines, f"while encoding them ({how})")
        unfinished = [lines for _, lines, future in pending if not future.done() or future.exception() is not None]
        if unfinished:  # it died between two chunks, or before its pid was known
            return _worker_died(unfinished[0], "before they were encoded")
        return DataError("a tokenizer worker died (out of memory?)")


def _worker_died(lines: _Lines, when: str) -> DataError:
    return DataError(
        f"{lines.path}: lines {lines.first}-{lines.last}: a tokenizer worker died (out of memory?) {when}; "
        f"give it more memory (tokenizing takes about a hundred times the text's size) or run fewer workers"
    )


_worker_state: tuple[Encoder, str, bool, Any] | None = None


def _init_worker(encoder: Encoder, on_bad_record: str, keep_text: bool, claims: Any) -> None:
    global _worker_state
    _worker_state = (encoder, on_bad_record, keep_text, claims)


def _encode_in_worker(number: int, chunk: LineChunk) -> EncodedChunk:
    assert _worker_state is not None
    encoder, on_bad_record, keep_text, claims = _worker_state
    claims[number % len(claims)] = os.getpid()
    return encode_chunk(encoder, chunk, on_bad_record, keep_text)
