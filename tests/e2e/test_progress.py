"""Progress end to end: the trainer's ``mft.progress`` / ``mft.checkpoint`` lines in the
master pod's log (served by KWOK from a file, through the apiserver's pods/log) reach
``status.progress`` / ``status.checkpoints`` and the printer columns within 30 s."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .support import Cluster, cri_line, job_manifest, wait_for

pytestmark = pytest.mark.e2e

WITHIN = 30  # seconds: the operator issue's bound from the trainer's report to the MFTJob status


def report(log: Path, record: dict) -> None:
    with open(log, "a") as handle:
        handle.write(cri_line("plain trainer output that is not a record"))
        handle.write(cri_line("[default0]:" + json.dumps(record)))


def test_progress_reaches_status_and_printer_columns(cluster: Cluster, ns: str, tmp_path: Path):
    log = tmp_path / "master.log"
    log.write_text(cri_line("starting"))
    cluster.apply(ns, {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs", "metadata": {"name": "learner-master-0"},
                       "spec": {"logs": [{"containers": ["pytorch"], "logsFile": str(log), "follow": True}]}})
    cluster.apply(ns, job_manifest("learner", nodes=2, duration="1h"))
    cluster.wait_phase(ns, "learner", "Running")

    now = time.time()
    report(log, {"kind": "mft.progress", "step": 100, "total_steps": 1000, "epoch": 0.1, "loss": 2.5,
                 "lr": 0.0002, "tokens_per_second": 51234.5, "eta_seconds": 5400, "time": now})
    progress = wait_for("step 100 in status.progress",
                        lambda: (p := cluster.status(ns, "learner").get("progress", {})).get("step") == 100 and p,
                        WITHIN, describe=lambda: cluster.describe(ns))
    assert progress["totalSteps"] == 1000 and progress["loss"] == 2.5 and progress["epoch"] == 0.1
    assert progress["tokensPerSecond"] == 51234.5 and progress["eta"] == "1h30m"
    assert progress["summary"] == "100/1000 (10%)" and progress["updatedAt"]

    report(log, {"kind": "mft.progress", "step": 200, "total_steps": 1000, "loss": 1.75,
                 "valid_loss": 1.9, "time": time.time()})
    report(log, {"kind": "mft.checkpoint", "name": "checkpoint-200", "latest": "checkpoint-200",
                 "best": "checkpoint-200", "best_valid_loss": 1.9})
    status = wait_for("step 200 and the checkpoint in status",
                      lambda: (s := cluster.status(ns, "learner")).get("progress", {}).get("step") == 200
                      and s.get("checkpoints") and s, WITHIN)
    assert status["progress"]["loss"] == 1.75 and status["progress"]["validLoss"] == 1.9
    assert status["progress"]["epoch"] == 0.1  # kept from the earlier record
    assert status["checkpoints"] == {"latest": "checkpoint-200", "best": "checkpoint-200", "bestValidLoss": 1.9}

    table = cluster.kubectl("get", "mftjobs", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODE", "PHASE", "PROGRESS", "LOSS", "AGE"], table
    assert table[1].split()[:6] == ["learner", "sft", "Running", "200/1000", "(20%)", "1.75"], table
