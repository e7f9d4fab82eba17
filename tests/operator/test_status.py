"""Status derivation from PyTorchJob condition sequences, pods and trainer reports."""

from __future__ import annotations

import pytest

from mft_operator import progress
from mft_operator.status import Observation, Problem, child_expiry, derive, events, replacements

T0, T1, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z", "2026-01-01T00:03:00Z"


def job(status=None, generation=1):
    return {"metadata": {"name": "j", "generation": generation}, "spec": {"mode": "sft"}, "status": status or {}}


def child(*true_types, completion=None, message="", reason=None):
    conditions = [{"type": t, "status": "True", "reason": reason or f"PyTorchJob{t}", "message": message or f"{t}."}
                  for t in true_types]
    status = {"conditions": conditions}
    if completion:
        status["completionTime"] = completion
    return {"metadata": {"name": "j"}, "status": status}


def pod(replica="master", index=0, **status):
    labels = {"training.kubeflow.org/replica-type": replica, "training.kubeflow.org/replica-index": str(index)}
    return {"metadata": {"name": f"j-{replica}-{index}", "uid": f"{replica}-{index}", "labels": labels}, "status": status}


def terminated(code, reason="Error", finished=T1, message=""):
    return {"name": "pytorch", "state": {"terminated": {"exitCode": code, "reason": reason, "finishedAt": finished,
                                                        "message": message}}}


def run(sequence):
    """Feed observations one after another, as the operator would; returns every status."""
    current = job()
    statuses = []
    for now, seen in sequence:
        new = derive(current, Observation(now=now, **seen))
        statuses.append(new)
        current = job(new)
    return statuses


def conditions(status):
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_pending_until_the_child_exists():
    (status,) = run([(T0, {})])
    assert status["phase"] == "Pending" and status["conditions"] == [] and status["observedGeneration"] == 1


def test_created_running_succeeded():
    statuses = run([
        (T0, {"child": child("Created")}),
        (T1, {"child": child("Created", "Running")}),
        (T2, {"child": child("Created", "Succeeded", completion=T2)}),
    ])
    assert [s["phase"] for s in statuses] == ["Created", "Running", "Succeeded"]
    final = statuses[-1]
    assert conditions(final) == {"Created": "True", "Running": "False", "Succeeded": "True"}
    assert final["startTime"] == T0 and final["completionTime"] == T2
    assert final["pytorchJob"] == "j" and final["restarts"] == 0
    assert "failure" not in final


def test_last_transition_time_changes_only_when_status_flips():
    statuses = run([
        (T0, {"child": child("Created", "Running")}),
        (T1, {"child": child("Created", "Running")}),
        (T2, {"child": child("Created", "Succeeded")}),
    ])
    times = [{c["type"]: c["lastTransitionTime"] for c in s["conditions"]} for s in statuses]
    assert times[0] == times[1] == {"Created": T0, "Running": T0}
    assert times[2] == {"Created": T0, "Running": T2, "Succeeded": T2}


def test_restarting_records_the_failed_replica_then_running_again():
    oom = pod("worker", 1, containerStatuses=[terminated(137, "OOMKilled")])
    statuses = run([
        (T0, {"child": child("Created", "Running")}),
        (T1, {"child": child("Created", "Restarting"), "pods": (pod(), oom)}),
        (T2, {"child": child("Created", "Running")}),
    ])
    assert [s["phase"] for s in statuses] == ["Running", "Restarting", "Running"]
    failure = statuses[1]["failure"]
    assert (failure["replica"], failure["exitCode"], failure["reason"]) == ("worker-1", 137, "OOMKilled")
    assert "resources.memory" in failure["message"]
    assert statuses[2]["failure"] == failure  # why it last restarted stays visible
    assert conditions(statuses[2]) == {"Created": "True", "Running": "True", "Restarting": "False"}


def test_a_failed_pod_seen_before_the_child_restarts_is_why_it_restarted():
    oom = pod("worker", 1, containerStatuses=[terminated(137, "OOMKilled")])
    statuses = run([
        (T0, {"child": child("Created", "Running"), "pods": (pod(), oom)}),  # the child still says Running
        (T1, {"child": child("Created", "Restarting"), "pods": (pod(),)}),  # the failed pod is already gone
    ])
    assert statuses[0]["phase"] == "Running" and statuses[0]["failure"]["exitCode"] == 137
    assert conditions(statuses[0]) == {"Created": "True", "Running": "True"}
    assert next(c for c in statuses[0]["conditions"] if c["type"] == "Running")["message"] == "Running."
    assert statuses[1]["failure"] == statuses[0]["failure"]


def test_failed_with_exit_code_from_the_latest_failed_container():
    pods = (
        pod("master", 0, containerStatuses=[terminated(1, finished=T2, message="ValueError: bad record")]),
        pod("worker", 0, containerStatuses=[{"name": "pytorch", "state": {"running": {}},
                                             "lastState": {"terminated": {"exitCode": 143, "reason": "Error", "finishedAt": T1}}}]),
    )
    statuses = run([
        (T0, {"child": child("Created", "Running")}),
        (T3, {"child": child("Created", "Failed", message="PyTorchJob j has failed."), "pods": pods}),
    ])
    final = statuses[-1]
    assert final["phase"] == "Failed" and conditions(final)["Failed"] == "True"
    assert final["failure"] == {"replica": "master-0", "exitCode": 1, "reason": "Error", "message": "ValueError: bad record"}
    assert final["completionTime"] == T3


def test_failed_without_pods_uses_the_child_condition():
    (status,) = run([(T0, {"child": child("Created", "Failed", reason="DeadlineExceeded", message="past its deadline")})])
    assert status["failure"] == {"reason": "DeadlineExceeded", "message": "past its deadline"}


def test_preflight_failure_of_the_trainer_container():
    preflight = {"name": "pytorch", "state": {"terminated": {"exitCode": 2, "reason": "Error", "finishedAt": T1,
                                                             "message": "data.paths: /data/a does not exist in the pod\n"}}}
    (status,) = run([(T1, {"child": child("Created", "Failed"), "pods": (pod(containerStatuses=[preflight]),)})])
    assert status["failure"]["message"] == "data.paths: /data/a does not exist in the pod"
    assert status["failure"]["exitCode"] == 2


def test_suspended_and_resumed():
    statuses = run([
        (T0, {"child": child("Created", "Running")}),
        (T1, {"child": child("Created", "Suspended")}),
        (T2, {"child": child("Created", "Running")}),
    ])
    assert [s["phase"] for s in statuses] == ["Running", "Suspended", "Running"]
    assert conditions(statuses[-1]) == {"Created": "True", "Running": "True", "Suspended": "False"}


def test_suspended_by_kueue_is_queued_with_the_local_queue_named():
    queued = {"metadata": {"name": "j", "namespace": "ml", "generation": 1},
              "spec": {"mode": "sft", "scheduling": {"queueName": "team-a"}}, "status": {}}
    waiting = derive(queued, Observation(now=T0, child=child("Created", "Suspended")))
    assert waiting["phase"] == "Queued"
    condition = next(c for c in waiting["conditions"] if c["type"] == "Queued")
    assert condition["status"] == "True" and condition["reason"] == "WaitingForAdmission"
    assert "LocalQueue team-a" in condition["message"] and "kubectl -n ml get workloads" in condition["message"]
    assert [e.reason for e in events({}, waiting)] == ["Queued"]
    admitted = derive({**queued, "status": waiting}, Observation(now=T1, child=child("Created", "Running")))
    assert admitted["phase"] == "Running" and conditions(admitted)["Queued"] == "False"


def test_terminal_is_final_even_when_the_child_vanishes():
    statuses = run([
        (T0, {"child": child("Created", "Succeeded")}),
        (T1, {}),  # deleted by ttlSecondsAfterFinished
    ])
    assert statuses[1]["phase"] == "Succeeded" and statuses[1]["conditions"] == statuses[0]["conditions"]


def test_problems_block_and_clear():
    statuses = run([
        (T0, {"problems": (Problem("ClaimNotFound", "PersistentVolumeClaim data not found"),)}),
        (T1, {"child": child("Created")}),
    ])
    assert statuses[0]["phase"] == "Pending"
    assert statuses[0]["conditions"][0] == {"type": "Blocked", "status": "True", "reason": "ClaimNotFound",
                                            "message": "PersistentVolumeClaim data not found",
                                            "lastTransitionTime": T0, "observedGeneration": 1}
    assert conditions(statuses[1])["Blocked"] == "False"


def test_a_terminal_problem_fails_the_job():
    (status,) = run([(T0, {"problems": (Problem("RestartBudgetExhausted", "budget spent", terminal=True),)})])
    assert status["phase"] == "Failed" and status["failure"] == {"reason": "RestartBudgetExhausted", "message": "budget spent"}
    assert conditions(status) == {"Failed": "True"}


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError"])
def test_stuck_pods_block(reason):
    waiting = {"name": "pytorch", "state": {"waiting": {"reason": reason, "message": "registry says no"}}}
    (status,) = run([(T0, {"child": child("Created"), "pods": (pod(containerStatuses=[waiting]),)})])
    blocked = next(c for c in status["conditions"] if c["type"] == "Blocked")
    assert blocked["reason"] == reason and blocked["message"] == f"master-0: pytorch: {reason}: registry says no"


def test_unschedulable_pods_block():
    scheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}
    (status,) = run([(T0, {"child": child("Created"), "pods": (pod("worker", 0, conditions=[scheduled]),)})])
    assert "worker-0: 0/2 nodes" in next(c for c in status["conditions"] if c["type"] == "Blocked")["message"]


def test_progress_and_checkpoints_merge_with_what_was_known():
    first = progress.Reports(progress={"kind": "mft.progress", "step": 10, "total_steps": 100, "loss": 2.0,
                                       "valid_loss": 2.5, "time": 1767225600},
                             checkpoint={"kind": "mft.checkpoint", "latest": "checkpoint-10", "best": "checkpoint-10",
                                         "best_valid_loss": 2.5})
    second = progress.Reports(progress={"kind": "mft.progress", "step": 20, "total_steps": 100, "loss": 1.5,
                                        "time": 1767225660})
    statuses = run([
        (T0, {"child": child("Created", "Running"), "reports": first}),
        (T1, {"child": child("Created", "Running"), "reports": second}),
    ])
    assert statuses[1]["progress"] == {"step": 20, "totalSteps": 100, "loss": 1.5, "validLoss": 2.5,
                                       "updatedAt": "2026-01-01T00:01:00Z", "summary": "20/100 (20%)"}
    assert statuses[1]["checkpoints"] == {"latest": "checkpoint-10", "best": "checkpoint-10", "bestValidLoss": 2.5}


def test_final_progress_is_kept_after_success():
    done = progress.Reports(progress={"kind": "mft.progress", "step": 100, "total_steps": 100})
    statuses = run([
        (T0, {"child": child("Created", "Succeeded")}),
        (T1, {"reports": done}),
    ])
    assert statuses[1]["progress"]["summary"] == "100/100 (100%)"


def test_recreation_counts_a_restart():
    statuses = run([(T0, {"child": child("Created")}), (T1, {"child": child(), "recreated": True})])
    assert [s["restarts"] for s in statuses] == [0, 1]


def test_observed_generation_follows_the_job():
    status = derive(job(generation=7), Observation(now=T0, child=child("Created")))
    assert status["observedGeneration"] == 7
    assert all(c["observedGeneration"] == 7 for c in status["conditions"])


def test_events_for_transitions_problems_and_recreations():
    statuses = run([
        (T0, {"problems": (Problem("ClaimNotFound", "missing data"),)}),
        (T1, {"problems": (Problem("ClaimNotFound", "missing data"),)}),
        (T2, {"child": child("Created", "Running"), "recreated": True}),
        (T3, {"child": child("Created", "Failed", message="boom")}),
    ])
    before = [{}] + statuses[:-1]
    found = [[(e.type, e.reason) for e in events(b, a)] for b, a in zip(before, statuses)]
    assert found == [
        [("Normal", "Pending"), ("Warning", "ClaimNotFound")],
        [],  # the same problem again: no new event
        [("Normal", "Running"), ("Warning", "PyTorchJobRecreated")],
        [("Warning", "Failed")],
    ]


def master(uid, phase="Running"):
    made = pod("master")
    made["metadata"]["uid"] = uid
    made["status"]["phase"] = phase
    return made


def test_each_replaced_pod_counts_one_pod_restart_and_backoff_limit_fails_the_job():
    # The training operator replaces a pod that exits 128-255 but never enforces backoffLimit
    # under restartPolicy ExitCode: the operator counts the restarts itself (default limit 3).
    T4, T5 = "2026-01-01T00:04:00Z", "2026-01-01T00:05:00Z"
    running = child("Created", "Running")
    statuses = run([
        (T0, {"child": running, "pods": (master("a"),)}),
        (T1, {"child": running, "pods": (master("a", "Failed"),)}),  # failed, not replaced yet
        (T1, {"child": running}),  # deleted by the training operator
        (T1, {"child": running, "pods": (master("b"),)}),  # its replacement
        (T2, {"child": running, "pods": (master("b"),)}),  # the same pod again counts nothing
        (T2, {"child": running, "pods": (master("c"),)}),
        (T3, {"child": child("Created", "Restarting"), "pods": (master("d", "Pending"),)}),
        (T4, {"child": running, "pods": (master("e"),)}),
        (T5, {"child": running, "pods": (master("f"),)}),  # after a terminal phase nothing is counted
    ])
    assert [s.get("podRestarts", 0) for s in statuses] == [0, 0, 0, 1, 1, 2, 3, 4, 4]
    assert [s["phase"] for s in statuses][-3:] == ["Restarting", "Failed", "Failed"]
    failed = next(c for c in statuses[-2]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert "restarted failed pods 4 times, more than spec.runPolicy.backoffLimit (3)" in failed["message"]
    assert statuses[-2]["lastPodRestartTime"] == T4 and statuses[-2]["replicaPods"] == {"master-0": "e"}


def test_pods_of_a_suspended_or_recreated_child_are_new_not_replaced():
    statuses = run([
        (T0, {"child": child("Created", "Running"), "pods": (master("a"),)}),
        (T1, {"child": child("Created", "Suspended")}),  # suspension deletes the pods on purpose
        (T2, {"child": child("Created", "Running"), "pods": (master("b"),)}),
        (T3, {"child": child("Created"), "pods": (master("c"),), "recreated": True}),
    ])
    assert [s.get("podRestarts", 0) for s in statuses] == [0, 0, 0, 0]
    assert "replicaPods" not in statuses[1] and statuses[2]["replicaPods"] == {"master-0": "b"}


def test_pods_of_an_earlier_child_of_the_same_name_are_not_its_own():
    earlier = master("old")
    earlier["metadata"]["ownerReferences"] = [{"controller": True, "uid": "earlier-child", "kind": "PyTorchJob"}]
    now = child("Created", "Running")
    now["metadata"]["uid"] = "child"
    statuses = run([(T0, {"child": now, "pods": (earlier,)}), (T1, {"child": now, "pods": (master("new"),)})])
    assert [s.get("replicaPods") for s in statuses] == [{}, {"master-0": "new"}]
    assert statuses[1].get("podRestarts", 0) == 0


def worker(uid, phase="Running"):
    made = pod("worker", 0)
    made["metadata"]["uid"] = uid
    made["status"]["phase"] = phase
    return made


def uids(pods):
    return [p["metadata"]["uid"] for p in pods]


def test_a_replaced_replica_restarts_the_pods_it_left_behind_and_only_once():
    first = replacements({}, (master("m1"), worker("w1")), 2)
    assert first.replaced == () and first.to_delete == () and first.seen == {"master-0": "m1", "worker-0": "w1"}
    restarted = replacements(first.seen, (master("m1"), worker("w2", "Pending")), 2)
    assert restarted.replaced == ("worker-0",) and uids(restarted.to_delete) == ["m1"]
    assert restarted.seen == {"master-0": "stopping:m1", "worker-0": "w2"}
    # The old master may still show, its deletion not yet seen: deleted again (the uid precondition
    # makes that safe), neither new nor another restart.
    lagging = replacements(restarted.seen, (master("m1"), worker("w2")), 2)
    assert lagging.replaced == () and uids(lagging.to_delete) == ["m1"] and lagging.seen == restarted.seen
    after = replacements(restarted.seen, (master("m2"), worker("w2")), 2)  # a new pod, not a replacement
    assert after.replaced == () and after.to_delete == () and after.seen == {"master-0": "m2", "worker-0": "w2"}
    going = master("m1")
    going["metadata"]["deletionTimestamp"] = T1
    assert replacements(first.seen, (going, worker("w2")), 2).to_delete == ()
    assert replacements({"master-0": "m1"}, (master("m2"),), 1).to_delete == ()  # one pod: nothing beside it


def test_replicas_failing_together_count_one_restart_and_keep_their_new_pods():
    recorded = {"master-0": "m1", "worker-0": "w1"}
    for first_seen in ((worker("w2"),), (master("m1", "Failed"), worker("w2"))):  # master gone, or failed
        first = replacements(recorded, first_seen, 2)
        assert first.replaced == ("worker-0",) and first.to_delete == ()
        assert first.seen == {"master-0": "restarting:m1", "worker-0": "w2"}
        then = replacements(first.seen, (master("m2"), worker("w2")), 2)
        assert then.replaced == () and then.to_delete == () and then.seen == {"master-0": "m2", "worker-0": "w2"}


def test_a_pending_replica_joins_the_restarted_ones():
    restarted = replacements({"master-0": "m1", "worker-0": "w1"}, (master("m2"), worker("w1", "Pending")), 2)
    assert restarted.replaced == ("master-0",) and restarted.to_delete == ()
    assert restarted.seen == {"master-0": "m2", "worker-0": "w1"}


def test_a_kill_by_the_operator_or_a_suspension_is_not_why_the_job_restarted():
    oom = worker("w1", "Failed")
    oom["status"]["containerStatuses"] = [terminated(137, "OOMKilled", finished=T1)]
    killed = master("m1", "Failed")  # deleted by the operator, exited 137 (or 1: its peer was gone)
    killed["status"]["containerStatuses"] = [terminated(137, finished=T3)]
    running = two_replica_child(("Created", T0), ("Running", T0))
    statuses = run([
        (T0, {"child": running, "pods": (master("m1"), worker("w1"))}),
        (T1, {"child": running, "pods": (master("m1"), oom)}),
        (T2, {"child": running, "pods": (master("m1"), worker("w2"))}),  # the master is deleted
        (T3, {"child": running, "pods": (killed, worker("w2"))}),
    ])
    assert statuses[2]["replicaPods"]["master-0"] == "stopping:m1"
    assert statuses[3]["failure"]["reason"] == "OOMKilled" and statuses[3]["podRestarts"] == 1
    for suspended in (child("Created", "Suspended"), child("Created", "Running") | {"spec": {"runPolicy": {"suspend": True}}}):
        (status,) = run([(T2, {"child": suspended, "pods": (killed,)})])
        assert "failure" not in status


def test_a_replica_that_failed_with_the_replaced_one_is_a_cause_too():
    failed = master("m1", "Failed")
    failed["status"]["containerStatuses"] = [terminated(137, "OOMKilled", finished=T1)]
    running = two_replica_child(("Created", T0), ("Running", T0))
    statuses = run([(T0, {"child": running, "pods": (master("m1"), worker("w1"))}),
                    (T1, {"child": running, "pods": (failed, worker("w2"))})])  # not deleted: it failed itself
    assert statuses[1]["replicaPods"] == {"master-0": "restarting:m1", "worker-0": "w2"}
    assert (statuses[1]["failure"]["replica"], statuses[1]["failure"]["reason"]) == ("master-0", "OOMKilled")


def test_a_child_that_cannot_be_read_leaves_the_phase_as_it_was_and_says_why():
    missing = Problem("PyTorchJobCRDMissing", "the PyTorchJob API (kubeflow.org/v1) is not installed")
    statuses = run([(T0, {"child": child("Created", "Running")}), (T1, {"problems": (missing,)})])
    assert [s["phase"] for s in statuses] == ["Running", "Running"]
    blocked = next(c for c in statuses[1]["conditions"] if c["type"] == "Blocked")
    assert blocked["status"] == "True" and blocked["reason"] == "PyTorchJobCRDMissing"
    assert events(statuses[0], statuses[1]) and all("Pending" not in e.message for e in events(statuses[0], statuses[1]))


def two_replica_child(*conditions, uid="child-uid"):
    """A PyTorchJob of a master and one worker; ``conditions`` are (type, lastTransitionTime) pairs."""
    return {"metadata": {"name": "j", "uid": uid},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1}, "Worker": {"replicas": 1}}},
            "status": {"conditions": [{"type": t, "status": "True", "reason": f"PyTorchJob{t}",
                                       "lastTransitionTime": when} for t, when in conditions]}}


def created_pod(replica, created):
    made = pod(replica)
    made["metadata"]["creationTimestamp"] = created
    return made


def refused(last, uid="child-uid", **times):
    """The training operator's Warning event for a pod the API server refused."""
    return {"metadata": {"name": "j.1", "uid": "event-uid"}, "type": "Warning", "reason": "FailedCreatePod",
            "involvedObject": {"kind": "PyTorchJob", "namespace": "ml", "name": "j", "uid": uid},
            "message": 'Error creating: pods "j-worker-0" is forbidden: exceeded quota: gpus, requested: '
                       "requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8",
            "lastTimestamp": last, **times}


def blocked(status):
    return next((c for c in status["conditions"] if c["type"] == "Blocked"), None)


def test_a_refused_pod_blocks_the_job_until_every_pod_exists():
    created = two_replica_child(("Created", T0))
    master = created_pod("master", T0)
    statuses = run([
        (T1, {"child": created, "pods": (master,), "child_warnings": (refused(T1),)}),
        (T2, {"child": created, "pods": (master, created_pod("worker", T2)), "child_warnings": (refused(T1),)}),
    ])
    assert statuses[0]["phase"] == "Created"
    condition = blocked(statuses[0])
    assert condition["status"] == "True" and condition["reason"] == "FailedCreatePod"
    assert condition["message"] == ('the training operator cannot create pods: pods "j-worker-0" is forbidden: exceeded '
                                    "quota: gpus, requested: requests.nvidia.com/gpu=8, used: requests.nvidia.com/gpu=8, "
                                    "limited: requests.nvidia.com/gpu=8")
    assert [(e.type, e.reason) for e in events({}, statuses[0])][-1] == ("Warning", "FailedCreatePod")
    assert blocked(statuses[1])["status"] == "False"


def test_a_refusal_counts_only_for_this_child_since_its_last_pod_or_transition():
    restarting = two_replica_child(("Created", T0), ("Restarting", T2))
    master = created_pod("master", T1)

    def refusal_blocks(warning, child=restarting, pods=(master,)):
        (status,) = run([(T3, {"child": child, "pods": pods, "child_warnings": (warning,)})])
        return blocked(status) is not None

    assert refusal_blocks(refused(T2))  # the same second as the last transition still counts
    assert not refusal_blocks(refused(T1))  # before the restart, which replaced the pods
    assert not refusal_blocks(refused(T2), pods=(created_pod("master", T3),))  # a pod made since
    assert not refusal_blocks(refused(T3, uid="an-earlier-child-of-the-same-name"))
    # events.k8s.io's series time is the newest; the times compare at whole seconds.
    assert refusal_blocks(refused(None, eventTime="2026-01-01T00:01:59.250000Z", series={"lastObservedTime": T3}))
    assert refusal_blocks(refused(None, eventTime="2026-01-01T00:02:00.250000Z"))
    resumed_after = [c | {"status": "False"} for c in restarting["status"]["conditions"]]
    assert not refusal_blocks(refused(T1), child=restarting | {"status": {"conditions": resumed_after}})
    other = dict(refused(T3), reason="SettedPodTemplateRestartPolicy")
    assert not refusal_blocks(other)


def test_a_refusal_blocks_a_resumed_child_but_not_a_suspended_one():
    # Resumed: the training operator leaves Suspended=True in its status until the pods exist.
    resumed = two_replica_child(("Created", T0), ("Suspended", T1))
    suspended = resumed | {"spec": {**resumed["spec"], "runPolicy": {"suspend": True}}}
    (status,) = run([(T2, {"child": resumed, "child_warnings": (refused(T2),)})])
    assert status["phase"] == "Suspended" and blocked(status)["reason"] == "FailedCreatePod"
    (status,) = run([(T2, {"child": resumed, "child_warnings": (refused(T0),)})])  # from before the suspension
    assert blocked(status) is None
    (status,) = run([(T2, {"child": suspended, "child_warnings": (refused(T2),)})])  # pods deleted on purpose
    assert blocked(status) is None


def test_a_reported_refusal_stands_until_every_pod_exists():
    # The quota now allows the master but not the worker; the recorder dropped the repeated event.
    created = two_replica_child(("Created", T0))
    statuses = run([
        (T1, {"child": created, "child_warnings": (refused(T1),)}),
        (T2, {"child": created, "pods": (created_pod("master", T2),), "child_warnings": (refused(T1),)}),
        (T3, {"child": created, "pods": (created_pod("master", T2), created_pod("worker", T3)),
              "child_warnings": (refused(T1),)}),
    ])
    assert [blocked(s)["status"] for s in statuses] == ["True", "True", "False"]
    assert blocked(statuses[1])["message"] == blocked(statuses[0])["message"]


def test_an_aggregated_refusal_reads_like_a_single_one():
    combined = refused(T1) | {"message": '(combined from similar events): Error creating: pods "j-worker-9" is '
                                         "forbidden: exceeded quota: gpus"}
    (status,) = run([(T1, {"child": two_replica_child(("Created", T0)), "child_warnings": (combined,)})])
    assert blocked(status)["message"] == ('the training operator cannot create pods: pods "j-worker-9" is forbidden: '
                                          "exceeded quota: gpus")


def test_conditions_stay_within_the_schema_of_metav1_condition():
    from mft_operator.crd import mftjob_schema
    from mft_operator.schema import validate

    crowded = tuple(pod("worker", i, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                  "message": "x" * 100}]) for i in range(400))
    odd = child("Created", "Running", reason="Pod Running!")
    (status,) = run([(T0, {"child": odd, "pods": crowded})])
    running, blocked_now = (next(c for c in status["conditions"] if c["type"] == t) for t in ("Running", "Blocked"))
    assert running["reason"] == "Running"  # a reason that is not CamelCase gives way to the type
    assert len(blocked_now["message"]) == 32768 and blocked_now["message"].endswith("...")
    assert validate(status, mftjob_schema()["properties"]["status"]) == []


@pytest.mark.parametrize("completion, due", [
    ("2026-01-01T00:00:00Z", True), ("2026-01-01t00:00:00z", True), ("2026-01-01T00:00:00", True),
    ("2026-01-01T01:00:00+01:00", True), ("2026-01-01T00:00:30.5Z", False), ("yesterday", False)])
def test_a_finished_childs_ttl_counts_from_the_recorded_completion_time(completion, due):
    finished = {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 30}},
                "status": {"phase": "Succeeded", "completionTime": completion}}
    assert (child_expiry(finished, "2026-01-01T00:00:30Z") is not None) is due
