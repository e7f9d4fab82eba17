"""The kopf edge: trigger routing, polling and the registry (no cluster needed)."""

from __future__ import annotations

import copy
import threading
import time

from mft_operator import handlers
from mft_operator.metrics import Metrics
from mft_operator.settings import Settings

from .fake_cluster import FakeCluster
from .helpers import ROOT, load


def test_owner_job_name_from_owner_reference_or_label():
    child = {"metadata": {"ownerReferences": [{"apiVersion": "mft.dev/v1alpha1", "kind": "MFTJob", "name": "j",
                                               "controller": True}]}}
    pod = {"metadata": {"labels": {"mft.dev/job-name": "k"},
                        "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "k",
                                             "controller": True}]}}
    assert handlers.owner_job_name(child) == "j"
    assert handlers.owner_job_name(pod) == "k"
    assert handlers.owner_job_name({"metadata": {}}) is None


def _runtime(cluster):
    return handlers.Runtime(Settings(), cluster, Metrics(), clock=lambda: "2026-01-01T00:00:00Z")


def _job(name, **status):
    job = load(ROOT / "examples" / "sft.yaml")
    job["metadata"].update(name=name, namespace="ml", uid=f"uid-{name}", generation=1)
    job["status"] = status
    return job


def _cluster_with_job(name):
    """A cluster with an MFTJob from examples/sft.yaml and the claims it mounts."""
    cluster = FakeCluster()
    for claim in ("shared-models", "code-data"):
        cluster.claim("ml", claim)
    cluster.jobs[("ml", name)] = _job(name)
    return cluster


def test_poll_reconciles_active_jobs_and_counts_phases():
    cluster = _cluster_with_job("a")
    cluster.jobs[("ml", "b")] = _job("b", phase="Succeeded", pytorchJob="b")
    runtime = _runtime(cluster)
    runtime.poll_once()
    assert ("PyTorchJob", "ml", "a") in cluster.objects and ("PyTorchJob", "ml", "b") not in cluster.objects
    assert runtime.metrics.registry.get_sample_value("mft_jobs", {"phase": "Succeeded"}) == 1
    assert runtime.metrics.registry.get_sample_value("mft_reconciles_total", {"trigger": "timer"}) == 1


def test_a_failing_reconcile_is_counted_not_raised():
    cluster = FakeCluster()
    cluster.jobs[("ml", "a")] = _job("a")
    cluster.get = None  # any call fails
    runtime = _runtime(cluster)
    runtime.reconcile("ml", "a", "mftjob")
    assert runtime.metrics.registry.get_sample_value("mft_reconcile_errors_total", {"error": "TypeError"}) == 1


def test_registry_has_event_handlers_only():
    registry = handlers.build_registry(_runtime(FakeCluster()))
    watched = {h.id for h in registry._watching.get_all_handlers()}
    assert watched == {"mftjob", "pytorchjob", "pod"}
    assert not list(registry._changing.get_all_handlers()) and not list(registry._spawning.get_all_handlers())


def test_triggers_arriving_during_a_reconcile_coalesce_into_one_more_pass():
    cluster = _cluster_with_job("a")
    inside, release = threading.Event(), threading.Event()
    read = cluster.get_job

    def slow_first_read(namespace, name):
        if not inside.is_set():
            inside.set()
            release.wait(5)
        return read(namespace, name)

    cluster.get_job = slow_first_read
    runtime = _runtime(cluster)
    first = threading.Thread(target=runtime.reconcile, args=("ml", "a", "mftjob"))
    first.start()
    assert inside.wait(5)
    for trigger in ("pod", "pod", "pytorchjob", "timer"):  # each returns at once: the first one is running
        runtime.reconcile("ml", "a", trigger)
    release.set()
    first.join(5)
    assert cluster.job_reads == 2  # the running pass and exactly one more for the four triggers
    assert cluster.creates == 3  # ConfigMap, checkpoint PVC and PyTorchJob, each created once
    assert runtime.metrics.registry.get_sample_value("mft_triggers_skipped_total", {"reason": "coalesced"}) == 4
    runtime.reconcile("ml", "a", "pod")  # nothing running any more: reconciled at once
    assert cluster.job_reads == 3


def test_watch_copies_save_reads_and_our_own_status_echo_is_skipped():
    cluster = _cluster_with_job("a")
    stored = cluster.jobs[("ml", "a")]
    stored["metadata"]["resourceVersion"] = "100"
    runtime = _runtime(cluster)
    registry = handlers.build_registry(runtime)
    on_mftjob = next(h.fn for h in registry._watching.get_all_handlers() if h.id == "mftjob")

    def event(kind, body):
        on_mftjob(type=kind, name="a", namespace="ml", body=copy.deepcopy(body))

    def skipped(reason):
        return runtime.metrics.registry.get_sample_value("mft_triggers_skipped_total", {"reason": reason}) or 0

    event("ADDED", stored)  # a new job: created from the event's copy, no read
    assert cluster.job_reads == 0 and ("PyTorchJob", "ml", "a") in cluster.objects
    event("MODIFIED", stored)  # the echo of the status patch just made: nothing new
    assert cluster.job_reads == 0 and skipped("own-status-write") == 1

    stored["metadata"]["resourceVersion"] = "user-edit"
    event("MODIFIED", stored)  # current copy: reconciled from it, no read
    assert cluster.job_reads == 0 and skipped("stale-copy") == 0

    lagging = copy.deepcopy(stored)
    lagging["metadata"]["resourceVersion"] = "99"
    lagging["status"].update(phase="Running", restarts=7)  # an older state: must never be written back
    event("MODIFIED", lagging)  # the status write is refused; read again and passed again
    assert cluster.job_reads == 1 and skipped("stale-copy") == 1
    assert cluster.jobs[("ml", "a")]["status"].get("restarts", 0) == 0


def test_creating_the_child_skips_the_pod_list_and_later_passes_list_pods():
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)
    runtime.reconcile("ml", "a", "mftjob")
    assert ("PyTorchJob", "ml", "a") in cluster.objects and cluster.pod_lists == 0
    runtime.reconcile("ml", "a", "pytorchjob")
    assert cluster.pod_lists == 1


def test_poll_resyncs_waiting_jobs_once_a_minute_and_running_ones_every_half_interval():
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)
    interval, key = runtime.settings.progress_interval_seconds, ("ml", "a")
    runtime.reconcile("ml", "a", "mftjob")
    assert cluster.jobs[key]["status"]["phase"] == "Created" and cluster.pod_lists == 0

    runtime._last_pass[key] -= interval  # a child that has not started: not due yet
    runtime.poll_once()
    assert cluster.pod_lists == 0
    assert runtime.metrics.registry.get_sample_value("mft_triggers_skipped_total",
                                                     {"reason": "recently-reconciled"}) == 1
    runtime._last_pass[key] -= handlers.RESYNC_SECONDS
    runtime.poll_once()
    assert cluster.pod_lists == 1

    cluster.jobs[key]["status"]["phase"] = "Running"  # progress: due every half interval
    runtime._last_pass[key] = time.monotonic() - interval / 4
    runtime.poll_once()
    assert cluster.pod_lists == 1
    runtime._last_pass[key] = time.monotonic() - interval / 2 - 0.01
    runtime.poll_once()
    assert cluster.pod_lists == 2
