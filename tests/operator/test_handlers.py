"""The kopf edge: trigger routing, polling and the registry (no cluster needed)."""

from __future__ import annotations

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


def test_poll_reconciles_active_jobs_and_counts_phases():
    cluster = FakeCluster()
    for claim in ("shared-models", "code-data"):
        cluster.claim("ml", claim)
    cluster.jobs[("ml", "a")] = _job("a")
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
