"""The watch cache: what a reconcile may take from memory, and when it must ask the API again."""

from __future__ import annotations

from mft_operator.informer import WatchCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _pod(name, job="a", phase="Running"):
    return {"kind": "Pod", "metadata": {"namespace": "ml", "name": name, "labels": {"mft.dev/job-name": job}},
            "status": {"phase": phase}}


def _names(pods):
    return [p["metadata"]["name"] for p in pods]


def test_pods_seen_only_through_events_are_not_a_complete_set():
    cache = WatchCache(clock=Clock())
    cache.observe_pod(_pod("a-worker-0"), deleted=False)
    assert cache.pods("ml", "a") is None  # the master may exist without an event seen yet: list


def test_a_list_and_the_events_after_it_make_the_set():
    clock = Clock()
    cache = WatchCache(clock=clock)
    cache.remember_pods("ml", "a", [_pod("a-worker-0"), _pod("a-master-0")], listed_at=clock())
    clock.now += 1
    cache.observe_pod(_pod("a-worker-1"), deleted=False)
    cache.observe_pod(_pod("a-worker-0"), deleted=True)
    cache.observe_pod(_pod("a-master-0", phase="Failed"), deleted=False)
    cache.observe_pod(_pod("b-master-0", job="b"), deleted=False)
    pods = cache.pods("ml", "a")
    assert _names(pods) == ["a-master-0", "a-worker-1"]
    assert pods[0]["status"]["phase"] == "Failed"


def test_events_during_a_list_survive_its_older_answer():
    clock = Clock()
    cache = WatchCache(clock=clock)
    cache.remember_pods("ml", "a", [_pod("a-master-0"), _pod("a-worker-0")], listed_at=clock())
    list_started = clock.now = 110.0
    clock.now = 111.0  # while the LIST is in flight: a new pod, a deletion, a phase change
    cache.observe_pod(_pod("a-worker-1"), deleted=False)
    cache.observe_pod(_pod("a-worker-0"), deleted=True)
    cache.observe_pod(_pod("a-master-0", phase="Succeeded"), deleted=False)
    answer = [_pod("a-master-0"), _pod("a-worker-0")]  # what the API held when the LIST began
    cache.remember_pods("ml", "a", answer, listed_at=list_started)
    pods = cache.pods("ml", "a")
    assert _names(pods) == ["a-master-0", "a-worker-1"]
    assert pods[0]["status"]["phase"] == "Succeeded"


def test_an_old_set_or_child_is_read_again():
    clock = Clock()
    cache = WatchCache(max_age=60, clock=clock)
    cache.remember_pods("ml", "a", [], listed_at=clock())
    cache.observe_pytorchjob({"metadata": {"namespace": "ml", "name": "a"}}, deleted=False)
    clock.now += 60
    assert cache.pods("ml", "a") == () and cache.pytorchjob("ml", "a") is not None
    clock.now += 1
    assert cache.pods("ml", "a") is None and cache.pytorchjob("ml", "a") is None


def test_what_is_kept_leaves_out_managed_fields_and_is_a_copy():
    cache = WatchCache(clock=Clock())
    child = {"metadata": {"namespace": "ml", "name": "a", "managedFields": [{"manager": "kubectl"}]},
             "status": {"conditions": []}}
    cache.observe_pytorchjob(child, deleted=False)
    child["status"]["conditions"].append({"type": "Running"})  # the event's object, changed afterwards
    assert cache.pytorchjob("ml", "a") == {"metadata": {"namespace": "ml", "name": "a"}, "status": {"conditions": []}}


def test_a_read_never_replaces_a_newer_event_and_a_deletion_is_not_remembered():
    clock = Clock()
    cache = WatchCache(clock=clock)
    read_at = clock()
    clock.now += 1
    cache.observe_pytorchjob({"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "2"}}, deleted=False)
    cache.remember_pytorchjob({"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "1"}}, read_at)
    assert cache.pytorchjob("ml", "a")["metadata"]["resourceVersion"] == "2"
    cache.observe_pytorchjob({"metadata": {"namespace": "ml", "name": "a"}}, deleted=True)
    assert cache.pytorchjob("ml", "a") is None  # unknown: the API decides whether it is gone


def test_a_copy_is_current_until_our_status_write_and_again_at_its_version():
    cache = WatchCache()
    job = {"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "5"}, "spec": {}}
    cache.observe_job(job)
    assert cache.is_current(job)  # nothing written yet: nobody else writes status
    cache.wrote_status({**job, "metadata": {**job["metadata"], "resourceVersion": "6"}, "status": {"phase": "Created"}})
    assert not cache.is_current(job)
    newest = cache.job("ml", "a")
    assert newest["status"] == {"phase": "Created"} and cache.is_current(newest)
    assert cache.is_own_status_write("ml", "a", "6") and not cache.is_own_status_write("ml", "a", "5")
    newest["status"]["phase"] = "changed by a caller"
    assert cache.job("ml", "a")["status"]["phase"] == "Created"  # callers get their own copy


def test_forgetting_a_job_drops_its_copy_version_and_children():
    clock = Clock()
    cache = WatchCache(clock=clock)
    job = {"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "6"}}
    cache.wrote_status(job)
    cache.remember_pods("ml", "a", [_pod("a-master-0")], listed_at=clock())
    cache.observe_pytorchjob({"metadata": {"namespace": "ml", "name": "a"}}, deleted=False)
    cache.forget_job("ml", "a")
    assert cache.job("ml", "a") is None and cache.pods("ml", "a") is None and cache.pytorchjob("ml", "a") is None
    assert cache.is_current({"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "1"}})
    cache.observe_pod(_pod("a-master-0"), deleted=True)  # the garbage collector's deletions leave nothing
    assert cache._pod_sets == {}


def _warning(uid, job="a", reason="FailedCreatePod"):
    return {"kind": "Event", "metadata": {"namespace": "ml", "name": f"{job}.{uid}", "uid": uid, "managedFields": [{}]},
            "involvedObject": {"kind": "PyTorchJob", "namespace": "ml", "name": job}, "type": "Warning", "reason": reason}


def test_warnings_about_a_pytorchjob_are_kept_until_their_event_or_job_goes():
    cache = WatchCache(clock=Clock())
    assert cache.observe_child_warning(_warning("e1"), deleted=False) == ("ml", "a")
    cache.observe_child_warning(_warning("e2", reason="FailedCreateService"), deleted=False)
    cache.observe_child_warning(_warning("e1") | {"count": 2}, deleted=False)  # a repetition updates the Event
    cache.observe_child_warning(_warning("e3", job="b"), deleted=False)
    kept = {e["metadata"]["uid"]: e for e in cache.child_warnings("ml", "a")}
    assert set(kept) == {"e1", "e2"} and kept["e1"]["count"] == 2 and "managedFields" not in kept["e1"]["metadata"]
    cache.observe_child_warning(_warning("e2"), deleted=True)  # Events expire (an hour, by default)
    assert [e["metadata"]["uid"] for e in cache.child_warnings("ml", "a")] == ["e1"]
    cache.forget_job("ml", "a")
    assert cache.child_warnings("ml", "a") == () and len(cache.child_warnings("ml", "b")) == 1
    cache.observe_child_warning(_warning("e3", job="b"), deleted=True)
    assert cache._child_warnings == {}


def test_warnings_whose_deletion_was_missed_are_dropped_after_two_hours():
    clock = Clock()
    cache = WatchCache(clock=clock)
    cache.observe_child_warning(_warning("old"), deleted=False)
    clock.now += 3600
    cache.observe_child_warning(_warning("repeated"), deleted=False)
    cache.observe_child_warning(_warning("b", job="b"), deleted=False)
    clock.now += 3601
    cache.observe_child_warning(_warning("repeated") | {"count": 9}, deleted=False)  # confirmed by a repetition
    cache.prune_child_warnings()
    assert [e["metadata"]["uid"] for e in cache.child_warnings("ml", "a")] == ["repeated"]
    assert len(cache.child_warnings("ml", "b")) == 1
    clock.now += 3600
    cache.prune_child_warnings()
    assert cache.child_warnings("ml", "b") == () and len(cache.child_warnings("ml", "a")) == 1
    assert ("ml", "b") not in cache._child_warnings


def test_a_late_event_of_a_replaced_pod_leaves_its_replacement_alone():
    clock = Clock()
    cache = WatchCache(clock=clock)
    old, new = _pod("a-master-0"), _pod("a-master-0")
    old["metadata"].update(uid="m1", creationTimestamp="2026-01-01T00:00:00Z")
    new["metadata"].update(uid="m2", creationTimestamp="2026-01-01T00:05:00Z")
    cache.remember_pods("ml", "a", [], listed_at=clock())
    cache.observe_pod(new, deleted=False)
    cache.observe_pod(old, deleted=False)  # a modification of the old pod, delivered late
    cache.observe_pod(old, deleted=True)  # and its deletion
    assert [p["metadata"]["uid"] for p in cache.pods("ml", "a")] == ["m2"]
    cache.observe_pod(new, deleted=True)
    assert cache.pods("ml", "a") == ()


def test_within_one_second_the_resource_version_tells_the_replaced_pod_from_its_replacement():
    cache = WatchCache(clock=Clock())
    old, new = _pod("a-master-0"), _pod("a-master-0")
    old["metadata"].update(uid="m1", creationTimestamp="2026-01-01T00:00:00Z", resourceVersion="1040")
    new["metadata"].update(uid="m2", creationTimestamp="2026-01-01T00:00:00Z", resourceVersion="1052")
    cache.remember_pods("ml", "a", [], listed_at=cache.clock())
    cache.observe_pod(new, deleted=False)
    cache.observe_pod(old, deleted=False)  # a late modification of the replaced pod, same second
    assert [p["metadata"]["uid"] for p in cache.pods("ml", "a")] == ["m2"]
    opaque = {**old, "metadata": {**old["metadata"], "resourceVersion": "a1"}}
    cache.observe_pod(opaque, deleted=False)  # versions that are not integers decide nothing
    assert [p["metadata"]["uid"] for p in cache.pods("ml", "a")] == ["m1"]


def _child(conditions=()):
    return {"metadata": {"namespace": "ml", "name": "a", "uid": "c1"},
            "status": {"conditions": [{"type": t, "status": "True"} for t in conditions]}}


def test_a_child_deleted_once_finished_leaves_its_last_state_until_the_outcome_is_written():
    cache = WatchCache()
    cache.observe_pytorchjob(_child(["Created", "Running"]), deleted=True)
    assert cache.finished_pytorchjob("ml", "a") is None  # deleted while running: lost, not finished
    cache.observe_pytorchjob(_child(["Created", "Succeeded"]), deleted=True)
    assert cache.pytorchjob("ml", "a") is None
    assert cache.finished_pytorchjob("ml", "a")["metadata"]["uid"] == "c1"
    cache.wrote_status({"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "7"},
                        "status": {"phase": "Running"}})
    assert cache.finished_pytorchjob("ml", "a") is not None
    cache.wrote_status({"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "8"},
                        "status": {"phase": "Succeeded"}})
    assert cache.finished_pytorchjob("ml", "a") is None


def test_a_new_child_or_a_forgotten_job_drops_the_last_state_of_a_finished_one():
    clock = Clock()
    cache = WatchCache(clock=clock)
    for renewal in (lambda: cache.observe_pytorchjob(_child(), deleted=False),
                    lambda: cache.remember_pytorchjob(_child(), clock()),
                    lambda: cache.forget_job("ml", "a")):
        cache.observe_pytorchjob(_child(["Failed"]), deleted=True)
        clock.now += 1
        renewal()
        assert cache.finished_pytorchjob("ml", "a") is None


def test_no_last_state_is_kept_for_a_job_whose_outcome_is_recorded():
    """The usual TTL deletion comes after the outcome was written: keeping the child would leak it."""
    cache = WatchCache()
    cache.observe_job({"metadata": {"namespace": "ml", "name": "a", "resourceVersion": "9"},
                       "status": {"phase": "Succeeded"}})
    cache.observe_pytorchjob(_child(["Created", "Succeeded"]), deleted=True)
    assert cache.finished_pytorchjob("ml", "a") is None and cache._finished == {}


def _job(name, namespace="ml", version="1"):
    return {"kind": "MFTJob", "metadata": {"namespace": namespace, "name": name, "resourceVersion": version}}


def test_a_list_replaces_older_copies_and_reports_the_jobs_it_no_longer_has():
    clock = Clock()
    cache = WatchCache(clock=clock)
    for job in (_job("edited"), _job("deleted"), _job("elsewhere", namespace="other")):
        cache.observe_job(job)
    clock.now += 1
    listed_at = clock()
    clock.now += 1
    cache.observe_job(_job("new-during-the-list"))
    gone = cache.replace_jobs([_job("edited", version="2")], "ml", listed_at)
    assert gone == [("ml", "deleted")]  # not another namespace's, nor one delivered since the list began
    assert cache.job("ml", "edited")["metadata"]["resourceVersion"] == "2"  # a missed modification repaired
    cache.observe_job(_job("edited", version="3"))
    cache.replace_jobs([_job("edited", version="2"), _job("new-during-the-list")], None, listed_at)
    assert cache.job("ml", "edited")["metadata"]["resourceVersion"] == "3"  # newer than the list: kept
