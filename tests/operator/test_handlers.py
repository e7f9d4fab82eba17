"""The kopf edge: trigger routing, polling and the registry (no cluster needed)."""

from __future__ import annotations

import copy
import logging
import threading
import time

import kopf
import pytest

from mft_operator import handlers, status
from mft_operator.informer import WatchCache
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


def _runtime(cluster, cache=None):
    return handlers.Runtime(Settings(), cluster, Metrics(), clock=lambda: "2026-01-01T00:00:00Z", cache=cache)


def _passes(runtime):
    return runtime.metrics.registry.get_sample_value("mft_reconcile_duration_seconds_count")


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
    assert watched == {"mftjob", "pytorchjob", "pod", "pytorchjob-warning"}
    assert not list(registry._changing.get_all_handlers()) and not list(registry._spawning.get_all_handlers())


def test_kopf_keeps_no_diff_base_as_no_handler_compares_one():
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Settings(max_concurrent_reconciles=4))
    body = kopf.Body(_job("a"))
    storage = settings.persistence.diffbase_storage
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    assert settings.execution.max_workers == 4 and not settings.posting.enabled


def test_children_and_their_warnings_are_filtered_by_the_api_server():
    settings = kopf.OperatorSettings()
    handlers.configure(settings, Settings())
    pods, events = kopf.Resource("", "v1", "pods", kind="Pod"), kopf.Resource("", "v1", "events", kind="Event")
    pytorchjobs = kopf.Resource("kubeflow.org", "v1", "pytorchjobs", kind="PyTorchJob")
    mftjobs = kopf.Resource("mft.dev", "v1alpha1", "mftjobs", kind="MFTJob")
    new_events = kopf.Resource("events.k8s.io", "v1", "events", kind="Event")
    labels, fields = settings.watching.label_selectors, settings.watching.field_selectors
    assert list(labels.collect(pods)) == list(labels.collect(pytorchjobs)) == ["app.kubernetes.io/managed-by=mft-operator"]
    assert list(fields.collect(events)) == ["involvedObject.kind=PyTorchJob,type=Warning,reason=FailedCreatePod"]
    assert not list(labels.collect(mftjobs)) and not list(fields.collect(mftjobs)) and not list(fields.collect(new_events))


def test_a_refused_pod_reported_by_the_training_operator_blocks_the_job():
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)
    on_warning = next(h.fn for h in handlers.build_registry(runtime)._watching.get_all_handlers()
                      if h.id == "pytorchjob-warning")
    runtime.reconcile("ml", "a", "mftjob")
    child_uid = cluster.objects[("PyTorchJob", "ml", "a")]["metadata"]["uid"]

    def warning(name, uid, kind="ADDED"):
        body = {"metadata": {"namespace": "ml", "name": f"{name}.1", "uid": f"event-{name}"}, "type": "Warning",
                "reason": "FailedCreatePod", "message": f'Error creating: pods "{name}-master-0" is forbidden: quota',
                "involvedObject": {"kind": "PyTorchJob", "namespace": "ml", "name": name, "uid": uid},
                "lastTimestamp": "2026-01-01T00:00:00Z"}
        on_warning(type=kind, body=kopf.Body(body))

    warning("a", child_uid)
    blocked = cluster.jobs[("ml", "a")]["status"]["conditions"][-1]
    assert (blocked["type"], blocked["status"], blocked["reason"]) == ("Blocked", "True", "FailedCreatePod")
    assert blocked["message"] == 'the training operator cannot create pods: pods "a-master-0" is forbidden: quota'
    passes = _passes(runtime)
    warning("someone-elses", "other-uid")  # about a PyTorchJob of no known MFTJob: no pass, no read
    assert _passes(runtime) == passes and cluster.job_reads == 1
    warning("a", child_uid, kind="DELETED")  # expired: nothing to reconcile for
    assert _passes(runtime) == passes and runtime.cache.child_warnings("ml", "a") == ()


def test_per_event_logs_of_kopf_and_probes_are_kept_only_for_debugging():
    info, debug, error = logging.INFO, logging.DEBUG, logging.ERROR
    assert handlers.log_levels("INFO") == {"": info, "kopf.objects": logging.WARNING, "aiohttp.access": logging.WARNING}
    assert handlers.log_levels("DEBUG") == {"": debug, "kopf.objects": debug, "aiohttp.access": debug}
    assert handlers.log_levels("ERROR") == {"": error, "kopf.objects": error, "aiohttp.access": error}


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
    assert _passes(runtime) == 2  # the running pass and exactly one more for the four triggers
    assert cluster.job_reads == 1  # the second pass took the copy the first one's status write returned
    assert cluster.creates == 3  # ConfigMap, checkpoint PVC and PyTorchJob, each created once
    assert runtime.metrics.registry.get_sample_value("mft_triggers_skipped_total", {"reason": "coalesced"}) == 4
    runtime.reconcile("ml", "a", "pod")  # nothing running any more: reconciled at once
    assert _passes(runtime) == 3


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


def test_children_come_from_the_watch_cache_until_it_is_too_old():
    cluster = _cluster_with_job("a")
    clock = [1000.0]
    runtime = _runtime(cluster, WatchCache(clock=lambda: clock[0]))
    runtime.reconcile("ml", "a", "mftjob")
    assert ("PyTorchJob", "ml", "a") in cluster.objects and cluster.job_reads == 1
    runtime.reconcile("ml", "a", "pytorchjob")  # created just now: no pods yet, nothing read
    assert (cluster.child_reads, cluster.pod_lists, cluster.job_reads) == (0, 0, 1)

    pod = {"kind": "Pod", "metadata": {"namespace": "ml", "name": "a-master-0", "uid": "m1", "labels": {
        "mft.dev/job-name": "a", status.REPLICA_TYPE_LABEL: "master", status.REPLICA_INDEX_LABEL: "0"}},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": "no such image"}}}]}}
    cluster.pods.append(pod)
    runtime.cache.observe_pod(pod, deleted=False)  # the pod's watch event, as the handler passes it on
    runtime.reconcile("ml", "a", "pod")
    assert cluster.pod_lists == 0
    assert cluster.jobs[("ml", "a")]["status"]["conditions"][-1]["reason"] == "ImagePullBackOff"

    clock[0] += WatchCache().max_age + 1  # nothing confirmed them for too long: read both again
    runtime.reconcile("ml", "a", "timer")
    assert (cluster.child_reads, cluster.pod_lists) == (1, 1)

    child = cluster.objects.pop(("PyTorchJob", "ml", "a"))  # deleted by hand: recreated after a read says so
    runtime.cache.observe_pytorchjob(child, deleted=True)
    runtime.reconcile("ml", "a", "pytorchjob")
    assert cluster.child_reads == 2 and cluster.jobs[("ml", "a")]["status"]["restarts"] == 1


def test_a_child_deleted_right_after_it_finished_is_not_created_again():
    """The watch delivers the PyTorchJob's last update (Succeeded) and its deletion (by hand, say)
    before a pass reads it: the pass takes the outcome from the deleted child's last state."""
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster, WatchCache())
    runtime.reconcile("ml", "a", "mftjob")
    creates = cluster.creates
    child = cluster.objects.pop(("PyTorchJob", "ml", "a"))
    child["status"] = {"conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded",
                                       "message": "done"}], "completionTime": "2026-01-01T00:00:09Z"}
    runtime.cache.observe_pytorchjob(child, deleted=False)
    runtime.cache.observe_pytorchjob(child, deleted=True)
    runtime.reconcile("ml", "a", "pytorchjob")
    written = cluster.jobs[("ml", "a")]["status"]
    assert written["phase"] == "Succeeded" and written["completionTime"] == "2026-01-01T00:00:09Z"
    assert cluster.creates == creates and written["restarts"] == 0
    assert runtime.cache.finished_pytorchjob("ml", "a") is None  # the outcome is recorded


def test_poll_resyncs_waiting_jobs_once_a_minute_and_running_ones_every_half_interval():
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)
    interval, key = runtime.settings.progress_interval_seconds, ("ml", "a")
    runtime.reconcile("ml", "a", "mftjob")
    assert cluster.jobs[key]["status"]["phase"] == "Created"

    def polled():
        return runtime.metrics.registry.get_sample_value("mft_reconciles_total", {"trigger": "timer"}) or 0

    runtime._last_pass[key] -= interval  # a child that has not started: not due yet
    runtime.poll_once()
    assert polled() == 0
    assert runtime.metrics.registry.get_sample_value("mft_triggers_skipped_total",
                                                     {"reason": "recently-reconciled"}) == 1
    runtime._last_pass[key] -= handlers.RESYNC_SECONDS
    runtime.poll_once()
    assert polled() == 1

    running = copy.deepcopy(cluster.jobs[key])
    running["status"]["phase"] = "Running"  # progress: due every half interval
    runtime.cache.observe_job(running)  # as its watch event delivers it
    runtime._last_pass[key] = time.monotonic() - interval / 4
    runtime.poll_once()
    assert polled() == 1
    runtime._last_pass[key] = time.monotonic() - interval / 2 - 0.01
    runtime.poll_once()
    assert polled() == 2


def test_poll_deletes_a_finished_jobs_child_once_its_ttl_is_due():
    """Nothing else triggers a pass for a finished job: the poll looks for children due for deletion."""
    cluster = _cluster_with_job("a")
    cluster.jobs[("ml", "a")]["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 60}
    clock = ["2026-01-01T00:00:00Z"]
    runtime = handlers.Runtime(Settings(), cluster, Metrics(), clock=lambda: clock[0], cache=WatchCache())
    runtime.reconcile("ml", "a", "mftjob")
    child = cluster.objects[("PyTorchJob", "ml", "a")]
    child["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}], "completionTime": clock[0]}
    runtime.cache.observe_pytorchjob(copy.deepcopy(child), deleted=False)
    runtime.reconcile("ml", "a", "pytorchjob")
    assert cluster.jobs[("ml", "a")]["status"]["phase"] == "Succeeded"
    clock[0] = "2026-01-01T00:00:59Z"
    runtime.poll_once()
    assert cluster.deleted_children == []
    clock[0] = "2026-01-01T00:01:00Z"
    runtime.poll_once()
    assert cluster.deleted_children == ["a"]
    runtime.cache.observe_pytorchjob(child, deleted=True)
    passes = _passes(runtime)
    runtime.poll_once()
    assert _passes(runtime) == passes  # gone: nothing left to do for it


def test_a_missed_deletion_of_a_finished_jobs_child_stops_its_polls_after_one_read():
    """The watch lost the deletion event (a relist): the first read that finds the child gone makes
    the cache forget it, and the poll leaves the finished job alone."""
    clock = [1000.0]
    cluster = _cluster_with_job("a")
    cluster.jobs[("ml", "a")]["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 0}
    runtime = _runtime(cluster, WatchCache(clock=lambda: clock[0]))
    runtime.reconcile("ml", "a", "mftjob")
    child = cluster.objects[("PyTorchJob", "ml", "a")]
    child["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}], "completionTime": "2026-01-01T00:00:00Z"}
    runtime.cache.observe_pytorchjob(copy.deepcopy(child), deleted=False)
    del cluster.objects[("PyTorchJob", "ml", "a")]  # deleted, and no event says so
    runtime.reconcile("ml", "a", "pytorchjob")
    assert cluster.jobs[("ml", "a")]["status"]["phase"] == "Succeeded" and runtime.cache.knows_pytorchjob("ml", "a")
    clock[0] += WatchCache().max_age + 1
    runtime.poll_once()
    assert not runtime.cache.knows_pytorchjob("ml", "a")
    passes = _passes(runtime)
    runtime.poll_once()
    assert _passes(runtime) == passes


def _handler(runtime, handler_id):
    return next(h.fn for h in handlers.build_registry(runtime)._watching.get_all_handlers() if h.id == handler_id)


def test_a_job_deleted_while_its_deletion_event_was_missed_does_not_bring_its_child_back():
    """A watch that expires relists without reporting deletions: the MFTJob stays in memory, and
    the garbage collector's deletion of its PyTorchJob must not lead to a new one (owned by the
    deleted job, collected again, recreated again...)."""
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)
    runtime.reconcile("ml", "a", "mftjob")
    child = cluster.objects.pop(("PyTorchJob", "ml", "a"))
    del cluster.jobs[("ml", "a")]  # deleted; its DELETED event never came
    creates = cluster.creates
    _handler(runtime, "pytorchjob")(type="DELETED", body=kopf.Body(child), namespace="ml")
    assert cluster.creates == creates and ("PyTorchJob", "ml", "a") not in cluster.objects
    assert not runtime.cache.has_job("ml", "a")


def test_a_status_write_that_finds_the_job_deleted_forgets_it():
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)

    def deleted(job, new_status):
        raise handlers.reconcile.Gone("ml/a")

    runtime.cache.observe_job(cluster.jobs[("ml", "a")])
    cluster.patch_status = deleted
    runtime.reconcile("ml", "a", "mftjob")
    assert not runtime.cache.has_job("ml", "a")
    assert runtime.metrics.registry.get_sample_value("mft_reconcile_errors_total", {"error": "Gone"}) is None


def test_the_poll_forgets_jobs_its_list_no_longer_returns():
    cluster = _cluster_with_job("a")
    cluster.jobs[("ml", "b")] = _job("b")
    runtime = _runtime(cluster)
    listed = cluster.list_jobs
    lists = []
    cluster.list_jobs = lambda namespace: lists.append(namespace) or listed(namespace)
    runtime.poll_once()
    assert runtime.cache.has_job("ml", "a") and runtime.cache.has_job("ml", "b")
    del cluster.jobs[("ml", "b")]
    runtime.poll_once()  # from the watch cache: the API is listed once a minute
    assert runtime.cache.has_job("ml", "b") and lists == [None]
    runtime._last_list -= handlers.LIST_SECONDS
    runtime.poll_once()
    assert runtime.cache.has_job("ml", "a") and not runtime.cache.has_job("ml", "b") and lists == [None, None]


def test_a_job_that_arrives_while_the_poll_lists_is_kept():
    cluster = _cluster_with_job("a")
    runtime = _runtime(cluster)
    listed = cluster.list_jobs

    def list_then_see_a_new_job(namespace):
        jobs = listed(namespace)
        runtime.cache.observe_job(_job("new"))  # its watch event comes after the list was read
        return jobs

    cluster.list_jobs = list_then_see_a_new_job
    runtime.poll_once()
    assert runtime.cache.has_job("ml", "new")


def test_one_namespace_that_cannot_be_listed_does_not_stop_the_poll_of_the_others(caplog):
    cluster = _cluster_with_job("a")
    listed = cluster.list_jobs

    def forbidden_in_gone(namespace):
        if namespace == "gone":
            raise handlers.reconcile.RequestFailed("cannot list the MFTJobs of namespace gone: 403 Forbidden")
        return listed(namespace)

    cluster.list_jobs = forbidden_in_gone
    runtime = handlers.Runtime(Settings(namespaces=("gone", "ml")), cluster, Metrics(),
                               clock=lambda: "2026-01-01T00:00:00Z")
    with caplog.at_level(logging.WARNING):
        runtime.poll_once()
    assert ("PyTorchJob", "ml", "a") in cluster.objects
    assert "403 Forbidden" in caplog.text
    assert runtime.metrics.registry.get_sample_value("mft_reconcile_errors_total", {"error": "poll-list"}) == 1


def test_liveness_fails_once_the_poll_is_stuck(monkeypatch):
    runtime = _runtime(_cluster_with_job("a"))
    runtime.poll_once()
    assert runtime.seconds_since_poll() < 5
    started = time.monotonic()
    monkeypatch.setattr(handlers.time, "monotonic", lambda: started + handlers.POLL_STALL_SECONDS + 1)
    with pytest.raises(kopf.PermanentError, match="the poll has not completed for"):
        runtime.seconds_since_poll()
    probes = {h.id for h in handlers.build_registry(runtime)._activities.get_all_handlers()}
    assert "secondsSincePoll" in probes
