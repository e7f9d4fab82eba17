"""The reconciler's lifecycle decisions, against an in-memory cluster."""

from __future__ import annotations

import copy
import json

import pytest

from mft_operator import reconcile, render
from mft_operator.settings import Settings

from .fake_cluster import FakeCluster
from .helpers import ROOT, load

NOW = "2026-01-01T00:00:00Z"
SETTINGS = Settings()


def lora_job(**status):
    job = load(ROOT / "examples" / "lora.yaml")
    job["metadata"].update(namespace="ml", uid="uid-1", generation=1)
    job["status"] = status
    return job


def cluster_with_claims(**kwargs) -> FakeCluster:
    cluster = FakeCluster(**kwargs)
    for claim in ("mft-checkpoints", "models-pvc", "data-pvc"):
        cluster.claim("ml", claim)
    return cluster


def step(cluster, job):
    """One reconciliation; returns the job as the apiserver would store it afterwards."""
    new_status = reconcile.reconcile(cluster, job, SETTINGS, NOW)
    return {**job, "status": new_status}


def pytorchjob(cluster):
    return cluster.objects.get(("PyTorchJob", "ml", "pythia-1b-code-lora"))


def set_child_conditions(cluster, *true_types):
    pytorchjob(cluster)["status"] = {"conditions": [{"type": t, "status": "True"} for t in true_types]}


def test_first_reconcile_creates_config_map_then_pytorchjob():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    assert {k[0] for k in cluster.objects} == {"PersistentVolumeClaim", "ConfigMap", "PyTorchJob"}
    assert job["status"]["phase"] == "Created" and job["status"]["pytorchJob"] == "pythia-1b-code-lora"


def test_reconcile_is_idempotent():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    creates, statuses = cluster.creates, len(cluster.statuses)
    step(cluster, job)
    assert cluster.creates == creates and len(cluster.statuses) == statuses  # nothing new to write


def test_already_existing_children_of_this_job_are_adopted():
    cluster = cluster_with_claims()
    for manifest in render.render(lora_job(), SETTINGS):
        cluster.add(manifest)
    job = step(cluster, lora_job())  # e.g. the operator restarted before it wrote status
    assert job["status"]["phase"] == "Created" and "Blocked" not in json.dumps(job["status"])


def test_a_child_created_just_before_a_spec_change_is_replaced_not_adopted():
    """The first pass creates the children, then its status write fails: the spec changed meanwhile
    (it may until the job starts). Adopting that PyTorchJob would run the old spec under the new one,
    locked by the next status write."""
    cluster = cluster_with_claims()
    job = lora_job()
    job["metadata"]["resourceVersion"] = "1"
    edited = copy.deepcopy(job)
    edited["metadata"].update(resourceVersion="2", generation=2)
    edited["spec"]["image"] = "registry.example.com/mft-trainer:v2"
    cluster.jobs[("ml", job["metadata"]["name"])] = edited
    with pytest.raises(reconcile.Stale):
        reconcile.reconcile(cluster, job, SETTINGS, NOW)
    outdated = pytorchjob(cluster)
    assert outdated["metadata"]["annotations"][render.GENERATION_ANNOTATION] == "1"
    cluster.jobs.clear()  # the edit is stored; status writes from the edited copy succeed

    edited = step(cluster, edited)
    assert cluster.deleted_children == [outdated["metadata"]["name"]]
    blocked = next(c for c in edited["status"]["conditions"] if c["type"] == "Blocked")
    assert blocked["reason"] == "ReplacingOutdatedChild" and "generation 1" in blocked["message"]
    assert "startTime" not in edited["status"] and "pytorchJob" not in edited["status"]  # the spec is not locked

    edited = step(cluster, edited)
    child = pytorchjob(cluster)
    assert child["metadata"]["uid"] != outdated["metadata"]["uid"]
    assert child["metadata"]["annotations"][render.GENERATION_ANNOTATION] == "2"
    assert child["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] \
        == "registry.example.com/mft-trainer:v2"
    assert edited["status"]["pytorchJob"] == child["metadata"]["name"]


def test_a_child_being_deleted_as_outdated_is_waited_for():
    cluster = cluster_with_claims()
    job = lora_job()
    step(cluster, job)
    pytorchjob(cluster)["metadata"]["deletionTimestamp"] = NOW  # a foreground deletion in progress
    edited = copy.deepcopy(job)
    edited["metadata"]["generation"] = 2
    edited = step(cluster, edited)
    assert cluster.deleted_children == []
    assert any(c["reason"] == "ReplacingOutdatedChild" for c in edited["status"]["conditions"])


def test_a_started_job_keeps_its_child_when_the_generation_changes():
    """Once started, the spec can only change in fields synced to the child (suspend, deadlines)."""
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    job["metadata"]["generation"] = 2
    assert step(cluster, job)["status"]["pytorchJob"]
    assert cluster.deleted_children == []


def test_an_adopted_config_map_gets_the_trainer_config_of_the_spec_as_it_is_now():
    # The first attempt made the ConfigMap, then its PyTorchJob was refused; the spec was edited.
    cluster = cluster_with_claims(reject="PyTorchJob")
    job = step(cluster, lora_job())
    assert job["status"]["phase"] == "Pending" and "ChildRejected" in json.dumps(job["status"])
    job["spec"]["training"]["learningRate"] = 1e-3
    cluster.reject = None
    job = step(cluster, job)
    config_map = cluster.objects[("ConfigMap", "ml", "pythia-1b-code-lora-config")]
    expected = next(m for m in render.render(job, SETTINGS) if m["kind"] == "ConfigMap")
    assert config_map["data"] == expected["data"] and "0.001" in config_map["data"]["config.yaml"]
    assert job["status"]["phase"] == "Created"


def test_a_foreign_object_with_our_name_is_a_conflict_not_an_adoption():
    cluster = cluster_with_claims()
    cluster.add({"kind": "ConfigMap", "metadata": {"namespace": "ml", "name": "pythia-1b-code-lora-config"}})
    job = step(cluster, lora_job())
    blocked = next(c for c in job["status"]["conditions"] if c["type"] == "Blocked")
    assert blocked["reason"] == "NameConflict" and pytorchjob(cluster) is None


def test_missing_claims_block_creation():
    cluster = FakeCluster()
    cluster.claim("ml", "models-pvc")
    job = step(cluster, lora_job())
    assert job["status"]["phase"] == "Pending" and cluster.creates == 0
    blocked = next(c for c in job["status"]["conditions"] if c["type"] == "Blocked")
    assert blocked["reason"] == "ClaimNotFound"
    assert "mft-checkpoints" in blocked["message"] and "data-pvc" in blocked["message"]
    assert [e.reason for e in cluster.events] == ["Pending", "ClaimNotFound"]


def test_pods_refused_by_the_api_server_block_the_job_with_its_message():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    child = pytorchjob(cluster)
    cluster.warnings.append({
        "metadata": {"name": "pythia-1b-code-lora.1", "uid": "e1"}, "type": "Warning", "reason": "FailedCreatePod",
        "involvedObject": {"kind": "PyTorchJob", "namespace": "ml", "name": "pythia-1b-code-lora",
                           "uid": child["metadata"]["uid"]},
        "message": 'Error creating: pods "pythia-1b-code-lora-master-0" is forbidden: exceeded quota: gpus',
        "lastTimestamp": NOW})
    blocked = step(cluster, job)["status"]["conditions"][-1]
    assert (blocked["type"], blocked["status"], blocked["reason"]) == ("Blocked", "True", "FailedCreatePod")
    assert blocked["message"].endswith("is forbidden: exceeded quota: gpus")
    assert cluster.events[-1].reason == "FailedCreatePod"


def test_missing_pytorchjob_crd_is_a_condition():
    cluster = cluster_with_claims(crd_installed=False)
    job = step(cluster, lora_job())
    assert job["status"]["phase"] == "Pending"
    assert next(c for c in job["status"]["conditions"] if c["type"] == "Blocked")["reason"] == "PyTorchJobCRDMissing"


def test_a_rejected_child_is_a_condition():
    cluster = cluster_with_claims(reject="PyTorchJob")
    job = step(cluster, lora_job())
    blocked = next(c for c in job["status"]["conditions"] if c["type"] == "Blocked")
    assert blocked["reason"] == "ChildRejected" and "admission webhook said no" in blocked["message"]


def test_a_vanished_child_is_recreated_within_the_budget_then_the_job_fails():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())  # restartBudget: 2 in the example
    cluster.jobs[("ml", job["metadata"]["name"])] = copy.deepcopy(job)  # the API confirms it before each recreation
    for expected_restarts in (1, 2):
        del cluster.objects[("PyTorchJob", "ml", "pythia-1b-code-lora")]
        job = step(cluster, job)
        assert pytorchjob(cluster) is not None and job["status"]["restarts"] == expected_restarts
    del cluster.objects[("PyTorchJob", "ml", "pythia-1b-code-lora")]
    job = step(cluster, job)
    assert pytorchjob(cluster) is None
    assert job["status"]["phase"] == "Failed" and job["status"]["failure"]["reason"] == "RestartBudgetExhausted"


def test_the_child_of_a_job_the_api_no_longer_has_is_not_recreated():
    """Its deletion event was missed (a watch relist reports none) or is not handled yet: the copy
    in memory alone must not bring its PyTorchJob back."""
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    del cluster.objects[("PyTorchJob", "ml", "pythia-1b-code-lora")]
    creates = cluster.creates
    with pytest.raises(reconcile.Gone):
        step(cluster, job)
    cluster.jobs[("ml", job["metadata"]["name"])] = {**copy.deepcopy(job), "metadata": {**job["metadata"], "uid": "uid-2"}}
    with pytest.raises(reconcile.Gone):  # deleted and created again under the same name: another job
        step(cluster, job)
    assert cluster.creates == creates and pytorchjob(cluster) is None


def test_a_failed_api_request_is_shown_on_the_job_and_its_phase_is_kept():
    """A request refused for a reason the pass cannot act on (RBAC, an admission policy on update,
    the apiserver unavailable) is Blocked with the apiserver's answer, not only a log line."""
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    set_child_conditions(cluster, "Created", "Running")
    job = step(cluster, job)
    job["spec"]["runPolicy"]["activeDeadlineSeconds"] = 3600  # the child must be patched

    def refuse(kind, namespace, name, patch):
        raise reconcile.RequestFailed(f"cannot patch {kind} {namespace}/{name}: 403 Forbidden: denied by policy")

    cluster.patch = refuse
    job = step(cluster, job)
    blocked = next(c for c in job["status"]["conditions"] if c["type"] == "Blocked")
    assert job["status"]["phase"] == "Running"
    assert blocked["status"] == "True" and blocked["reason"] == "APIRequestFailed"
    assert "403 Forbidden: denied by policy" in blocked["message"]
    assert any(e.reason == "APIRequestFailed" for e in cluster.events)


def test_a_child_deleted_as_soon_as_it_finished_gives_the_outcome_not_a_recreation():
    """Deleted (by hand, or by an earlier version's training-operator TTL) when it finished, before
    any pass saw it finish. Taken for lost, it would be created (and trained) again."""
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    set_child_conditions(cluster, "Created", "Running")
    job = step(cluster, job)
    assert job["status"]["phase"] == "Running"
    set_child_conditions(cluster, "Created", "Succeeded")
    cluster.finished[("ml", "pythia-1b-code-lora")] = cluster.objects.pop(("PyTorchJob", "ml", "pythia-1b-code-lora"))
    creates = cluster.creates
    job = step(cluster, job)
    assert job["status"]["phase"] == "Succeeded" and job["status"]["restarts"] == 0
    assert cluster.creates == creates


def test_a_job_being_deleted_never_recreates_its_child():
    # kubectl delete --cascade=foreground (and Argo CD's prune) deletes the children first.
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    del cluster.objects[("PyTorchJob", "ml", "pythia-1b-code-lora")]
    job["metadata"]["deletionTimestamp"] = NOW
    creates, status = cluster.creates, job["status"]
    job = step(cluster, job)
    assert cluster.creates == creates and pytorchjob(cluster) is None
    assert job["status"] == status


def _pod(replica, uid, phase="Running"):
    labels = {"training.kubeflow.org/replica-type": replica, "training.kubeflow.org/replica-index": "0"}
    return {"metadata": {"name": f"pythia-1b-code-lora-{replica}-0", "namespace": "ml", "uid": uid, "labels": labels},
            "status": {"phase": phase}}


def test_past_backoff_limit_the_job_fails_and_its_child_is_deleted():
    cluster = cluster_with_claims()
    job = lora_job()
    job["spec"]["runPolicy"]["backoffLimit"] = 0
    job = step(cluster, job)
    admit(cluster)
    set_child_conditions(cluster, "Created", "Running")
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w1")]
    job = step(cluster, job)
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w2", phase="Pending")]  # the worker was replaced
    job = step(cluster, job)
    assert job["status"]["phase"] == "Failed" and job["status"]["podRestarts"] == 1
    assert cluster.deleted_pods == []  # the job is over: nothing to restart
    # Deleted, with its pods: not suspended, which Kueue would undo for an admitted job (this one
    # is queued), and the training operator would go on replacing the pods.
    assert cluster.deleted_children == ["pythia-1b-code-lora"] and pytorchjob(cluster) is None
    assert not any(p.get("spec", {}).get("runPolicy", {}).get("suspend") for _, p in cluster.patches)
    creates = cluster.creates
    job = step(cluster, job)
    assert job["status"]["phase"] == "Failed" and cluster.creates == creates


def admit(cluster):
    """Kueue admits the job (examples/lora.yaml is queued): the child is no longer suspended."""
    pytorchjob(cluster)["spec"]["runPolicy"]["suspend"] = False


def _oom(replica, uid):
    failed = _pod(replica, uid, phase="Failed")
    failed["status"]["containerStatuses"] = [{"name": "pytorch", "state": {"terminated": {
        "exitCode": 137, "reason": "OOMKilled", "finishedAt": NOW}}}]
    return failed


def test_a_restart_of_one_replica_restarts_the_replicas_it_left_running():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())  # 2 nodes: a master and a worker
    admit(cluster)
    set_child_conditions(cluster, "Created", "Running")
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w1")]
    job = step(cluster, job)
    cluster.pods = [_pod("master", "m1"), _oom("worker", "w1")]
    job = step(cluster, job)
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w2", phase="Pending")]  # replaced by the training operator
    job = step(cluster, job)
    assert cluster.deleted_pods == ["pythia-1b-code-lora-master-0"] and job["status"]["podRestarts"] == 1
    assert cluster.delete_graces == [reconcile.CRASH_GRACE_SECONDS]  # it waits on a dead peer: nothing to save
    event = cluster.events[-1]
    assert (event.type, event.reason) == ("Warning", "RestartingAllReplicas")
    assert event.message.startswith("worker-0 exited with code 137 (OOMKilled)")
    assert event.message.endswith("restarting master-0 as well, so that every replica starts again together "
                                  "from the latest checkpoint")
    cluster.pods = [_pod("master", "m2"), _pod("worker", "w2")]  # the master's new pod is not another restart
    job = step(cluster, job)
    assert cluster.deleted_pods == ["pythia-1b-code-lora-master-0"] and job["status"]["podRestarts"] == 1


def test_a_deletion_that_fails_is_reported_and_tried_again():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    admit(cluster)
    set_child_conditions(cluster, "Created", "Running")
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w1")]
    job = step(cluster, job)
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w2")]
    delete = cluster.delete_pod

    def refused(pod, grace):
        raise RuntimeError("pods is forbidden")

    cluster.delete_pod = refused
    job = step(cluster, job)
    reasons = [e.reason for e in cluster.events]
    assert {"RestartingAllReplicas", "DeletePodFailed"} <= set(reasons) and job["status"]["podRestarts"] == 1
    assert "cannot delete pod pythia-1b-code-lora-master-0" in cluster.events[-1].message
    cluster.delete_pod = delete
    job = step(cluster, job)  # the status records the master as stopping: deleted now, not counted again
    assert cluster.deleted_pods == ["pythia-1b-code-lora-master-0"] and job["status"]["podRestarts"] == 1
    assert cluster.delete_graces == [None]  # the cause is unknown: the pod's own grace period


def test_after_a_preemption_the_pods_left_behind_keep_their_grace_period():
    assert reconcile.left_behind_grace_seconds({"replica": "worker-0", "exitCode": 143}) is None
    assert reconcile.left_behind_grace_seconds({"replica": "worker-0", "reason": "Evicted"}) is None
    assert reconcile.left_behind_grace_seconds(None) is None
    assert reconcile.left_behind_grace_seconds({"exitCode": 137}) == reconcile.CRASH_GRACE_SECONDS


def test_budget_defaults_to_backoff_limit():
    job = lora_job()
    del job["spec"]["runPolicy"]["restartBudget"]
    assert reconcile.restart_budget(job) == job["spec"]["runPolicy"]["backoffLimit"]


def test_a_terminal_job_never_recreates_its_child():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    set_child_conditions(cluster, "Created", "Succeeded")
    job = step(cluster, job)
    assert job["status"]["phase"] == "Succeeded"
    del cluster.objects[("PyTorchJob", "ml", "pythia-1b-code-lora")]  # TTL clean-up
    creates = cluster.creates
    job = step(cluster, job)
    assert cluster.creates == creates and job["status"]["phase"] == "Succeeded"


def test_suspend_follows_the_user_and_never_fights_kueue():
    cluster = cluster_with_claims()
    job = lora_job()
    del job["spec"]["scheduling"]["queueName"]
    job = step(cluster, job)
    assert pytorchjob(cluster)["spec"]["runPolicy"]["suspend"] is False
    pytorchjob(cluster)["spec"]["runPolicy"]["suspend"] = True  # someone else (a queue) suspends it
    step(cluster, job)
    assert cluster.patches == []  # the user did not change spec.runPolicy.suspend: leave it
    job["spec"]["runPolicy"]["suspend"] = True
    job = step(cluster, job)
    job["spec"]["runPolicy"]["suspend"] = False
    job = step(cluster, job)
    assert [p["spec"]["runPolicy"]["suspend"] for _, p in cluster.patches] == [True, False]
    assert pytorchjob(cluster)["metadata"]["annotations"][render.SUSPEND_ANNOTATION] == "false"


def test_kueue_queued_jobs_are_left_to_kueue():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    job["spec"]["runPolicy"]["suspend"] = True
    step(cluster, job)
    assert cluster.patches == []


def test_deadline_changes_reach_the_child():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    job["spec"]["runPolicy"]["activeDeadlineSeconds"] = 7200
    step(cluster, job)
    assert cluster.patches == [("PyTorchJob", {"spec": {"runPolicy": {"activeDeadlineSeconds": 7200}}})]


def test_the_training_operator_never_gets_the_ttl():
    """It would delete a finished child before a pass records the outcome; the operator applies it."""
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    assert "ttlSecondsAfterFinished" not in pytorchjob(cluster)["spec"]["runPolicy"]
    pytorchjob(cluster)["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 60  # rendered by an earlier version
    step(cluster, job)
    assert cluster.patches == [("PyTorchJob", {"spec": {"runPolicy": {"ttlSecondsAfterFinished": None}}})]


def at(seconds: int) -> str:
    return f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"


def test_a_finished_child_is_deleted_ttl_seconds_after_the_recorded_outcome():
    cluster = cluster_with_claims()
    job = lora_job()
    job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 600
    job = step(cluster, job)
    set_child_conditions(cluster, "Created", "Succeeded")
    job = {**job, "status": reconcile.reconcile(cluster, job, SETTINGS, at(0))}
    assert job["status"]["phase"] == "Succeeded" and job["status"]["completionTime"] == at(0)
    reconcile.reconcile(cluster, job, SETTINGS, at(599))
    assert pytorchjob(cluster) is not None
    job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 300  # may change after the job finished
    reconcile.reconcile(cluster, job, SETTINGS, at(300))
    assert cluster.deleted_children == ["pythia-1b-code-lora"] and pytorchjob(cluster) is None
    assert reconcile.reconcile(cluster, job, SETTINGS, at(301)) == job["status"]


def test_without_a_ttl_a_finished_child_stays():
    cluster = cluster_with_claims()
    job = lora_job()
    del job["spec"]["runPolicy"]["ttlSecondsAfterFinished"]
    job = step(cluster, job)
    set_child_conditions(cluster, "Created", "Failed")
    job = step(cluster, job)
    reconcile.reconcile(cluster, job, SETTINGS, "2027-01-01T00:00:00Z")
    assert job["status"]["phase"] == "Failed" and cluster.deleted_children == []


def _starting_pod(uid):
    pod = _pod("master", uid, phase="Pending")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    return pod


def test_a_deleted_config_map_is_created_again_when_a_pod_starts():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    admit(cluster)
    set_child_conditions(cluster, "Created", "Running")
    config_key = ("ConfigMap", "ml", render.config_map_name("pythia-1b-code-lora"))
    rendered = cluster.objects.pop(config_key)
    cluster.pods = [_pod("master", "m1"), _pod("worker", "w1")]
    job = step(cluster, job)
    assert config_key not in cluster.objects  # running pods have it mounted: not looked at
    cluster.pods = [_starting_pod("m2"), _pod("worker", "w1")]
    step(cluster, job)
    assert cluster.objects[config_key]["data"] == rendered["data"]


def test_progress_is_read_from_the_master_log_while_running():
    cluster = cluster_with_claims()
    job = step(cluster, lora_job())
    set_child_conditions(cluster, "Created", "Running")
    labels = {"training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0"}
    cluster.pods = [{"metadata": {"name": "pythia-1b-code-lora-master-0", "uid": "m1", "labels": labels},
                     "status": {"phase": "Running"}}]
    cluster.logs["pythia-1b-code-lora-master-0"] = "\n".join([
        "warming up",
        json.dumps({"kind": "mft.progress", "step": 5, "total_steps": 50, "loss": 1.25, "time": 1767225600}),
        json.dumps({"kind": "mft.checkpoint", "latest": "checkpoint-5", "best": "checkpoint-5", "best_valid_loss": 1.5}),
    ])
    job = step(cluster, job)
    assert job["status"]["phase"] == "Running" and job["status"]["startTime"] == NOW
    assert job["status"]["progress"]["summary"] == "5/50 (10%)"
    assert job["status"]["checkpoints"]["latest"] == "checkpoint-5"


def test_a_retained_claim_from_an_earlier_job_is_reused():
    cluster = FakeCluster()
    job = load(ROOT / "examples" / "sft.yaml")
    job["metadata"].update(namespace="ml", uid="uid-2", generation=1)
    job["spec"]["checkpoint"]["retainOnDelete"] = True
    for claim in ("shared-models", "code-data"):
        cluster.claim("ml", claim)
    # As an earlier job of this name created it.
    cluster.add(next(m for m in render.render(job, SETTINGS) if m["kind"] == "PersistentVolumeClaim"))
    job = step(cluster, job)
    assert job["status"]["phase"] == "Created"
    claim = cluster.objects[("PersistentVolumeClaim", "ml", "pythia-1b-code-sft-checkpoints")]
    # Still retained, whatever this job's retainOnDelete: owning it would take the right to delete
    # PersistentVolumeClaims (OwnerReferencesPermissionEnforcement), which the operator does not ask for.
    assert "ownerReferences" not in claim["metadata"]


def test_a_claim_of_another_workload_with_the_checkpoint_claims_name_is_not_used():
    cluster = FakeCluster()
    job = load(ROOT / "examples" / "sft.yaml")
    job["metadata"].update(namespace="ml", uid="uid-2", generation=1)
    for claim in ("shared-models", "code-data", "pythia-1b-code-sft-checkpoints"):  # the last one made by hand
        cluster.claim("ml", claim)
    job = step(cluster, job)
    blocked = next(c for c in job["status"]["conditions"] if c["type"] == "Blocked")
    assert blocked["reason"] == "NameConflict" and "PersistentVolumeClaim pythia-1b-code-sft-checkpoints" in blocked["message"]
    assert pytorchjob(cluster) is None


def test_a_copy_not_read_just_now_never_recreates_a_vanished_child():
    cluster = cluster_with_claims()
    with pytest.raises(reconcile.Stale):
        reconcile.reconcile(cluster, lora_job(phase="Running", pytorchJob="pythia-1b-code-lora", restarts=0),
                            SETTINGS, NOW, fresh=False)
    assert cluster.creates == 0 and not cluster.statuses and not cluster.events
