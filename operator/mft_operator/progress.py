"""Trainer progress, carried by the master pod's log.

The trainer (rank 0) prints one JSON object per line on stdout:

    {"kind": "mft.progress", "step": 1200, "total_steps": 9000, "epoch": 0.4, "loss": 0.83,
     "valid_loss": 0.91, "lr": 0.0002, "tokens_per_second": 51234, "mfu": 0.41,
     "eta_seconds": 11520, "time": 1767225600.0}
    {"kind": "mft.checkpoint", "name": "checkpoint-1000", "latest": "checkpoint-1000",
     "best": "checkpoint-1000", "best_valid_loss": 0.91}

The operator reads the tail of that log on a timer and keeps the last record of each kind.
Trainer pods need no API credentials for this (see DESIGN.md).

Progress is a report, not the job's state: a record that cannot be read is ignored, and so is
any value in one that status cannot hold; nothing here raises.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

PROGRESS = "mft.progress"
CHECKPOINT = "mft.checkpoint"

# Record key -> (status.progress key, type).
_PROGRESS_FIELDS = {
    "step": ("step", int),
    "total_steps": ("totalSteps", int),
    "epoch": ("epoch", float),
    "loss": ("loss", float),
    "valid_loss": ("validLoss", float),
    "lr": ("learningRate", float),
    "tokens_per_second": ("tokensPerSecond", float),
    "mfu": ("mfu", float),
}
_CHECKPOINT_FIELDS = {"latest": ("latest", str), "best": ("best", str), "best_valid_loss": ("bestValidLoss", float)}

# A record starts its line, after torchrun's optional per-rank prefix ("[default0]:" with --tee,
# "[0]:" from a "[${rank}]:" prefix template). One further along a line is never a record: the
# trainer's data errors end with an excerpt of the bad data record, which may look like one.
_RECORD_LINE = re.compile(r'(?:\[[\w.-]*\]:)?(\{"kind".*)')

# What status can store (the apiserver's integers are int64, its times RFC 3339 with a four-digit
# year) and what the CRD lets it hold (maxLength of the checkpoint names, in bytes).
_INT64 = range(-(2**63), 2**63)
_END_OF_YEAR_9999 = 253402300800  # in Unix seconds
_MAX_ETA_SECONDS = 100 * 365 * 86400  # a longer one is no estimate (and its text would have no bound)
_MAX_CHECKPOINT_NAME_BYTES = 255  # a path component (NAME_MAX)


@dataclass(frozen=True)
class Reports:
    """The last record of each kind found in a log; None when there was none."""

    progress: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


def parse_log(text: str) -> Reports:
    """Last progress and checkpoint records in ``text``; other output is ignored.

    A record begins its line, after an optional prefix (torchrun's ``[default0]:``); a line cut by
    the read limit or not JSON is skipped.
    """
    last: dict[str, dict[str, Any]] = {}
    # Lines end at "\n" only: the trainer writes one record per "\n", and data it echoes may hold
    # other line separators (U+2028, U+0085) that str.splitlines() would start a line at.
    for line in text.split("\n"):
        record = _record(line)
        if record is not None:
            last[record["kind"]] = record
    return Reports(progress=last.get(PROGRESS), checkpoint=last.get(CHECKPOINT))


def _record(line: str) -> dict[str, Any] | None:
    match = _RECORD_LINE.fullmatch(line)
    if match is None:
        return None
    try:
        record = json.loads(match.group(1))
    except (ValueError, RecursionError):  # not JSON, an int too long to read, or nested too deep
        return None
    if not isinstance(record, dict) or record.get("kind") not in (PROGRESS, CHECKPOINT):
        return None
    return record


def progress_status(record: dict[str, Any]) -> dict[str, Any]:
    """A progress record as ``status.progress`` fields (absent values, and values status cannot
    hold, left out)."""
    status = _convert(record, _PROGRESS_FIELDS)
    eta = _number(record.get("eta_seconds"))
    if eta is not None and 0 <= eta <= _MAX_ETA_SECONDS:
        status["eta"] = format_duration(eta)
    when = _number(record.get("time"))
    if when is not None and 0 <= when < _END_OF_YEAR_9999:
        status["updatedAt"] = rfc3339(when)
    return status


def checkpoint_status(record: dict[str, Any]) -> dict[str, Any]:
    return _convert(record, _CHECKPOINT_FIELDS)


def summary(progress: dict[str, Any]) -> str | None:
    """``1200/9000 (13%)`` for the Progress printer column."""
    step, total = progress.get("step"), progress.get("totalSteps")
    if step is None:
        return None
    if not total:
        return str(step)
    return f"{step}/{total} ({100 * step // total}%)"


def _convert(record: dict[str, Any], fields: dict[str, tuple[str, type]]) -> dict[str, Any]:
    status = {}
    for key, (status_key, kind) in fields.items():
        value = _checkpoint_name(record.get(key)) if kind is str else _typed_number(record.get(key), kind)
        if value is not None:
            status[status_key] = value
    return status


def _checkpoint_name(value: Any) -> str | None:
    """A checkpoint name status can hold; a longer one is no name (and cut short, it would name a
    checkpoint that does not exist)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text that status can hold
        return None
    return value if size <= _MAX_CHECKPOINT_NAME_BYTES else None


def _typed_number(value: Any, kind: type) -> int | float | None:
    number = _number(value)
    if number is None:
        return None
    if kind is float:
        return float(number)
    whole = int(number)
    return whole if whole in _INT64 else None


def _number(value: Any) -> float | None:
    """A finite JSON number (NaN, infinity or an integer beyond a double's range cannot be stored
    in status), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an integer too large to be a double
        return None


def format_duration(seconds: float) -> str:
    """Like ``3h12m``, ``2d4h``, ``45s``: two units at most, as kubectl prints ages."""
    seconds = int(round(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts = []
    for suffix, size in units:
        if seconds >= size or (suffix == "s" and not parts):
            parts.append(f"{seconds // size}{suffix}")
            seconds %= size
        if len(parts) == 2:
            break
    return "".join(parts)


def rfc3339(unix_seconds: float) -> str:
    return datetime.fromtimestamp(unix_seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def seconds_between(earlier: str, later: str) -> float:
    """Seconds from one RFC 3339 time to another (``Z`` or an offset, any case, with or without
    fractions; one without an offset counts as UTC). ValueError if either is not a time."""
    def parse(text: str) -> datetime:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    return (parse(later) - parse(earlier)).total_seconds()
