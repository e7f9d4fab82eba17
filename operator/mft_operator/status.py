"""MFTJob status from what the operator observed: the PyTorchJob's conditions, its pods, the
trainer's last reports and the previous status. Pure; ``now`` is an input."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Any

from . import progress as progress_mod

PENDING, CREATED, RUNNING, RESTARTING = "Pending", "Created", "Running", "Restarting"
SUCCEEDED, FAILED, SUSPENDED = "Succeeded", "Failed", "Suspended"
# Suspended by Kueue, not by the user: waiting to be admitted from its LocalQueue.
QUEUED = "Queued"
TERMINAL = frozenset({SUCCEEDED, FAILED})
ACTIVE = frozenset({PENDING, CREATED, QUEUED, RUNNING, RESTARTING, SUSPENDED})
# PyTorchJob condition types, strongest first: the phase is the first one that is True.
CHILD_PHASES = (SUCCEEDED, FAILED, SUSPENDED, RESTARTING, RUNNING, CREATED)
# Child phases in which the trainer has run, so its log may hold progress.
STARTED = frozenset({RUNNING, RESTARTING, SUCCEEDED, FAILED})
BLOCKED = "Blocked"
# spec.runPolicy.backoffLimit's default (the CRD's); the training operator does not enforce it
# under restartPolicy ExitCode (it counts container restarts, and failed pods are replaced instead).
DEFAULT_BACKOFF_LIMIT = 3
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"

# metav1.Condition's limits, which the CRD's condition schema repeats.
_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
MAX_CONDITION_MESSAGE = 32768

REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"

# Container waiting reasons that need a person (a wrong image, a missing secret).
_STUCK_WAITING = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
})
# The training operator's Warning event for a pod the API server refused (a ResourceQuota, Pod
# Security admission, a webhook). It retries with backoff and sets no condition, so without
# this event the job would only look Created, with no pods.
FAILED_CREATE_POD = "FailedCreatePod"
_COMBINED = "(combined from similar events): "  # client-go's aggregate of 10 similar events


@dataclass(frozen=True)
class Problem:
    """Something that keeps the job from progressing: ``Blocked`` condition and a warning event.
    A terminal problem (e.g. the restart budget is spent) fails the job."""

    reason: str
    message: str
    terminal: bool = False


@dataclass(frozen=True)
class Observation:
    now: str
    child: dict[str, Any] | None = None
    pods: tuple[dict[str, Any], ...] = ()
    reports: progress_mod.Reports = field(default_factory=progress_mod.Reports)
    problems: tuple[Problem, ...] = ()
    recreated: bool = False  # the operator just recreated a vanished PyTorchJob
    child_warnings: tuple[dict[str, Any], ...] = ()  # Warning events (core/v1) about the PyTorchJob


def derive(job: dict[str, Any], seen: Observation) -> dict[str, Any]:
    """The new ``status`` of ``job``."""
    previous = job.get("status") or {}
    generation = job["metadata"].get("generation")
    status = copy.deepcopy(previous)
    status["observedGeneration"] = generation
    if seen.child is not None:
        status["pytorchJob"] = seen.child["metadata"]["name"]
    status["restarts"] = previous.get("restarts", 0) + (1 if seen.recreated else 0)
    _merge_reports(status, seen.reports)

    if previous.get("phase") in TERMINAL:
        return status  # terminal is final: a vanished or TTL-deleted child changes nothing

    seen = _count_pod_restarts(job, status, seen)

    phase, child_condition = _phase(seen)
    queue = (job["spec"].get("scheduling") or {}).get("queueName")
    if phase == SUSPENDED and queue:
        # Kueue owns a queued job's suspension (spec.runPolicy.suspend is ignored for it).
        phase, child_condition = QUEUED, {
            "reason": "WaitingForAdmission",
            "message": f"Waiting for Kueue to admit the job from LocalQueue {queue} (scheduling.queueName); "
                       f"kubectl -n {job['metadata'].get('namespace')} get workloads shows its place and why.",
        }
    if phase == PENDING and seen.problems and previous.get("phase") in ACTIVE:
        # The child could not be read this time (its API went missing, say): Blocked says why,
        # and the phase stays what was last seen rather than fall back to Pending.
        phase = previous["phase"]
    status["phase"] = phase
    if seen.child is not None and "startTime" not in status:
        status["startTime"] = seen.now  # the spec's training setup is fixed from here on (CRD rules)
    if phase in TERMINAL:
        status["completionTime"] = _child_status(seen).get("completionTime") or seen.now

    failure = _failure(seen, phase, child_condition, status.get("replicaPods", {}))
    if failure:
        status["failure"] = failure
        if "replica" in failure and child_condition and phase in (FAILED, RESTARTING):
            # The condition names the replica and exit code, not only the child's summary.
            summary = child_condition.get("message") or f"The job is {phase}."
            child_condition = {**child_condition, "message": f"{summary} {failure_summary(failure)}"}

    conditions = _phase_conditions(previous.get("conditions", []), phase, child_condition, seen)
    status["conditions"] = _stamp(previous.get("conditions", []), conditions, seen.now, generation)
    return status


def child_finished(child: dict[str, Any]) -> bool:
    """Whether the PyTorchJob reports an outcome (Succeeded or Failed)."""
    return any(c.get("status") == "True" and c.get("type") in TERMINAL
               for c in (child.get("status") or {}).get("conditions", []))


def backoff_limit(job: dict[str, Any]) -> int:
    return job["spec"].get("runPolicy", {}).get("backoffLimit", DEFAULT_BACKOFF_LIMIT)


@dataclass(frozen=True)
class Replacements:
    """What the pods say about restarts since the last pass (see ``replacements``)."""

    replaced: tuple[str, ...]  # replicas running a new pod since the last pass
    to_delete: tuple[dict[str, Any], ...]  # running pods of the old process group
    seen: dict[str, str]  # replica -> uid of its pod, as status.replicaPods records it


# A replica of the old process group restarting with a replaced one is recorded with a prefix and
# the uid of its old pod until a new pod appears: the old one may still show (terminating, failed,
# or not yet updated in the watch cache), and the new one belongs to this restart, not another.
# STOPPING marks a running pod the operator deletes (how it ends is not a cause of anything).
RESTARTING_AS, STOPPING_AS = "restarting:", "stopping:"
_OLD_POD = (RESTARTING_AS, STOPPING_AS)


def replacements(recorded: dict[str, str], pods: tuple[dict[str, Any], ...], replicas: int) -> Replacements:
    """Compare each replica's pod with the one last recorded: a new uid is a replacement (the
    training operator deletes a pod that failed with a retryable exit code and creates it again).

    Its condition cannot tell: with the master still running, Restarting is set and cleared in one
    of its passes, often without ever being written. The other replicas restart with it: a running
    pod is still in the process group of the old one, waiting on a peer that is gone, and a static
    rendezvous lets no new pod join it, so it is deleted and all replicas start again together (as a
    JobSet restarts all its jobs). A pending one has joined nothing yet and stays."""
    current = {replica_name(p): p for p in pods if not p["metadata"].get("deletionTimestamp")}
    seen = dict(recorded)
    replaced = []
    for replica, pod in sorted(current.items()):
        uid, known = pod["metadata"]["uid"], recorded.get(replica)
        if known in (RESTARTING_AS + uid, STOPPING_AS + uid):
            continue  # the old pod, still showing
        if known is not None and known != uid and not known.startswith(_OLD_POD):
            replaced.append(replica)
        seen[replica] = uid
    if replaced and replicas > 1:
        for replica, known in recorded.items():
            pod = current.get(replica)
            same = pod is not None and pod["metadata"]["uid"] == known
            if replica in replaced or known.startswith(_OLD_POD) or (same and _pod_phase(pod) == "Pending"):
                continue
            seen[replica] = (STOPPING_AS if same and _pod_phase(pod) == "Running" else RESTARTING_AS) + known
    # Deleted now, or again on a later pass if the deletion did not happen.
    to_delete = tuple(pod for replica, pod in sorted(current.items())
                      if seen.get(replica) == STOPPING_AS + pod["metadata"]["uid"] and _pod_phase(pod) == "Running")
    return Replacements(tuple(replaced), to_delete, seen)


def stopped_by_the_operator(replica_pods: dict[str, str]) -> set[str]:
    return {value.removeprefix(STOPPING_AS) for value in replica_pods.values() if value.startswith(STOPPING_AS)}


def _pod_phase(pod: dict[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def pod_replacements(recorded: dict[str, str], seen: Observation) -> Replacements | None:
    """``replacements`` of the child's own pods, or None where pods are not compared: without a
    child (or one that cannot be read), once it is suspended (its pods are deleted on purpose) or
    just recreated (all its pods are new). Pods of an earlier child of the same name, not yet
    collected, are not its own."""
    if seen.child is None or _suspended(seen.child) or seen.recreated:
        return None
    uid = seen.child["metadata"].get("uid")
    own = tuple(p for p in seen.pods if not any(ref.get("controller") and ref.get("uid") != uid
                                                 for ref in p["metadata"].get("ownerReferences", [])))
    return replacements(recorded, own, replica_count(seen.child))


def _count_pod_restarts(job: dict[str, Any], status: dict[str, Any], seen: Observation) -> Observation:
    """Count the training operator's restarts of failed pods (a pass that finds replicas running
    new pods counts one) and fail the job past backoffLimit."""
    found = pod_replacements(status.get("replicaPods", {}), seen)
    if found is None:
        if seen.child is not None:  # suspended or recreated: its next pods are all new
            status.pop("replicaPods", None)
        return seen
    status["replicaPods"] = found.seen
    if found.replaced:
        status["podRestarts"] = status.get("podRestarts", 0) + 1
        status["lastPodRestartTime"] = seen.now
    limit = backoff_limit(job)
    if status.get("podRestarts", 0) <= limit:
        return seen
    message = (f"the training operator restarted failed pods {status['podRestarts']} times, more than "
               f"spec.runPolicy.backoffLimit ({limit})")
    return replace(seen, problems=(*seen.problems, Problem(BACKOFF_LIMIT_EXCEEDED, message, terminal=True)))


def child_expiry(job: dict[str, Any], now: str) -> str | None:
    """Why a finished job's PyTorchJob is due for deletion, or None while it is not. The operator,
    not the training operator, applies ttlSecondsAfterFinished: it counts from the outcome recorded
    here, so a child is never deleted before this status says how it ended. A job failed for too
    many pod restarts ends its child at once: the training operator would go on replacing the pods
    (and Kueue would undo a suspension)."""
    status = job.get("status") or {}
    if status.get("phase") not in TERMINAL:
        return None
    if _condition_of(status, FAILED).get("reason") == BACKOFF_LIMIT_EXCEEDED:
        return "the job failed for too many pod restarts"
    ttl = job["spec"].get("runPolicy", {}).get("ttlSecondsAfterFinished")
    finished = status.get("completionTime")
    if ttl is None or finished is None or _seconds_since(finished, now) < ttl:
        return None
    return f"the job finished at {finished} and runPolicy.ttlSecondsAfterFinished is {ttl}"


def _seconds_since(then: str, now: str) -> float:
    """0 for a time that cannot be read (a status written by hand): never due, rather than a
    failure that would stop the poll of every job."""
    try:
        return progress_mod.seconds_between(then, now)
    except (TypeError, ValueError):
        return 0.0


def _child_status(seen: Observation) -> dict[str, Any]:
    return (seen.child or {}).get("status") or {}


def _phase(seen: Observation) -> tuple[str, dict[str, Any] | None]:
    terminal = next((p for p in seen.problems if p.terminal), None)
    if terminal:
        return FAILED, {"type": FAILED, "reason": terminal.reason, "message": terminal.message}
    if seen.child is None:
        return PENDING, None
    true = {c["type"]: c for c in _child_status(seen).get("conditions", []) if c.get("status") == "True"}
    for phase in CHILD_PHASES:
        if phase in true:
            return phase, true[phase]
    return CREATED, None


def _phase_conditions(previous: list[dict[str, Any]], phase: str, child_condition: dict[str, Any] | None,
                      seen: Observation) -> list[dict[str, Any]]:
    """One condition per phase type ever reached (True for the current phase; Created stays
    True once the child exists), and Blocked while there is a problem."""
    types = [c["type"] for c in previous if c["type"] != BLOCKED]
    for wanted in ([CREATED] if seen.child is not None else []) + ([phase] if phase != PENDING else []):
        if wanted not in types:
            types.append(wanted)
    conditions = [_phase_condition(t, phase, child_condition) for t in types]
    problems = ([p for p in seen.problems if not p.terminal] + _pod_creation_problems(seen, phase, previous)
                + _pod_problems(seen.pods))
    if problems:
        message = "; ".join(p.message for p in problems)
        conditions.append(_condition(BLOCKED, True, problems[0].reason, message))
    elif any(c["type"] == BLOCKED for c in previous):
        conditions.append(_condition(BLOCKED, False, "Resolved", "No problem observed."))
    return conditions


def _phase_condition(condition_type: str, phase: str, child_condition: dict[str, Any] | None) -> dict[str, Any]:
    if condition_type == phase and child_condition:
        return _condition(phase, True, child_condition.get("reason") or phase,
                          child_condition.get("message") or f"The job is {phase}.")
    if condition_type == CREATED:
        return _condition(CREATED, True, "PyTorchJobCreated", "The PyTorchJob was created.")
    if condition_type == phase:
        return _condition(phase, True, phase, f"The job is {phase}.")
    return _condition(condition_type, False, phase, f"The job is {phase}.")


def _condition(condition_type: str, is_true: bool, reason: str, message: str) -> dict[str, Any]:
    """A condition the CRD's metav1.Condition schema accepts: a status write with one it refuses
    would fail as a whole. A reason passed on from another controller that is not CamelCase gives
    way to the type; a message is cut to its limit."""
    if not _REASON.fullmatch(reason):
        reason = condition_type
    if len(message) > MAX_CONDITION_MESSAGE:
        message = message[:MAX_CONDITION_MESSAGE - 3] + "..."
    return {"type": condition_type, "status": "True" if is_true else "False", "reason": reason, "message": message}


def _stamp(previous: list[dict[str, Any]], conditions: list[dict[str, Any]], now: str,
           generation: int | None) -> list[dict[str, Any]]:
    """lastTransitionTime changes only when a condition's status flips."""
    old = {c["type"]: c for c in previous}
    stamped = []
    for condition in conditions:
        before = old.get(condition["type"])
        same = before is not None and before.get("status") == condition["status"]
        when = before.get("lastTransitionTime", now) if same else now
        stamped.append({**condition, "lastTransitionTime": when, "observedGeneration": generation})
    return stamped


# ---------------------------------------------------------------- reports


def _merge_reports(status: dict[str, Any], reports: progress_mod.Reports) -> None:
    """Fields a record lacks (validLoss between evaluations) keep their last known value."""
    if reports.progress is not None:
        merged = {**status.get("progress", {}), **progress_mod.progress_status(reports.progress)}
        text = progress_mod.summary(merged)
        if text:
            merged["summary"] = text
        status["progress"] = merged
    if reports.checkpoint is not None:
        status["checkpoints"] = {**status.get("checkpoints", {}), **progress_mod.checkpoint_status(reports.checkpoint)}


# ---------------------------------------------------------------- failures and pod problems


def _failure(seen: Observation, phase: str, child_condition: dict[str, Any] | None,
             replica_pods: dict[str, str]) -> dict[str, Any] | None:
    """Why the job failed or last restarted: the latest failed container, else the child's reason.
    A failed container counts whenever it is seen: the training operator deletes a pod it restarts,
    often before its child reports Restarting. Containers stopped on purpose do not: by a
    suspension, or by the operator restarting a replica with the others."""
    if seen.child is not None and _suspended(seen.child):
        return None
    stopped = stopped_by_the_operator(replica_pods)
    failure = _latest_container_failure(tuple(p for p in seen.pods if p["metadata"]["uid"] not in stopped))
    if failure:
        return failure
    if phase == FAILED and child_condition:
        return {k: v for k, v in (("reason", child_condition.get("reason")), ("message", child_condition.get("message"))) if v}
    return None


def _suspended(child: dict[str, Any]) -> bool:
    """Suspended, or asked to be (the training operator deletes the pods): pods stop on purpose."""
    return _suspend_requested(child) or any(c["type"] == SUSPENDED and c.get("status") == "True"
                                            for c in (child.get("status") or {}).get("conditions", []))


def _suspend_requested(child: dict[str, Any]) -> bool:
    return bool(((child.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


def _latest_container_failure(pods: tuple[dict[str, Any], ...]) -> dict[str, Any] | None:
    found: list[tuple[str, dict[str, Any]]] = []
    for pod in pods:
        replica = replica_name(pod)
        pod_status = pod.get("status") or {}
        if pod_status.get("reason") == "Evicted":
            found.append(("", {"replica": replica, "reason": "Evicted", "message": pod_status.get("message", "")}))
        for container in pod_status.get("initContainerStatuses", []) + pod_status.get("containerStatuses", []):
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                terminated = state.get("terminated")
                if terminated and terminated.get("exitCode", 0) != 0:
                    found.append((terminated.get("finishedAt") or "", _container_failure(replica, container["name"], terminated)))
    if not found:
        return None
    return max(found, key=lambda item: item[0])[1]


def failure_summary(failure: dict[str, Any]) -> str:
    """``master-0 exited with code 3 (Error): <message>``: the replica and exit code first."""
    replica, message = failure.get("replica"), failure.get("message") or ""
    if "exitCode" in failure:
        head = f"{replica or 'a replica'} exited with code {failure['exitCode']} ({failure.get('reason') or 'Error'})"
    else:
        head = ": ".join(part for part in (replica, failure.get("reason")) if part)
    if not head or head in message:
        return message or head
    return f"{head}: {message}" if message else head


def _container_failure(replica: str, container: str, terminated: dict[str, Any]) -> dict[str, Any]:
    code = terminated["exitCode"]
    reason = terminated.get("reason") or "Error"
    message = (terminated.get("message") or "").strip()
    if reason == "OOMKilled":
        message = (f"container {container} of {replica} ran out of memory (exit code {code}); raise "
                   "resources.memory or lower training.perDeviceTrainBatchSize or training.seqLength")
    elif not message:
        message = f"container {container} of {replica} exited with code {code}"
    return {"replica": replica, "exitCode": code, "reason": reason, "message": message}


def replica_name(pod: dict[str, Any]) -> str:
    """``master-0``, ``worker-3``: the replica a pod runs (Kubeflow's labels), else the pod name."""
    pod_labels = pod["metadata"].get("labels", {})
    if REPLICA_TYPE_LABEL in pod_labels:
        return f"{pod_labels[REPLICA_TYPE_LABEL]}-{pod_labels.get(REPLICA_INDEX_LABEL, '0')}"
    return pod["metadata"]["name"]


def _pod_creation_problems(seen: Observation, phase: str, previous: list[dict[str, Any]]) -> list[Problem]:
    """The API server refuses the child's pods, while pods are missing: a FailedCreatePod event
    about this PyTorchJob since its newest pod and its last condition change (Events have
    one-second timestamps; one from the same second still counts, as a refusal then leaves a pod
    missing). Once reported, a refusal stands until every pod exists: the training operator's
    recorder drops repetitions beyond a burst (about one per 5 minutes), so the newest pod can be
    younger than the refusal still in force."""
    if seen.child is None or len(seen.pods) >= replica_count(seen.child) or not _wants_pods(seen.child, phase):
        return []
    uid = seen.child["metadata"].get("uid")
    refusals = [e for e in seen.child_warnings
                if e.get("reason") == FAILED_CREATE_POD and e.get("involvedObject", {}).get("uid") == uid]
    reported = next((c for c in previous if c["type"] == BLOCKED), {})
    if not (reported.get("status") == "True" and reported.get("reason") == FAILED_CREATE_POD):
        since = max([_second(p["metadata"].get("creationTimestamp")) for p in seen.pods]
                    + [_second(c.get("lastTransitionTime")) for c in _child_status(seen).get("conditions", [])],
                    default="")
        refusals = [e for e in refusals if _second(_event_time(e)) >= since]
    if not refusals:
        return []
    latest = max(refusals, key=lambda e: _second(_event_time(e)))
    message = (latest.get("message") or "").removeprefix(_COMBINED).removeprefix("Error creating: ")
    return [Problem(FAILED_CREATE_POD, f"the training operator cannot create pods: {message}")]


def _wants_pods(child: dict[str, Any], phase: str) -> bool:
    """The child should have all its pods: it is active, or suspended with a resume asked for
    (the training operator keeps Suspended in its status until the resumed pods exist)."""
    if phase in (SUSPENDED, QUEUED):
        return not _suspend_requested(child)
    return phase in (CREATED, RUNNING, RESTARTING)


def replica_count(child: dict[str, Any]) -> int:
    replica_specs = (child.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    return sum(spec.get("replicas", 1) for spec in replica_specs.values())


def _event_time(event: dict[str, Any]) -> str:
    """When an Event last happened, in either of its API forms (core/v1 counts repetitions in
    lastTimestamp, events.k8s.io in series.lastObservedTime)."""
    return ((event.get("series") or {}).get("lastObservedTime") or event.get("lastTimestamp")
            or event.get("eventTime") or event.get("metadata", {}).get("creationTimestamp") or "")


def _second(timestamp: str | None) -> str:
    """An RFC 3339 UTC time cut to whole seconds, so that MicroTime and Time compare as text."""
    return (timestamp or "")[:19]


def _pod_problems(pods: tuple[dict[str, Any], ...]) -> list[Problem]:
    problems = []
    for pod in pods:
        replica = replica_name(pod)
        pod_status = pod.get("status") or {}
        for container in pod_status.get("initContainerStatuses", []) + pod_status.get("containerStatuses", []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _STUCK_WAITING:
                detail = waiting.get("message") or ""
                problems.append(Problem(waiting["reason"], f"{replica}: {container['name']}: {waiting['reason']}"
                                        + (f": {detail}" if detail else "")))
        for condition in pod_status.get("conditions", []):
            if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
                problems.append(Problem("Unschedulable", f"{replica}: {condition.get('message', 'cannot be scheduled')}"))
    return problems


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def events(before: dict[str, Any], after: dict[str, Any]) -> list[Event]:
    """Events for what changed between two statuses: phase transitions and new problems."""
    found = []
    old_phase, new_phase = before.get("phase"), after.get("phase")
    if new_phase != old_phase:
        kind = "Warning" if new_phase in (FAILED, RESTARTING) else "Normal"
        detail = failure_summary(after["failure"]) if new_phase in (FAILED, RESTARTING) and after.get("failure") else None
        found.append(Event(kind, new_phase, f"{old_phase or 'New'} -> {new_phase}" + (f": {detail}" if detail else "")))
    old_blocked = _condition_of(before, BLOCKED)
    new_blocked = _condition_of(after, BLOCKED)
    if new_blocked.get("status") == "True" and (old_blocked.get("status"), old_blocked.get("message")) != ("True", new_blocked["message"]):
        found.append(Event("Warning", new_blocked["reason"], new_blocked["message"]))
    if after.get("restarts", 0) > before.get("restarts", 0):
        found.append(Event("Warning", "PyTorchJobRecreated",
                           f"the PyTorchJob disappeared while the job was active; recreated it (restart {after['restarts']})"))
    return found


def _condition_of(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), {})
