"""Lifecycle against the real controllers: failure reasons, the backoff limit of retried pods,
pods refused by a quota, suspend and resume, garbage collection, no recreation of a finished job's child, recreation of a running job's child,
a deleted trainer ConfigMap created again for a replacement pod, checkpoint claim retention, an operator killed mid-flight, and a child left from an earlier spec."""

from __future__ import annotations

import time

import pytest
import yaml

from mft_operator import kube, render
from mft_operator.reconcile import KindMissing
from mft_operator.settings import Settings

from .conftest import PROGRESS_INTERVAL
from .support import Cluster, Operator, condition, job_manifest, owner_uids, wait_for

pytestmark = pytest.mark.e2e


def test_failing_pod_fails_the_job_with_replica_and_exit_code(cluster: Cluster, ns: str):
    # Exit code 3 is not retryable under restartPolicy ExitCode (only 128-255 are).
    cluster.apply(ns, job_manifest("broken", nodes=2, fail=True, exit_code=3))
    job = cluster.wait_phase(ns, "broken", "Failed")
    failure = job["status"]["failure"]
    assert failure["exitCode"] == 3 and failure["replica"] in ("master-0", "worker-0"), failure
    summary = f"{failure['replica']} exited with code 3 (Error)"
    failed = condition(job["status"], "Failed")
    assert failed["status"] == "True" and summary in failed["message"], failed
    assert job["status"]["completionTime"]
    waited = cluster.kubectl("wait", "-n", ns, "--for=condition=Failed", "mftjob/broken", "--timeout=10s", check=False)
    assert waited.returncode == 0, waited.stderr
    # Events are posted after the status write, off the reconcile's path.
    warnings = wait_for("the Failed event",
                        lambda: [e for e in cluster.events(ns, "broken") if e.type == "Warning" and e.reason == "Failed"],
                        10, describe=lambda: "; ".join(e.message or "" for e in cluster.events(ns, "broken")))
    assert summary in warnings[0].message, warnings[0].message


def test_retryable_failures_stop_at_backoff_limit(cluster: Cluster, ns: str):
    # 137 (an OOM kill) is retried under restartPolicy ExitCode; the training operator would replace
    # the pod forever (it does not apply backoffLimit to replaced pods), so the operator counts.
    cluster.apply(ns, job_manifest("oom", fail=True, exit_code=137, runPolicy={"backoffLimit": 1}))
    job = cluster.wait_phase(ns, "oom", "Failed", timeout=60)
    assert job["status"]["podRestarts"] == 2, job["status"]
    failed = condition(job["status"], "Failed")
    assert failed["reason"] == "BackoffLimitExceeded", failed
    assert "more than spec.runPolicy.backoffLimit (1)" in failed["message"], failed
    # The PyTorchJob is deleted with its pods, so nothing replaces them again (a suspension would
    # be undone by Kueue for a queued job).
    cluster.wait_gone("PyTorchJob oom", lambda: cluster.pytorchjob(ns, "oom"))
    wait_for("the pods to be deleted", lambda: cluster.pods(ns, "oom") == [], 30)
    time.sleep(5)
    assert cluster.pods(ns, "oom") == [] and cluster.status(ns, "oom")["podRestarts"] == 2


def test_a_restart_of_one_replica_restarts_the_others_with_it(cluster: Cluster, ns: str):
    # The training operator replaces only the worker that failed (137: retryable); the master would
    # stay in the old process group, waiting on a peer that is gone.
    cluster.apply(ns, job_manifest("gang", nodes=2, duration="1h"))
    wait_for("2 running pods", lambda: sorted(p.status.phase for p in cluster.pods(ns, "gang")) == ["Running"] * 2, 60)
    before = {p.metadata.uid for p in cluster.pods(ns, "gang")}
    cluster.kubectl("annotate", "pod", "gang-worker-0", "-n", ns, "--overwrite", "mft.dev/test-fail=true",
                    "mft.dev/test-exit-code=137", "mft.dev/test-duration=1s")
    wait_for("both replicas running new pods", lambda: sorted(
        p.status.phase for p in cluster.pods(ns, "gang") if p.metadata.uid not in before) == ["Running"] * 2, 60,
        describe=lambda: cluster.describe(ns))
    job = cluster.wait_phase(ns, "gang", "Running")
    assert job["status"]["podRestarts"] == 1, job["status"]
    assert set(job["status"]["replicaPods"].values()) == {p.metadata.uid for p in cluster.pods(ns, "gang")}
    restarted = wait_for("the RestartingAllReplicas event", lambda: [
        e for e in cluster.events(ns, "gang") if e.reason == "RestartingAllReplicas"], 10)
    assert len(restarted) == 1 and restarted[0].count == 1, restarted
    # The cause is named when a pass saw the failed pod before the training operator deleted it.
    cause = restarted[0].message.split(";")[0]
    assert cause in ("a replica failed", "worker-0 exited with code 137 (Error): simulated failure (mft.dev/test-fail)")
    assert "restarting master-0 as well" in restarted[0].message


def test_pods_refused_by_a_quota_block_the_job_until_the_quota_allows_them(cluster: Cluster, ns: str):
    # The training operator only reports a refused pod in an event and retries with backoff.
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    cluster.apply(ns, quota)
    wait_for("the quota's status", lambda: cluster.kubectl(
        "get", "resourcequota", "no-pods", "-n", ns, "-o", "jsonpath={.status.hard.pods}").stdout == "0", 30)
    cluster.apply(ns, job_manifest("quota", duration="1h"))
    blocked = wait_for("Blocked by the quota",
                       lambda: (c := condition(cluster.status(ns, "quota"), "Blocked")).get("status") == "True" and c,
                       60, describe=lambda: cluster.describe(ns))
    assert blocked["reason"] == "FailedCreatePod", blocked
    assert blocked["message"].startswith('the training operator cannot create pods: pods "quota-master-0" is forbidden: '
                                         "exceeded quota: no-pods"), blocked
    assert cluster.status(ns, "quota")["phase"] == "Created"
    wait_for("the FailedCreatePod event on the MFTJob",
             lambda: any(e.type == "Warning" and e.reason == "FailedCreatePod" for e in cluster.events(ns, "quota")), 10)

    cluster.kubectl("delete", "resourcequota", "no-pods", "-n", ns)
    cluster.wait_phase(ns, "quota", "Running", timeout=90)
    assert condition(cluster.status(ns, "quota"), "Blocked")["status"] == "False"


def test_suspend_and_resume(cluster: Cluster, ns: str):
    cluster.apply(ns, job_manifest("pausable", nodes=2, duration="1h"))
    cluster.wait_phase(ns, "pausable", "Running")
    wait_for("2 running pods", lambda: len([p for p in cluster.pods(ns, "pausable") if p.status.phase == "Running"]) == 2)

    cluster.kubectl("patch", "mftjob", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    job = cluster.wait_phase(ns, "pausable", "Suspended")
    assert condition(job["status"], "Suspended")["status"] == "True"
    assert cluster.pytorchjob(ns, "pausable")["spec"]["runPolicy"]["suspend"] is True
    wait_for("the suspended job's pods to be deleted", lambda: cluster.pods(ns, "pausable") == [], 60)

    cluster.kubectl("patch", "mftjob", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    job = cluster.wait_phase(ns, "pausable", "Running")
    assert condition(job["status"], "Suspended")["status"] == "False"
    assert cluster.pytorchjob(ns, "pausable")["spec"]["runPolicy"]["suspend"] is False
    wait_for("the resumed job's pods", lambda: len([p for p in cluster.pods(ns, "pausable")
                                                    if p.status.phase == "Running"]) == 2, 60)
    assert len(cluster.pytorchjobs(ns)) == 1 and cluster.status(ns, "pausable")["restarts"] == 0


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_deletion_cascades_through_the_garbage_collector(cluster: Cluster, ns: str, cascade: str):
    # foreground (also Argo CD's prune): the children go first, while the MFTJob still exists.
    cluster.apply(ns, job_manifest("doomed", nodes=2, duration="1h"))
    cluster.wait_phase(ns, "doomed", "Running")
    wait_for("the pods", lambda: len(cluster.pods(ns, "doomed")) == 2)
    # kubectl waits until the MFTJob is gone (after its children, in a foreground deletion).
    cluster.kubectl("delete", "mftjob", "doomed", "-n", ns, f"--cascade={cascade}", "--timeout=60s")
    # Owner references only: the operator has no finalizer and no delete verb.
    cluster.wait_gone("PyTorchJob doomed", lambda: cluster.pytorchjob(ns, "doomed"))
    cluster.wait_gone("ConfigMap doomed-config", lambda: cluster.config_map(ns, "doomed-config"))
    wait_for("the pods and services to be deleted",
             lambda: cluster.pods(ns, "doomed") == [] and cluster.services(ns, "doomed") == [], 60)
    assert not [e for e in cluster.events(ns, "doomed") if e.reason == "PyTorchJobRecreated"]


def test_finished_job_does_not_recreate_its_deleted_child(cluster: Cluster, ns: str):
    cluster.apply(ns, job_manifest("done"))
    cluster.wait_phase(ns, "done", "Succeeded")
    cluster.kubectl("delete", "pytorchjob", "done", "-n", ns, "--timeout=60s")
    # A change of the MFTJob triggers the operator; then several polling periods pass.
    cluster.kubectl("annotate", "mftjob", "done", "-n", ns, "e2e/poke=1")
    time.sleep(3 * PROGRESS_INTERVAL + 1)
    assert cluster.pytorchjob(ns, "done") is None
    status = cluster.status(ns, "done")
    assert status["phase"] == "Succeeded" and status["restarts"] == 0, status


def test_running_job_recreates_its_deleted_child_within_budget(cluster: Cluster, ns: str):
    cluster.apply(ns, job_manifest("phoenix", duration="1h", runPolicy={"restartBudget": 1}))
    cluster.wait_phase(ns, "phoenix", "Running")
    first = cluster.pytorchjob(ns, "phoenix")["metadata"]["uid"]
    cluster.kubectl("delete", "pytorchjob", "phoenix", "-n", ns, "--timeout=60s")
    again = wait_for("a recreated PyTorchJob",
                     lambda: (c := cluster.pytorchjob(ns, "phoenix")) and c["metadata"]["uid"] != first and c, 30,
                     describe=lambda: cluster.describe(ns))
    assert owner_uids(again) == [cluster.job(ns, "phoenix")["metadata"]["uid"]]
    wait_for("status.restarts == 1", lambda: cluster.status(ns, "phoenix").get("restarts") == 1, 15)
    wait_for("the PyTorchJobRecreated event",
             lambda: any(e.reason == "PyTorchJobRecreated" for e in cluster.events(ns, "phoenix")), 10)
    cluster.wait_phase(ns, "phoenix", "Running")

    # The budget (1) is spent: the next disappearance fails the job instead.
    cluster.kubectl("delete", "pytorchjob", "phoenix", "-n", ns, "--timeout=60s")
    job = cluster.wait_phase(ns, "phoenix", "Failed", timeout=30)
    assert condition(job["status"], "Failed")["reason"] == "RestartBudgetExhausted"
    time.sleep(2 * PROGRESS_INTERVAL)
    assert cluster.pytorchjob(ns, "phoenix") is None


def test_a_deleted_trainer_config_is_created_again_for_a_replacement_pod(cluster: Cluster, ns: str):
    # Pods stay Pending once scheduled, as while a kubelet waits for the volumes they mount.
    cluster.apply(ns, job_manifest("remount", hold_pending=True))
    first_pod = wait_for("a scheduled pod", lambda: next((p for p in cluster.pods(ns, "remount") if p.spec.node_name),
                                                         None), 30, describe=lambda: cluster.describe(ns))
    name = render.config_map_name("remount")
    first = cluster.config_map(ns, name)
    cluster.kubectl("delete", "configmap", name, "-n", ns, "--timeout=60s")
    # A replacement pod (here: the training-operator's, for a deleted one) needs the ConfigMap again.
    cluster.kubectl("delete", "pod", first_pod.metadata.name, "-n", ns, "--timeout=60s")
    wait_for("a replacement pod", lambda: any(p.metadata.uid != first_pod.metadata.uid and p.spec.node_name
                                              for p in cluster.pods(ns, "remount")), 30)
    again = wait_for("the ConfigMap created again", lambda: cluster.config_map(ns, name), 3 * PROGRESS_INTERVAL,
                     describe=lambda: cluster.describe(ns))
    assert again.metadata.uid != first.metadata.uid and again.data == first.data
    assert owner_uids(again) == [cluster.job(ns, "remount")["metadata"]["uid"]]


def test_a_spec_edited_after_a_refused_start_reaches_the_trainer_config(cluster: Cluster, ns: str):
    # A PyTorchJob of someone else holds the name: the operator makes the ConfigMap, then stops.
    foreign = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "edited"},
               "spec": {"runPolicy": {"suspend": True}, "pytorchReplicaSpecs": {"Master": {
                   "replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch", "image": "busybox"}]}}}}}}
    cluster.apply(ns, foreign)
    cluster.apply(ns, job_manifest("edited", training={"learningRate": 2e-4}))
    wait_for("the name conflict", lambda: condition(cluster.status(ns, "edited"), "Blocked").get("reason") == "NameConflict",
             30, describe=lambda: cluster.describe(ns))
    assert "learning_rate: 0.0002" in cluster.config_map(ns, "edited-config").data["config.yaml"]
    # Not started yet, so the training settings may still change; then the name is freed.
    cluster.kubectl("patch", "mftjob", "edited", "-n", ns, "--type=merge", "-p", '{"spec":{"training":{"learningRate":0.001}}}')
    cluster.kubectl("delete", "pytorchjob", "edited", "-n", ns, "--timeout=60s")
    child = wait_for("our PyTorchJob", lambda: (c := cluster.pytorchjob(ns, "edited")) and owner_uids(c) and c, 60,
                     describe=lambda: cluster.describe(ns))
    assert owner_uids(child) == [cluster.job(ns, "edited")["metadata"]["uid"]]
    assert "learning_rate: 0.001" in cluster.config_map(ns, "edited-config").data["config.yaml"]


def test_checkpoint_claim_retained_or_deleted_with_the_job(cluster: Cluster, ns: str):
    for name, retain in (("keep", True), ("drop", False)):
        cluster.provide_volume(ns, f"{name}-checkpoints")
        cluster.apply(ns, job_manifest(name, checkpoint={"create": {"size": "1Gi"}, "retainOnDelete": retain}))
    for name in ("keep", "drop"):
        cluster.wait_phase(ns, name, "Succeeded")
        claim = cluster.claim(ns, f"{name}-checkpoints")
        assert claim is not None and claim.status.phase == "Bound"
    assert not cluster.claim(ns, "keep-checkpoints").metadata.owner_references
    assert owner_uids(cluster.claim(ns, "drop-checkpoints")) == [cluster.job(ns, "drop")["metadata"]["uid"]]

    cluster.kubectl("delete", "mftjob", "keep", "drop", "-n", ns, "--timeout=60s")
    cluster.wait_gone("PVC drop-checkpoints", lambda: cluster.claim(ns, "drop-checkpoints"))
    cluster.wait_gone("PyTorchJob keep", lambda: cluster.pytorchjob(ns, "keep"))
    kept = cluster.claim(ns, "keep-checkpoints")
    assert kept is not None and kept.metadata.deletion_timestamp is None and kept.status.phase == "Bound"


def test_operator_killed_mid_flight_converges_without_duplicates(cluster: Cluster, operator: Operator, ns: str):
    cluster.apply(ns, job_manifest("steady", nodes=2, duration="10s", runPolicy={"ttlSecondsAfterFinished": 1}))
    cluster.wait_phase(ns, "steady", "Running")
    operator.kill()
    try:
        # Changes while the operator is down: a new job, and the running one finishes.
        cluster.apply(ns, job_manifest("latecomer", nodes=2))
        wait_for("the PyTorchJob to succeed without the operator",
                 lambda: condition(cluster.pytorchjob(ns, "steady").get("status", {}), "Succeeded").get("status") == "True",
                 60)
        assert cluster.status(ns, "steady")["phase"] == "Running"  # nobody updated it
        assert cluster.pytorchjob(ns, "latecomer") is None
        # Its TTL has passed, but the outcome is not recorded yet: the child stays (deleted now, it
        # would look lost to the operator when it comes back, and be created again).
        time.sleep(3)
        assert cluster.pytorchjob(ns, "steady") is not None
    finally:
        operator.start()

    for name in ("steady", "latecomer"):
        job = cluster.wait_phase(ns, name, "Succeeded", timeout=60)
        assert job["status"]["restarts"] == 0 and job["status"]["observedGeneration"] == job["metadata"]["generation"]
    cluster.wait_gone("PyTorchJob steady (ttlSecondsAfterFinished)", lambda: cluster.pytorchjob(ns, "steady"))
    assert cluster.status(ns, "steady")["phase"] == "Succeeded"
    children = cluster.pytorchjobs(ns)
    assert sorted(c["metadata"]["name"] for c in children) == ["latecomer"]
    for child in children:
        assert owner_uids(child) == [cluster.job(ns, child["metadata"]["name"])["metadata"]["uid"]]
    config_maps = cluster.core.list_namespaced_config_map(ns, label_selector="app.kubernetes.io/managed-by=mft-operator")
    assert sorted(c.metadata.name for c in config_maps.items) == ["latecomer-config", "steady-config"]


def test_a_child_left_from_an_earlier_spec_is_replaced_not_adopted(cluster: Cluster, operator: Operator, ns: str):
    """The operator created the children, then stopped before its status write (or the write failed
    because the spec changed); the spec is edited meanwhile, as it may be until the job starts. The
    PyTorchJob of the old spec is deleted and the job runs the spec it shows."""
    operator.kill()
    try:
        cluster.apply(ns, job_manifest("edited-early", duration="2s"))
        old_spec = cluster.job(ns, "edited-early")
        cluster.apply(ns, *render.render(old_spec, Settings()))  # as the stopped operator would have
        outdated = cluster.pytorchjob(ns, "edited-early")
        assert outdated["metadata"]["annotations"][render.GENERATION_ANNOTATION] == "1"
        cluster.kubectl("patch", "mftjob", "edited-early", "-n", ns, "--type=merge",
                        "-p", '{"spec":{"resources":{"nodes":2}}}')
    finally:
        operator.start()

    job = cluster.wait_phase(ns, "edited-early", "Succeeded", timeout=90)
    child = cluster.pytorchjob(ns, "edited-early")
    assert child["metadata"]["uid"] != outdated["metadata"]["uid"]
    assert child["metadata"]["annotations"][render.GENERATION_ANNOTATION] == str(job["metadata"]["generation"]) == "2"
    assert child["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1  # 2 nodes: the edited spec
    assert job["status"]["restarts"] == 0
    assert any(e.reason == "ReplacingOutdatedChild" for e in cluster.events(ns, "edited-early"))


def test_a_pytorchjob_refused_by_admission_blocks_the_job_with_the_apiservers_message(cluster: Cluster, ns: str):
    # A ValidatingAdmissionPolicy, as a platform team might pause training in a namespace.
    name = f"no-pytorchjobs-{ns}"
    policy = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
              "metadata": {"name": name},
              "spec": {"failurePolicy": "Fail",
                       "matchConstraints": {"resourceRules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                                                               "operations": ["CREATE"], "resources": ["pytorchjobs"]}]},
                       "validations": [{"expression": "false", "message": "training is paused in this namespace"}]}}
    binding = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
               "metadata": {"name": name},
               "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {
                   "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))
    try:
        probe = yaml.safe_dump({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "probe"},
                                "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {
                                    "containers": [{"name": "pytorch", "image": "busybox"}]}}}}}})
        wait_for("the policy to be enforced", lambda: "training is paused" in cluster.kubectl(
            "create", "--dry-run=server", "-n", ns, "-f", "-", input=probe, check=False).stderr, 30)
        cluster.apply(ns, job_manifest("paused"))
        blocked = wait_for("Blocked: ChildRejected", lambda: (c := condition(cluster.status(ns, "paused"), "Blocked"))
                           .get("reason") == "ChildRejected" and c, 30, describe=lambda: cluster.describe(ns))
        assert "PyTorchJob paused was rejected" in blocked["message"], blocked
        assert "training is paused in this namespace" in blocked["message"], blocked
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)
    # Without the policy, the next pass creates it.
    wait_for("the PyTorchJob", lambda: cluster.pytorchjob(ns, "paused"), 90, describe=lambda: cluster.describe(ns))


def test_a_missing_api_and_a_missing_object_are_told_apart_on_real_responses(cluster: Cluster, ns: str, monkeypatch):
    """The operator reports PyTorchJobCRDMissing from a 404 for the resource type; a 404 for one
    object is an absent child. Both as the real apiserver words them."""
    monkeypatch.setitem(kube._CUSTOM, "NoSuchJob", ("kubeflow.org", "v1", "nosuchjobs"))
    api = kube.KubeCluster(cluster.api)
    with pytest.raises(KindMissing):
        api.get("NoSuchJob", ns, "anything")
    with pytest.raises(KindMissing):
        api.create({"kind": "NoSuchJob", "apiVersion": "kubeflow.org/v1", "metadata": {"name": "x", "namespace": ns}})
    assert api.get("PyTorchJob", ns, "absent") is None
