"""Prometheus metrics of the operator, on their own registry (no process-wide state)."""

from __future__ import annotations

from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .status import ACTIVE, TERMINAL


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconciles = Counter("mft_reconciles", "Reconciliations of MFTJobs, by trigger.",
                                  ["trigger"], registry=self.registry)
        self.errors = Counter("mft_reconcile_errors", "Reconciliations that raised, by exception type.",
                              ["error"], registry=self.registry)
        self.latency = Histogram("mft_reconcile_duration_seconds", "Time one reconciliation takes.",
                                 registry=self.registry)
        self.skipped = Counter("mft_triggers_skipped", "Triggers that needed no reconcile of their own: coalesced "
                               "into one in progress, or the watch echo of our own status patch.",
                               ["reason"], registry=self.registry)
        self.jobs = Gauge("mft_jobs", "MFTJobs by phase.", ["phase"], registry=self.registry)

    def count_phases(self, phases: Iterable[str | None]) -> None:
        tally = Tally(phase or "Pending" for phase in phases)
        for phase in sorted(ACTIVE | TERMINAL):
            self.jobs.labels(phase=phase).set(tally.get(phase, 0))

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
