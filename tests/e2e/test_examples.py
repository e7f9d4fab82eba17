"""Each example, applied with ``kubectl apply -f`` as a user would: the operator renders the
PyTorchJob, the real training-operator creates pods and services, the scheduler places them
on fake GPU nodes, KWOK runs them, and the MFTJob ends Succeeded.

What the examples refer to is provided first: PersistentVolumeClaims bound to pre-bound
hostPath volumes, PriorityClasses, the node label of lora's nodeSelector, and for the
operator-created checkpoint claims a volume waiting for them."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from mft_operator.render import labels as operator_labels

from .support import ROOT, Cluster, condition, job_manifest, owner_uids, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "examples"
GPU_PRODUCT = ("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-80GB")


@pytest.fixture(scope="module")
def cluster_objects(cluster: Cluster, chart: dict) -> None:
    """Cluster-scoped things the examples expect to exist."""
    for name, value in (("training-high", 1000), ("high", 900)):
        cluster.apply("default", {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                  "metadata": {"name": name}, "value": value})
    cluster.kubectl("label", "nodes", "--all", "--overwrite", "=".join(GPU_PRODUCT))


def example(stem: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{stem}.yaml").read_text())


def apply_example(cluster: Cluster, ns: str, stem: str) -> dict:
    out = cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / f"{stem}.yaml")).stdout
    assert "created" in out, out
    return example(stem)


def check_children(cluster: Cluster, ns: str, manifest: dict) -> dict:
    """The PyTorchJob has the expected shape and every child is owned by the MFTJob and
    carries only the allow-listed labels (never the MFTJob's own, e.g. ``team``)."""
    name, spec = manifest["metadata"]["name"], manifest["spec"]
    job = cluster.job(ns, name)
    child = wait_for(f"PyTorchJob {ns}/{name}", lambda: cluster.pytorchjob(ns, name), 30,
                     describe=lambda: cluster.describe(ns))
    replicas = child["spec"]["pytorchReplicaSpecs"]
    nodes = spec["resources"]["nodes"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {}).get("replicas", 0) == nodes - 1
    for replica in replicas.values():
        containers = replica["template"]["spec"]["containers"]
        assert [c["name"] for c in containers] == ["pytorch"]
        assert containers[0]["ports"][0]["name"] == "pytorchjob-port"
        assert containers[0]["resources"]["limits"]["nvidia.com/gpu"] == str(spec["resources"]["gpusPerNode"])
    assert owner_uids(child) == [job["metadata"]["uid"]]
    config_map = cluster.config_map(ns, f"{name}-config")
    assert config_map is not None and owner_uids(config_map) == [job["metadata"]["uid"]]
    user_labels = set(manifest["metadata"].get("labels", {}))
    for labels in (child["metadata"]["labels"], config_map.metadata.labels):
        assert operator_labels(name).items() <= labels.items() and not user_labels & set(labels), labels
    return child


def check_ran(cluster: Cluster, ns: str, manifest: dict) -> None:
    """``kubectl wait --for=condition=Succeeded`` returns; pods and headless services per
    replica, pods on distinct fake GPU nodes, all Succeeded; conditions and times in status."""
    name, nodes = manifest["metadata"]["name"], manifest["spec"]["resources"]["nodes"]
    # kubectl wait fails at once on an object without status.conditions, so wait for the first one.
    wait_for("the first condition", lambda: cluster.status(ns, name).get("conditions"), 30)
    waited = cluster.kubectl("wait", "-n", ns, "--for=condition=Succeeded", f"mftjob/{name}", "--timeout=90s",
                             check=False, timeout=100)
    assert waited.returncode == 0, f"kubectl wait: {waited.stderr}\n{cluster.describe(ns)}"
    job = cluster.job(ns, name)
    assert job["status"]["phase"] == "Succeeded"
    expected = {f"{name}-master-0", *(f"{name}-worker-{i}" for i in range(nodes - 1))}
    # Events tell what happened even where cleanPodPolicy deleted pods at the end.
    created = wait_for("the training-operator's events for every pod and service",
                       lambda: (c := _created(cluster, ns)) == {"Pod": expected, "Service": expected} and c,
                       15, describe=lambda: str(_created(cluster, ns)))
    assert created
    placed = wait_for("Scheduled events for every pod",
                      lambda: set(p := _scheduled(cluster, ns)) == expected and p, 15,
                      describe=lambda: str(_scheduled(cluster, ns)))
    nodes_used = set(placed.values())
    assert len(nodes_used) == nodes and all(n.startswith("kwok-gpu-node-") for n in nodes_used), placed
    # The PyTorchJob succeeds with its master; workers scheduled a moment later finish a moment later.
    def completed() -> list | None:
        pods = cluster.pods(ns, name)
        return pods if all(p.status.phase == "Succeeded" for p in pods) else None

    pods = wait_for("the remaining pods to complete", completed, 30,
                    describe=lambda: str([(p.metadata.name, p.status.phase) for p in cluster.pods(ns, name)]))
    assert f"{name}-master-0" in {p.metadata.name for p in pods}
    status = job["status"]
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Created")["status"] == "True"
    assert all(c["lastTransitionTime"] and c["observedGeneration"] == job["metadata"]["generation"]
               for c in status["conditions"])
    assert status["startTime"] <= status["completionTime"]
    assert status["pytorchJob"] == name and status["observedGeneration"] == job["metadata"]["generation"]


def _created(cluster: Cluster, ns: str) -> dict[str, set[str]]:
    """Pods and services the training-operator reports it created: kind -> names."""
    found: dict[str, set[str]] = {"Pod": set(), "Service": set()}
    for event in cluster.core.list_namespaced_event(ns).items:
        match = re.fullmatch(r"Created (pod|service): (\S+)", event.message or "")
        if event.reason in ("SuccessfulCreatePod", "SuccessfulCreateService") and match:
            found[match.group(1).capitalize()].add(match.group(2))
    return found


def _scheduled(cluster: Cluster, ns: str) -> dict[str, str]:
    """Pod -> node, from the scheduler's events."""
    found = {}
    for event in cluster.core.list_namespaced_event(ns, field_selector="reason=Scheduled").items:
        match = re.fullmatch(r"Successfully assigned [^/]+/(\S+) to (\S+)", event.message or "")
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_sst_example_starts_suspended_then_runs_on_four_nodes(cluster: Cluster, cluster_objects: None, ns: str):
    manifest = example("sst")
    name = manifest["metadata"]["name"]
    cluster.provide_claims(ns, "models-pvc", "pretrain-data")
    cluster.provide_volume(ns, f"{name}-checkpoints")  # for the claim the operator creates
    apply_example(cluster, ns, "sst")

    # spec.runPolicy.suspend: true -> a suspended child, no pods.
    job = cluster.wait_phase(ns, name, "Suspended")
    assert condition(job["status"], "Suspended")["status"] == "True"
    child = check_children(cluster, ns, manifest)
    assert child["spec"]["runPolicy"]["suspend"] is True
    assert cluster.pods(ns, name) == []

    # The operator created the checkpoint claim; retainOnDelete (default true): not owned.
    claim = wait_for("the checkpoint PVC to be bound",
                     lambda: (c := cluster.claim(ns, f"{name}-checkpoints")) and c.status.phase == "Bound" and c, 30)
    assert claim.spec.access_modes == ["ReadWriteMany"] and not claim.metadata.owner_references

    cluster.kubectl("patch", "mftjob", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    check_ran(cluster, ns, manifest)
    assert condition(cluster.status(ns, name), "Suspended")["status"] == "False"


def test_sft_example_runs_with_volcano_scheduler_and_owned_checkpoint_claim(
        cluster: Cluster, cluster_objects: None, ns: str):
    manifest = example("sft")
    name = manifest["metadata"]["name"]
    cluster.provide_claims(ns, "shared-models", "code-data")
    cluster.provide_volume(ns, f"{name}-checkpoints", storage_class="fast-ssd")
    apply_example(cluster, ns, "sft")

    child = check_children(cluster, ns, manifest)
    assert child["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 2
    check_ran(cluster, ns, manifest)
    pods = cluster.pods(ns, name)
    assert {p.spec.scheduler_name for p in pods} == {"volcano"}
    assert {p.spec.priority_class_name for p in pods} == {"training-high"}
    claim = cluster.claim(ns, f"{name}-checkpoints")
    assert claim.status.phase == "Bound" and claim.spec.storage_class_name == "fast-ssd"
    assert owner_uids(claim) == [cluster.job(ns, name)["metadata"]["uid"]]  # retainOnDelete: false


def test_lora_example_waits_for_kueue_admission_then_runs(cluster: Cluster, cluster_objects: None, ns: str):
    manifest = example("lora")
    name = manifest["metadata"]["name"]
    cluster.provide_claims(ns, "models-pvc", "data-pvc", "mft-checkpoints")
    cluster.kubectl("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=token=hf_test")
    apply_example(cluster, ns, "lora")

    # scheduling.queueName: created suspended with Kueue's label, for Kueue to admit; Queued meanwhile.
    queued = cluster.wait_phase(ns, name, "Queued")
    waiting = condition(queued["status"], "Queued")
    assert waiting["reason"] == "WaitingForAdmission" and "LocalQueue team-a" in waiting["message"]
    child = check_children(cluster, ns, manifest)
    assert child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert child["spec"]["runPolicy"]["suspend"] is True

    # Admission the way Kueue does it: unsuspend the PyTorchJob. The operator must not undo it.
    cluster.kubectl("patch", "pytorchjob", name, "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    check_ran(cluster, ns, manifest)
    assert cluster.pytorchjob(ns, name)["spec"]["runPolicy"]["suspend"] is False
    for pod in cluster.pods(ns, name):
        assert pod.metadata.annotations["sidecar.istio.io/inject"] == "false"  # spec.podMetadata
        assert pod.metadata.labels["cost-center"] == "ml-research"
        assert pod.metadata.labels["mft.dev/job-name"] == name
        assert dict([GPU_PRODUCT]).items() <= pod.spec.node_selector.items()
        assert pod.spec.priority_class_name == "high"


def test_team_namespace_example_bounds_mftjobs_and_gpus_and_selects_the_trainer_pods(
        cluster: Cluster, cluster_objects: None, ns: str):
    out = cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "setup" / "team-namespace.yaml")).stdout
    assert "resourcequota/mftjobs created" in out and "networkpolicy.networking.k8s.io" in out
    policy = cluster.kubectl("get", "networkpolicy", "mftjob-pods-same-namespace-only", "-n", ns, "-o", "json")
    selector = yaml.safe_load(policy.stdout)["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= operator_labels("any").items()  # every trainer pod carries these labels

    # The quota counts MFTJobs: one more than it allows is refused by the apiserver.
    count = "count/mftjobs.mft.dev"

    def limit(value: str) -> None:
        cluster.kubectl("patch", "resourcequota", "mftjobs", "-n", ns, "--type=merge",
                        "-p", json.dumps({"spec": {"hard": {count: value}}}))

    def counts_one_mftjob() -> bool:
        quota = json.loads(cluster.kubectl("get", "resourcequota", "mftjobs", "-n", ns, "-o", "json").stdout)
        if (quota.get("status") or {}).get("hard", {}).get(count) == "1" and count in quota["status"].get("used", {}):
            return True
        # The controller counts a kind it found at its last discovery (every 30 s) when a quota's
        # limits change, else at its next full resync (every 5 minutes): change them until it does.
        limit("2")
        limit("1")
        return False

    wait_for("the quota controller to count MFTJobs", counts_one_mftjob, 90, interval=5)
    cluster.apply(ns, job_manifest("first", gpus=0))
    refused = cluster.apply(ns, job_manifest("second", gpus=0), check=False)
    assert refused.returncode != 0 and "exceeded quota: mftjobs" in refused.stderr, refused.stderr
