"""MFTCoder JSONL records: reading files in line chunks and turning each line into turns.

Record kinds, checked in this order (extra fields are ignored):
  {"chat_rounds": [{"role": "system"|"human"|"bot", "content": "..."}, ...]}   (user/assistant are aliases)
  {"prompt": "...", "answer": "...", "system": "..." (optional)}
  {"text": "..."}

A line longer than MAX_RECORD_BYTES is a bad record ("record too large"): tokenizing text costs
about a hundred times its size in memory, so one huge line could take down every rank of a node.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mft_trainer.data.errors import DataError

ROLES = {"system": "system", "human": "human", "bot": "bot", "user": "human", "assistant": "bot"}
TEXT_ROLE = "text"  # the role of a `text` record's only turn: no marker, all of it trained on
MAX_RECORD_BYTES = 4 << 20  # 4 MiB: about a million tokens, far beyond any seq_length
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Turn:
    role: str  # system, human, bot (aliases resolved) or text
    content: str


class RecordError(ValueError):
    """One record is unusable. `reason` is a short category for skip counts; the message says
    what was expected and what was found."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LineChunk:
    """Consecutive raw lines of one file: the unit of work handed to tokenizer workers."""

    path: str
    file_index: int
    first_line: int  # 1-based number of lines[0]
    lines: list[bytes]


def read_line_chunks(path: Path, file_index: int, chunk_bytes: int = 1 << 20) -> Iterator[LineChunk]:
    """Raw lines in chunks of about `chunk_bytes`. Decoding happens per line later, so that a bad
    byte is reported with its line number. An empty file is an error whatever the skip policy:
    it is a broken input, not a bad record."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    lines: list[bytes] = []
    size, first_line, has_record, number = 0, 1, False, 0
    try:
        with opener(path, "rb") as stream:
            for number, line in enumerate(_bounded_lines(stream), start=1):
                if number == 1:
                    line = line.removeprefix(codecs.BOM_UTF8)  # as Windows tools write it
                has_record = has_record or bool(line.strip())
                lines.append(line)
                size += len(line)
                if size >= chunk_bytes:
                    yield LineChunk(str(path), file_index, first_line, lines)
                    lines, size, first_line = [], 0, number + 1
    except (OSError, EOFError, zlib.error) as exc:  # gzip raises all three for damaged archives
        reached = f" after line {number}" if number else ""
        found = f"damaged compressed data ({exc})" if isinstance(exc, zlib.error) else str(exc)
        raise DataError(f"{path}: cannot read the file{reached}: {found}") from exc
    if not has_record:
        raise DataError(f"{path}: empty file: expected JSON records, one per line, found none")
    if lines:
        yield LineChunk(str(path), file_index, first_line, lines)


def _bounded_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The stream's lines, each cut after MAX_RECORD_BYTES + 2 bytes (a record of the limit and its
    \r\n; the rest of a longer line is read and dropped), so that one huge line never sits in
    memory whole."""
    while line := stream.readline(MAX_RECORD_BYTES + 2):
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        yield line


def parse_record(line: bytes) -> list[Turn]:
    if len(line) > MAX_RECORD_BYTES and len(line.rstrip(b"\r\n")) > MAX_RECORD_BYTES:
        raise RecordError(
            "record too large",
            f"expected a record of at most {MAX_RECORD_BYTES} bytes, found a longer one; "
            f"split long documents into several records",
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(
            "not UTF-8", f"expected UTF-8 text, found byte 0x{line[exc.start]:02x} at column {exc.start + 1}"
        ) from None
    try:
        record = json.loads(text, object_pairs_hook=_object_with_unique_keys)
    except RecordError:
        raise
    except json.JSONDecodeError as exc:
        raise RecordError(
            "invalid JSON", f"expected a JSON object, found invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits; nesting deeper than Python's stack
        raise RecordError("invalid JSON", f"expected a JSON object, found JSON that cannot be read ({exc})") from None
    if not isinstance(record, dict):
        raise RecordError("wrong type", f"expected a JSON object, found {describe(record)}")
    if "chat_rounds" in record:
        return chat_turns(record["chat_rounds"])
    if "prompt" in record or "answer" in record:
        return _prompt_answer_turns(record)
    if "text" in record:
        return [Turn(TEXT_ROLE, _string(record["text"], "text"))]
    raise RecordError(
        "missing field",
        f"expected a record with 'chat_rounds', 'prompt' and 'answer', or 'text', found fields {sorted(record)}",
    )


def _object_with_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a key given twice: json keeps the last value, so
    {"answer": "s[::-1]", "answer": ""} would train on an empty answer without a word."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise RecordError("duplicate field", f"expected each field of an object once, found {twice!r} twice")
    return record


def chat_turns(rounds: Any) -> list[Turn]:
    if not isinstance(rounds, list):
        raise RecordError("wrong type", f"chat_rounds: expected a list of turns, found {describe(rounds)}")
    if not rounds:
        raise RecordError("empty chat_rounds", "chat_rounds: expected at least one turn, found an empty list")
    return [_turn(raw, f"chat_rounds[{i}]") for i, raw in enumerate(rounds)]


def _turn(raw: Any, where: str) -> Turn:
    if not isinstance(raw, dict):
        raise RecordError("wrong type", f"{where}: expected an object with role and content, found {describe(raw)}")
    for key in ("role", "content"):
        if key not in raw:
            raise RecordError("missing field", f"{where}: missing field '{key}', found fields {sorted(raw)}")
    role = _string(raw["role"], f"{where}.role")
    if role not in ROLES:
        raise RecordError(
            "unknown role", f"{where}.role: expected system, human or bot (or user, assistant), found {role!r}"
        )
    return Turn(ROLES[role], _string(raw["content"], f"{where}.content"))


def _prompt_answer_turns(record: dict) -> list[Turn]:
    for key in ("prompt", "answer"):
        if key not in record:
            raise RecordError(
                "missing field", f"missing field '{key}' (prompt and answer go together), found fields {sorted(record)}"
            )
    system = record.get("system")
    turns = [Turn("system", _string(system, "system"))] if system not in (None, "") else []
    return turns + [
        Turn("human", _string(record["prompt"], "prompt")),
        Turn("bot", _string(record["answer"], "answer")),
    ]


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError("wrong type", f"{where}: expected a string, found {describe(value)}")
    # JSON can escape half of a UTF-16 pair (\ud83d alone): no Unicode text, and the tokenizer
    # would fail on the whole batch it is in.
    if not value.isascii() and (surrogate := _SURROGATE.search(value)):
        raise RecordError(
            "invalid Unicode",
            f"{where}: expected Unicode text, found a lone surrogate \\u{ord(surrogate.group()):04x} "
            f"at character {surrogate.start() + 1}",
        )
    return value


def describe(value: Any) -> str:
    """A JSON value as a person would name it: `number 5`, `list [1, 2]`, `null`."""
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}[type(value)]
    shown = json.dumps(value, ensure_ascii=False)
    return f"{kind} {shown if len(shown) <= 60 else shown[:57] + '...'}"
