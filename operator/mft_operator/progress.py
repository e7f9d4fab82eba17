"""Trainer progress, carried by the master pod's log.

The trainer (rank 0) prints one JSON object per line on stdout:

    {"kind": "mft.progress", "step": 1200, "total_steps": 9000, "epoch": 0.4, "loss": 0.83,
     "valid_loss": 0.91, "lr": 0.0002, "tokens_per_second": 51234, "mfu": 0.41,
     "eta_seconds": 11520, "time": 1767225600.0}
    {"kind": "mft.checkpoint", "name": "checkpoint-1000", "latest": "checkpoint-1000",
     "best": "checkpoint-1000", "best_valid_loss": 0.91}

The operator reads the tail of that log on a timer and keeps the last record of each kind.
Trainer pods need no API credentials for this (see DESIGN.md).
"""

from __future__ import annotations

import json
import math
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


@dataclass(frozen=True)
class Reports:
    """The last record of each kind found in a log; None when there was none."""

    progress: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None


def parse_log(text: str) -> Reports:
    """Last progress and checkpoint records in ``text``; other output is ignored.

    Lines may carry a prefix (torchrun's ``[default0]:``); a line cut by the read limit or not
    JSON is skipped.
    """
    last: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        record = _record(line)
        if record is not None:
            last[record["kind"]] = record
    return Reports(progress=last.get(PROGRESS), checkpoint=last.get(CHECKPOINT))


def _record(line: str) -> dict[str, Any] | None:
    start = line.find('{"kind"')
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("kind") not in (PROGRESS, CHECKPOINT):
        return None
    return record


def progress_status(record: dict[str, Any]) -> dict[str, Any]:
    """A progress record as ``status.progress`` fields (absent or non-finite values left out)."""
    status = _convert(record, _PROGRESS_FIELDS)
    eta = _number(record.get("eta_seconds"))
    if eta is not None and eta >= 0:
        status["eta"] = format_duration(eta)
    when = _number(record.get("time"))
    if when is not None:
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
        value = record.get(key)
        if kind is str:
            if isinstance(value, str) and value:
                status[status_key] = value
            continue
        number = _number(value)
        if number is not None:
            status[status_key] = int(number) if kind is int else float(number)
    return status


def _number(value: Any) -> float | None:
    """A finite JSON number (NaN or infinity cannot be stored in status), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


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
