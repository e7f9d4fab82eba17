"""Parsing the trainer's progress lines out of the master pod's log."""

from __future__ import annotations

import json

import pytest

from mft_operator import progress, schema
from mft_operator.crd import mftjob_schema

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


# ---------------------------------------------------------------- what the log cannot make the operator do

DATA_ERROR = ('mft-train: /data/x/train.jsonl:7: text: expected a string, found object '
              '{"kind": "mft.checkpoint", "best": "checkpoint-1"}')


def test_a_record_further_along_a_line_is_not_a_record():
    # The trainer's data errors end with an excerpt of the bad data record: training data must not
    # be able to set status.checkpoints.
    log = "\n".join([json.dumps(CHECKPOINT), DATA_ERROR, "[default0]:" + DATA_ERROR,
                     "[default0]:step 3 " + json.dumps(PROGRESS), " " + json.dumps(PROGRESS)])
    assert progress.parse_log(log) == progress.Reports(checkpoint=CHECKPOINT)


@pytest.mark.parametrize("prefix", ["", "[default0]:", "[0]:", "[trainer.main-1]:"])
def test_a_record_may_follow_a_torchrun_prefix(prefix):
    assert progress.parse_log(prefix + json.dumps(CHECKPOINT)).checkpoint == CHECKPOINT


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\r", "\x0b"])
def test_lines_end_at_newlines_only(separator):
    # The trainer's data errors echo data with json.dumps(..., ensure_ascii=False), which leaves
    # U+2028, U+2029 and U+0085 unescaped; other output may hold a carriage return or a vertical tab.
    assert progress.parse_log(f"found {separator}" + json.dumps(CHECKPOINT)) == progress.Reports()


@pytest.mark.parametrize("line", [
    '{"kind": "mft.progress", "step": 9, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError
    '{"kind": "mft.progress", "step": ' + "9" * 5000 + "}",  # past Python's 4300-digit limit
], ids=["nested-too-deep", "int-too-long"])
def test_a_line_json_cannot_read_is_no_record(line):
    log = "\n".join([json.dumps(PROGRESS), line])
    assert progress.parse_log(log).progress == PROGRESS


@pytest.mark.parametrize("when", [1e18, -1e11, -1, 253402300800, pytest.param(10**400, id="10**400")])
def test_a_time_outside_years_1970_to_9999_is_left_out(when):
    status = progress.progress_status({**PROGRESS, "time": when})
    assert "updatedAt" not in status and status["step"] == 1200


def test_the_last_second_of_year_9999_is_a_time():
    assert progress.progress_status({**PROGRESS, "time": 253402300799})["updatedAt"] == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 1e300, pytest.param(10**400, id="10**400")])
def test_an_integer_status_cannot_hold_is_left_out(value):
    status = progress.progress_status({**PROGRESS, "step": value, "total_steps": value})
    assert "step" not in status and "totalSteps" not in status and status["loss"] == 0.83


def test_int64_bounds_are_kept():
    status = progress.progress_status({**PROGRESS, "step": 2**63 - 1, "total_steps": -(2**63)})
    assert (status["step"], status["totalSteps"]) == (2**63 - 1, -(2**63))


def test_a_number_beyond_a_double_is_left_out_of_float_fields():
    assert "loss" not in progress.progress_status({**PROGRESS, "loss": 10**400})


@pytest.mark.parametrize(("eta", "text"), [
    (1e300, None), pytest.param(10**400, None, id="10**400"), (100 * 365 * 86400, "36500d"),
])
def test_an_eta_beyond_a_century_is_left_out(eta, text):
    assert progress.progress_status({**PROGRESS, "eta_seconds": eta}).get("eta") == text


@pytest.mark.parametrize(("name", "kept"), [
    ("c" * 255, True), ("c" * 256, False), ("é" * 127, True), ("é" * 128, False), ("checkpoint-\ud800", False),
], ids=["255-bytes", "256-bytes", "254-utf8-bytes", "256-utf8-bytes", "lone-surrogate"])
def test_a_checkpoint_name_longer_than_a_path_component_is_left_out(name, kept):
    status = progress.checkpoint_status({**CHECKPOINT, "latest": name, "best": name})
    expected = {"latest": name, "best": name} if kept else {}
    assert status == {**expected, "bestValidLoss": 0.9}


@pytest.mark.parametrize(("step", "total"), [(2**63 - 1, -1), (-(2**63), 1), (-(2**63), 2**63 - 1)])
def test_status_from_extreme_records_passes_the_crds_status_schema(step, total):
    status_schema = mftjob_schema()["properties"]["status"]["properties"]
    record = {**PROGRESS, "step": step, "total_steps": total, "eta_seconds": 100 * 365 * 86400 - 1,
              "time": 253402300799.9}
    fields = progress.progress_status(record)
    fields["summary"] = progress.summary(fields)
    assert schema.validate(fields, status_schema["progress"], "status.progress") == []


def test_the_crd_holds_the_longest_checkpoint_names_and_no_longer_ones():
    checkpoints = mftjob_schema()["properties"]["status"]["properties"]["checkpoints"]
    longest = progress.checkpoint_status({**CHECKPOINT, "latest": "c" * 255, "best": "é" * 127})
    assert schema.validate(longest, checkpoints, "status.checkpoints") == []
    assert [str(e) for e in schema.validate({"latest": "c" * 256}, checkpoints, "status.checkpoints")] == [
        "status.checkpoints.latest: Too long: may not be more than 255 bytes"]
