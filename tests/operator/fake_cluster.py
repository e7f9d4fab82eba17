"""An in-memory ``reconcile.Cluster`` that records what the operator did."""

from __future__ import annotations

import copy
from typing import Any

from mft_operator.reconcile import AlreadyExists, KindMissing, Rejected, Stale


class FakeCluster:
    def __init__(self, *, crd_installed: bool = True, reject: str | None = None):
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []  # Warning events about PyTorchJobs
        self.deleted_pods: list[str] = []
        self.deleted_children: list[str] = []
        self.finished: dict[tuple[str, str], dict[str, Any]] = {}  # PyTorchJobs deleted once finished
        self.delete_graces: list[int | None] = []
        self.logs: dict[str, str] = {}
        self.events: list[Any] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[dict[str, Any]] = []
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.crd_installed = crd_installed
        self.reject = reject
        self.creates = 0
        self.pod_lists = 0
        self.child_reads = 0
        self.job_reads = 0
        self.resource_version = 0

    def add(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    def claim(self, namespace: str, name: str) -> None:
        self.add({"kind": "PersistentVolumeClaim", "metadata": {"namespace": namespace, "name": name}})

    def get(self, kind, namespace, name):
        if kind == "PyTorchJob" and not self.crd_installed:
            raise KindMissing(kind)
        self.child_reads += kind == "PyTorchJob"
        return copy.deepcopy(self.objects.get((kind, namespace, name)))

    def create(self, manifest):
        if manifest["kind"] == "PyTorchJob" and not self.crd_installed:
            raise KindMissing("PyTorchJob")
        if manifest["kind"] == self.reject:
            raise Rejected("admission webhook said no")
        meta = manifest["metadata"]
        if (manifest["kind"], meta["namespace"], meta["name"]) in self.objects:
            raise AlreadyExists(meta["name"])
        self.creates += 1
        manifest = copy.deepcopy(manifest)
        manifest["metadata"].setdefault("uid", f"uid-{manifest['kind'].lower()}-{self.creates}")  # as the API server
        self.add(manifest)
        return copy.deepcopy(manifest)

    def patch(self, kind, namespace, name, patch):
        self.patches.append((kind, patch))
        _merge(self.objects[(kind, namespace, name)], patch)

    def list_pods(self, namespace, job_name):
        self.pod_lists += 1
        return copy.deepcopy(self.pods)

    def child_warnings(self, namespace, name):
        return [copy.deepcopy(e) for e in self.warnings
                if (e["involvedObject"]["namespace"], e["involvedObject"]["name"]) == (namespace, name)]

    def finished_child(self, namespace, name):
        return copy.deepcopy(self.finished.get((namespace, name)))

    def delete_child(self, obj):
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        if self.objects.get(key, {}).get("metadata", {}).get("uid") == meta["uid"]:
            self.deleted_children.append(meta["name"])
            del self.objects[key]

    def delete_pod(self, pod, grace_seconds):
        self.deleted_pods.append(pod["metadata"]["name"])
        self.delete_graces.append(grace_seconds)
        self.pods = [p for p in self.pods if p["metadata"].get("uid") != pod["metadata"].get("uid")]

    def master_log(self, namespace, pod_name):
        return self.logs.get(pod_name, "")

    def patch_status(self, job, new_status):
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        stored = self.jobs.get(key, {}).get("metadata", {}).get("resourceVersion")
        given = job["metadata"].get("resourceVersion")
        if None not in (stored, given) and stored != given:  # a merge patch without one has no precondition
            raise Stale(f"{key}: at {stored}, written from {given}")
        self.statuses.append(copy.deepcopy(new_status))
        self.resource_version += 1
        written = self.jobs.get(key) or copy.deepcopy(job)
        written["metadata"]["resourceVersion"] = str(self.resource_version)
        written["status"] = copy.deepcopy(new_status)
        return copy.deepcopy(written)

    def event(self, job, event):
        self.events.append(event)

    def list_jobs(self, namespace):
        return [copy.deepcopy(j) for (ns, _), j in self.jobs.items() if namespace in (None, ns)]

    def get_job(self, namespace, name):
        self.job_reads += 1
        return copy.deepcopy(self.jobs.get((namespace, name)))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
