"""The operator's memory of what it watches, in the spirit of client-go's informers: the newest
MFTJob, PyTorchJob and pods that a watch event, a read or our own write delivered, so a
reconcile reads them from memory instead of asking the API server on every pass.

What is remembered is trusted within limits:
- an MFTJob copy is *current* (children may be created from it) only while its status is the one
  our last write produced, as the operator is the only writer of status; any other copy is used
  under the resourceVersion precondition of the status write, which refuses it if it lags;
- a PyTorchJob, or the set of one job's pods, is read again once no event or read has confirmed
  it for ``max_age`` seconds, so an event lost in a watch reconnect costs at most that long;
- a pod set counts as complete only from a LIST (or the creation of its PyTorchJob) on, plus
  every event since; before that the pods are listed.
- refused pod creations (Warning events about PyTorchJobs) come from their watch alone: the
  training operator retries with backoff and its recorder updates the Event for repetitions
  (within its spam filter's budget), so one missed in a reconnect usually comes back; one whose
  deletion was missed (a relist after the watch expired) is dropped once unconfirmed for
  ``WARNING_MAX_AGE`` seconds, past the API server's default event TTL.
A missing PyTorchJob is never taken from memory: the API confirms a deletion before anything is
recreated (which spends restart budget). One deleted after it finished leaves its last state, until
the status write that records the outcome: deleted by hand before any pass saw it finish, and taken
for lost, it would be created, and trained, again. (The operator's own TTL deletion waits for that
write.)
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .render import JOB_NAME_LABEL
from .status import TERMINAL, Event, child_finished

MAX_AGE_SECONDS = 60.0
WARNING_MAX_AGE_SECONDS = 2 * 3600.0  # twice the API server's default --event-ttl

Key = tuple[str, str]


def _key(obj: dict[str, Any]) -> Key:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def _kept(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy to remember, without managedFields (the server-side-apply bookkeeping, often the
    largest part of an object, which nothing here reads), as controller-runtime's
    ``TransformStripManagedFields`` does for its informers."""
    metadata = {key: value for key, value in obj["metadata"].items() if key != "managedFields"}
    return copy.deepcopy({**obj, "metadata": metadata})


@dataclass
class _PodSet:
    complete_since: float | None = None  # when a LIST or the PyTorchJob's creation made it complete
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)  # pod -> when an event last delivered it
    gone: dict[str, float] = field(default_factory=dict)  # pod -> when its deletion was seen


class WatchCache:
    def __init__(self, max_age: float = MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[Key, dict[str, Any]] = {}
        self._job_seen: dict[Key, float] = {}  # when an event, a read or our write last delivered it
        self._written: dict[Key, str] = {}  # resourceVersion our last status write produced
        self._pytorchjobs: dict[Key, tuple[float, dict[str, Any]]] = {}
        self._finished: dict[Key, dict[str, Any]] = {}  # last state of a PyTorchJob deleted once finished
        self._pod_sets: dict[Key, _PodSet] = {}
        # PyTorchJob -> Event uid -> (when an event last delivered it, the Event)
        self._child_warnings: dict[Key, dict[str, tuple[float, dict[str, Any]]]] = {}

    # ------------------------------------------------------------ MFTJobs

    def observe_job(self, job: dict[str, Any]) -> None:
        """A copy from a watch event or a read."""
        kept = _kept(job)
        with self._lock:
            self._jobs[_key(job)] = kept
            self._job_seen[_key(job)] = self.clock()

    def wrote_status(self, patched: dict[str, Any]) -> None:
        """The MFTJob as our status write left it."""
        kept = _kept(patched)
        with self._lock:
            self._jobs[_key(patched)] = kept
            self._job_seen[_key(patched)] = self.clock()
            self._written[_key(patched)] = patched["metadata"]["resourceVersion"]
            if (patched.get("status") or {}).get("phase") in TERMINAL:
                self._finished.pop(_key(patched), None)  # the outcome is recorded

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get((namespace, name))
        return copy.deepcopy(job) if job is not None else None

    def has_job(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self._jobs

    def is_current(self, job: dict[str, Any]) -> bool:
        """Whether the copy carries the MFTJob's current status: nobody but us writes status, so a
        copy is current before our first write and when it is the version our last write made."""
        with self._lock:
            written = self._written.get(_key(job))
        return written is None or written == job["metadata"].get("resourceVersion")

    def is_own_status_write(self, namespace: str, name: str, resource_version: str | None) -> bool:
        """True when this version of the MFTJob is the one our last status write produced: its watch
        event brings nothing the reconcile that wrote it has not seen."""
        with self._lock:
            return resource_version is not None and self._written.get((namespace, name)) == resource_version

    def forget_job(self, namespace: str, name: str) -> None:
        """Drop what is remembered for a deleted MFTJob (its children go with it)."""
        with self._lock:
            self._jobs.pop((namespace, name), None)
            self._job_seen.pop((namespace, name), None)
            self._written.pop((namespace, name), None)
            self._pytorchjobs.pop((namespace, name), None)  # named after its MFTJob
            self._finished.pop((namespace, name), None)
            self._pod_sets.pop((namespace, name), None)
            self._child_warnings.pop((namespace, name), None)

    def jobs(self) -> list[dict[str, Any]]:
        """Every remembered MFTJob, as kept: read them, do not change them."""
        with self._lock:
            return list(self._jobs.values())

    def replace_jobs(self, listed: list[dict[str, Any]], namespace: str | None, listed_at: float) -> list[Key]:
        """Take the MFTJobs of ``namespace`` (None: all) from a LIST started at ``listed_at``, where
        nothing has delivered a newer copy since it started, as client-go's informers replace their
        store; returns those remembered that the LIST did not return (and nothing delivered since it
        started): deleted while a watch was down, for the caller to forget."""
        kept = {_key(job): _kept(job) for job in listed}
        with self._lock:
            for key, job in kept.items():
                if self._job_seen.get(key, float("-inf")) < listed_at:
                    self._jobs[key], self._job_seen[key] = job, listed_at
            return [key for key, seen_at in self._job_seen.items()
                    if namespace in (None, key[0]) and key not in kept and seen_at < listed_at]

    # ------------------------------------------------------------ PyTorchJobs

    def observe_pytorchjob(self, child: dict[str, Any], deleted: bool) -> None:
        kept, key = _kept(child), _key(child)
        with self._lock:
            if not deleted:
                self._pytorchjobs[key] = (self.clock(), kept)
                self._finished.pop(key, None)
                return
            self._pytorchjobs.pop(key, None)
            # Not when the outcome is recorded already (the operator's TTL deletion): nothing would drop it.
            recorded = ((self._jobs.get(key) or {}).get("status") or {}).get("phase") in TERMINAL
            if child_finished(kept) and not recorded:
                self._finished[key] = kept

    def remember_pytorchjob(self, child: dict[str, Any], read_at: float) -> None:
        """A PyTorchJob read or created at ``read_at``, unless an event has delivered a newer one since."""
        kept = _kept(child)
        with self._lock:
            seen_at, _ = self._pytorchjobs.get(_key(child), (float("-inf"), None))
            if seen_at < read_at:
                self._pytorchjobs[_key(child)] = (read_at, kept)
                self._finished.pop(_key(child), None)

    def finished_pytorchjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The last state of the PyTorchJob if it was deleted after it finished, and no status
        write has recorded its outcome since."""
        with self._lock:
            child = self._finished.get((namespace, name))
        return copy.deepcopy(child) if child is not None else None

    def forget_pytorchjob(self, namespace: str, name: str, read_at: float) -> None:
        """The API said at ``read_at`` that the PyTorchJob does not exist: drop what is remembered of
        it, unless an event delivered it since (created again)."""
        with self._lock:
            seen_at, _ = self._pytorchjobs.get((namespace, name), (float("inf"), None))
            if seen_at < read_at:
                del self._pytorchjobs[(namespace, name)]

    def knows_pytorchjob(self, namespace: str, name: str) -> bool:
        """Whether the PyTorchJob exists as far as the watch knows, however long ago it said so."""
        with self._lock:
            return (namespace, name) in self._pytorchjobs

    def pytorchjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The PyTorchJob, or None when it is not known (or no longer trusted): read it."""
        with self._lock:
            seen_at, child = self._pytorchjobs.get((namespace, name), (float("-inf"), None))
        return child if self.clock() - seen_at <= self.max_age else None

    # ------------------------------------------------------------ pods

    def observe_pod(self, pod: dict[str, Any], deleted: bool) -> None:
        job_name = pod["metadata"].get("labels", {}).get(JOB_NAME_LABEL)
        if not job_name:
            return
        key, name, now = (pod["metadata"]["namespace"], job_name), pod["metadata"]["name"], self.clock()
        kept = None if deleted else _kept(pod)
        with self._lock:
            pod_set = self._pod_sets.get(key)
            if pod_set is not None and _superseded(pod, pod_set.pods.get(name), deleted):
                return  # a late event of an earlier pod of the same name: its replacement stays
            if deleted:
                if pod_set is None:
                    return
                pod_set.pods.pop(name, None)
                pod_set.seen.pop(name, None)
                pod_set.gone[name] = now
                if not pod_set.pods and pod_set.complete_since is None:
                    del self._pod_sets[key]  # nothing left to remember for a job nobody listed
                return
            pod_set = self._pod_sets.setdefault(key, _PodSet())
            pod_set.pods[name], pod_set.seen[name] = kept, now
            pod_set.gone.pop(name, None)

    def remember_pods(self, namespace: str, job_name: str, pods: list[dict[str, Any]], listed_at: float) -> None:
        """One job's pods as a LIST started at ``listed_at`` returned them (empty for a PyTorchJob
        just created), merged with what events delivered since the LIST began."""
        listed = {pod["metadata"]["name"]: _kept(pod) for pod in pods}
        with self._lock:
            previous = self._pod_sets.get((namespace, job_name), _PodSet())
            fresh = _PodSet(complete_since=listed_at, pods=listed)
            fresh.seen = {name: listed_at for name in fresh.pods}
            for name, seen_at in previous.seen.items():
                if seen_at >= listed_at:
                    fresh.pods[name], fresh.seen[name] = previous.pods[name], seen_at
            for name, gone_at in previous.gone.items():
                if gone_at >= listed_at:
                    fresh.pods.pop(name, None)
                    fresh.seen.pop(name, None)
                    fresh.gone[name] = gone_at
            self._pod_sets[(namespace, job_name)] = fresh

    def pods(self, namespace: str, job_name: str) -> tuple[dict[str, Any], ...] | None:
        """The job's pods by name, or None when they are not known completely (or no longer trusted)."""
        with self._lock:
            pod_set = self._pod_sets.get((namespace, job_name))
            if pod_set is None or pod_set.complete_since is None or self.clock() - pod_set.complete_since > self.max_age:
                return None
            return tuple(pod_set.pods[name] for name in sorted(pod_set.pods))


    # ------------------------------------------------------------ Warning events about PyTorchJobs

    def observe_child_warning(self, event: dict[str, Any], deleted: bool) -> Key:
        """Remember (or forget) an Event; returns the PyTorchJob it is about."""
        about = event["involvedObject"]
        key = (about.get("namespace") or event["metadata"]["namespace"], about["name"])
        uid = event["metadata"]["uid"]
        kept = None if deleted else _kept(event)
        with self._lock:
            warnings = self._child_warnings.setdefault(key, {})
            if kept is None:
                warnings.pop(uid, None)
            else:
                warnings[uid] = (self.clock(), kept)
            if not warnings:
                del self._child_warnings[key]
        return key

    def child_warnings(self, namespace: str, name: str) -> tuple[dict[str, Any], ...]:
        with self._lock:
            return tuple(event for _, event in self._child_warnings.get((namespace, name), {}).values())

    def prune_child_warnings(self) -> None:
        """Drop Events no watch event has confirmed for ``WARNING_MAX_AGE_SECONDS``."""
        oldest = self.clock() - WARNING_MAX_AGE_SECONDS
        with self._lock:
            for key in list(self._child_warnings):
                kept = {uid: entry for uid, entry in self._child_warnings[key].items() if entry[0] >= oldest}
                if kept:
                    self._child_warnings[key] = kept
                else:
                    del self._child_warnings[key]


def _superseded(pod: dict[str, Any], cached: dict[str, Any] | None, deleted: bool) -> bool:
    """kopf handles each object's events on its own worker, so the events of a replaced pod can
    come after the ADDED event of its replacement (same name, another uid): its deletion never
    removes the replacement, and a modification does only if it is not older."""
    if cached is None or cached["metadata"].get("uid") == pod["metadata"].get("uid"):
        return False
    return deleted or _created_before(pod["metadata"], cached["metadata"])


def _created_before(older: dict[str, Any], newer: dict[str, Any]) -> bool:
    """Whether the pod ``older`` came before ``newer`` of the same name. Creation times have whole
    seconds; within one second, the resourceVersion decides: a pod's name is free only once the
    pod before it is gone, so every version of that one is older. resourceVersions are opaque in
    general, so only when both are the integers the API server's etcd storage gives."""
    older_time, newer_time = older.get("creationTimestamp", ""), newer.get("creationTimestamp", "")
    if older_time != newer_time:
        return older_time < newer_time
    older_version, newer_version = str(older.get("resourceVersion", "")), str(newer.get("resourceVersion", ""))
    return older_version.isdigit() and newer_version.isdigit() and int(older_version) < int(newer_version)


class CachedCluster:
    """A ``reconcile.Cluster`` that answers PyTorchJob and pod reads from a ``WatchCache`` when it
    can, and keeps the cache up to date with what it reads and writes."""

    def __init__(self, cluster: Any, cache: WatchCache):
        self.cluster = cluster
        self.cache = cache

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if kind != "PyTorchJob":
            return self.cluster.get(kind, namespace, name)
        child = self.cache.pytorchjob(namespace, name)
        if child is None:
            read_at = self.cache.clock()
            child = self.cluster.get(kind, namespace, name)
            if child is not None:
                self.cache.remember_pytorchjob(child, read_at)
            else:  # its deletion event was missed (a relist), or a read raced with it
                self.cache.forget_pytorchjob(namespace, name, read_at)
        return child

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        started = self.cache.clock()
        created = self.cluster.create(manifest)
        if manifest["kind"] == "PyTorchJob":
            self.cache.remember_pytorchjob(created, started)
            # A PyTorchJob that did not exist has no pods yet: every pod of it is an event from here on.
            self.cache.remember_pods(*_key(created), [], started)
        return created

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.cluster.patch(kind, namespace, name, patch)

    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        pods = self.cache.pods(namespace, job_name)
        if pods is not None:
            return list(pods)
        listed_at = self.cache.clock()
        listed = self.cluster.list_pods(namespace, job_name)
        self.cache.remember_pods(namespace, job_name, listed, listed_at)
        return listed

    def child_warnings(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.cache.child_warnings(namespace, name))

    def master_log(self, namespace: str, pod_name: str) -> str:
        return self.cluster.master_log(namespace, pod_name)

    def finished_child(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cache.finished_pytorchjob(namespace, name)

    def delete_child(self, obj: dict[str, Any]) -> None:
        self.cluster.delete_child(obj)  # the PyTorchJob watch delivers the deletion

    def delete_pod(self, pod: dict[str, Any], grace_seconds: int | None) -> None:
        self.cluster.delete_pod(pod, grace_seconds)  # the pod watch delivers the deletion

    def patch_status(self, job: dict[str, Any], new_status: dict[str, Any]) -> dict[str, Any]:
        patched = self.cluster.patch_status(job, new_status)
        self.cache.wrote_status(patched)
        return patched

    def event(self, job: dict[str, Any], event: Event) -> None:
        self.cluster.event(job, event)

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = self.cluster.get_job(namespace, name)
        if job is not None:
            self.cache.observe_job(job)
        return job

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        return self.cluster.list_jobs(namespace)
