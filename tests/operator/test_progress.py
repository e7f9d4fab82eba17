"""Parsing the trainer's progress lines out of the master pod's log."""

from __future__ import annotations

import json

import pytest

from mft_operator import progress

PROGRESS = {"kind": "mft.progress", "step": 1200, "total_steps": 9000, "epoch": 0.4, "loss": 0.83,
            "valid_loss": 0.91, "lr": 2e-4, "tokens_per_second": 51234.5, "mfu": 0.41,
            "eta_seconds": 11520, "time": 1767225600}
CHECKPOINT = {"kind": "mft.checkpoint", "name": "checkpoint-1000", "latest": "checkpoint-1000",
              "best": "checkpoint-500", "best_valid_loss": 0.9}


def test_last_record_of_each_kind_wins_and_other_output_is_ignored():
    log = "\n".join([
        "loading model...",
        json.dumps({**PROGRESS, "step": 10}),
        json.dumps(CHECKPOINT),
        "[default0]:" + json.dumps(PROGRESS),  # torchrun's per-rank prefix
        '{"kind": "mft.progress", "step": 13',  # cut off by the read limit
        '{"kind": "other", "step": 5}',
        "Traceback (most recent call last): {not json}",
    ])
    reports = progress.parse_log(log)
    assert reports.progress == PROGRESS
    assert reports.checkpoint == CHECKPOINT


def test_empty_log_has_no_reports():
    assert progress.parse_log("") == progress.Reports()


def test_progress_status_fields():
    assert progress.progress_status(PROGRESS) == {
        "step": 1200, "totalSteps": 9000, "epoch": 0.4, "loss": 0.83, "validLoss": 0.91, "learningRate": 2e-4,
        "tokensPerSecond": 51234.5, "mfu": 0.41, "eta": "3h12m", "updatedAt": "2026-01-01T00:00:00Z",
    }


def test_missing_and_non_finite_values_are_left_out():
    record = {"kind": "mft.progress", "step": 3, "loss": float("nan"), "valid_loss": None, "mfu": float("inf"),
              "lr": "high", "eta_seconds": -1}
    assert progress.progress_status(record) == {"step": 3}


def test_checkpoint_status_fields():
    assert progress.checkpoint_status(CHECKPOINT) == {"latest": "checkpoint-1000", "best": "checkpoint-500",
                                                      "bestValidLoss": 0.9}


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (60, "1m"), (3661, "1h1m"), (11520, "3h12m"), (10800, "3h"), (2 * 86400 + 4 * 3600 + 5, "2d4h"),
])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


@pytest.mark.parametrize(("fields", "text"), [
    ({"step": 1200, "totalSteps": 9000}, "1200/9000 (13%)"), ({"step": 7}, "7"), ({}, None),
])
def test_summary(fields, text):
    assert progress.summary(fields) == text
