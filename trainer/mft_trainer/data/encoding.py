"""Token ids and loss masks: segments -> ids, records -> documents, files -> chunks on all cores.

One code path for `mft-train tokenize`, `mft-train preprocess` and JSONL loading in `train`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    with _worker_pool(workers, encoder, on_bad_record, keep_text) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def default_workers(files: Iterable[Path], cores: int | None = None) -> int:
    """`cores` processes (default: the cores this process may use, shared between the ranks on this
    node), but no more than there are chunks: one for small inputs, where processes cost more than they save."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    total_bytes = sum(path.stat().st_size for path in files)
    return max(1, min(cores, -(-total_bytes // CHUNK_BYTES)))


_worker_state: tuple[Encoder, str, bool] | None = None


def _init_worker(encoder: Encoder, on_bad_record: str, keep_text: bool) -> None:
    global _worker_state
    _worker_state = (encoder, on_bad_record, keep_text)


def _encode_in_worker(chunk: LineChunk) -> EncodedChunk:
    assert _worker_state is not None
    encoder, on_bad_record, keep_text = _worker_state
    return encode_chunk(encoder, chunk, on_bad_record, keep_text)


@contextmanager
def _worker_pool(workers: int, encoder: Encoder, on_bad_record: str, keep_text: bool) -> Iterator:
    # fork: workers inherit the encoder without pickling it and without re-importing torch.
    # Each worker tokenizes single-threaded (the processes are the parallelism); setting the variable
    # before forking also keeps the tokenizers library from warning about a fork after threads.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, (encoder, on_bad_record, keep_text))
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()
