"""One reconciliation of one MFTJob: observe, create what is missing, sync what the user may
change, derive status, emit events. Level-based and idempotent: it may run any number of
times, from any trigger (an MFTJob, PyTorchJob or pod event, or the progress timer).

The cluster is behind the small ``Cluster`` interface (``kube.py`` is the real one; tests
use an in-memory one); the decisions are pure functions.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from . import progress, render, status
from .settings import Settings
from .status import Event, Observation, Problem

log = logging.getLogger(__name__)

PYTORCHJOB = "PyTorchJob"
CRASH_GRACE_SECONDS = 5


class AlreadyExists(Exception):
    pass


class KindMissing(Exception):
    """The API has no such resource: the PyTorchJob CRD is not installed."""


class Rejected(Exception):
    """The apiserver (or an admission webhook) refused an object; the message says why."""


class Gone(Exception):
    """The MFTJob no longer exists (a status write found it deleted, or a recreation did not find
    it): nothing more is done for it, and what is remembered of it is dropped."""


class RequestFailed(Exception):
    """An API request failed for a reason the pass cannot act on (refused by RBAC or admission,
    throttled, the apiserver unavailable, no answer in time); the message says which request and why."""


class Stale(Exception):
    """The MFTJob changed since it was read (a status write's resourceVersion precondition failed),
    or a pass that may create children was given a copy not read just now: read it again."""


class Cluster(Protocol):
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None: ...
    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]: ...
    def child_warnings(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Warning events about the PyTorchJob ``name`` (the training operator's reports)."""
    def master_log(self, namespace: str, pod_name: str) -> str: ...
    def finished_child(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The last state of the PyTorchJob ``name`` if it was deleted after it finished
        (by hand, say) and its outcome is not recorded yet; None if not known."""
    def delete_child(self, obj: dict[str, Any]) -> None:
        """Delete this PyTorchJob (its uid), its pods before it (foreground); gone already is fine."""
    def delete_pod(self, pod: dict[str, Any], grace_seconds: int | None) -> None:
        """Delete this pod (its uid: never a replacement of the same name) with that grace period
        (None: its own); gone already is fine."""
    def patch_status(self, job: dict[str, Any], new_status: dict[str, Any]) -> dict[str, Any]:
        """Write status only if the MFTJob is still at job's resourceVersion (else raise Stale);
        return the MFTJob as written."""
    def event(self, job: dict[str, Any], event: Event) -> None: ...
    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The MFTJob as the API has it now; None if it does not exist."""


# ---------------------------------------------------------------- pure decisions

CREATE, RECREATE, BUDGET_SPENT = "create", "recreate", "budget-spent"


def restart_budget(job: dict[str, Any]) -> int:
    run_policy = job["spec"].get("runPolicy", {})
    return run_policy.get("restartBudget", status.backoff_limit(job))


def plan_missing_child(job: dict[str, Any]) -> str:
    """What to do when the PyTorchJob is absent: first creation, a recreation within the
    restart budget (it vanished while the job was active), or give up."""
    previous = job.get("status") or {}
    if "pytorchJob" not in previous:
        return CREATE
    return RECREATE if previous.get("restarts", 0) < restart_budget(job) else BUDGET_SPENT


def controlled_by(obj: dict[str, Any], job: dict[str, Any]) -> bool:
    return any(ref.get("controller") and ref.get("uid") == job["metadata"].get("uid")
               for ref in obj["metadata"].get("ownerReferences", []))


def has_foreign_controller(obj: dict[str, Any], job: dict[str, Any]) -> bool:
    return any(ref.get("controller") and ref.get("uid") != job["metadata"].get("uid")
               for ref in obj["metadata"].get("ownerReferences", []))


def adoptable(existing: dict[str, Any], job: dict[str, Any]) -> bool:
    """An existing object with our deterministic name is ours to use when this MFTJob controls
    it. A retained checkpoint PVC (owned by nobody) is reused on purpose, to resume from it, but
    only one the operator created for a job of this name (its label says so): a claim of another
    workload that happens to have the name is not mounted, written and pruned."""
    if existing["kind"] == "PersistentVolumeClaim":
        made_for_this_name = existing["metadata"].get("labels", {}).get(render.JOB_NAME_LABEL) == job["metadata"]["name"]
        return made_for_this_name and not has_foreign_controller(existing, job)
    return controlled_by(existing, job)


def outdated_child(existing: dict[str, Any], job: dict[str, Any]) -> bool:
    """A PyTorchJob rendered from an earlier generation of the spec: created by a pass whose status
    write then failed because the spec changed. It must not be adopted, or the job would run the old
    spec under the new one, which its first status write then locks."""
    rendered = existing["metadata"].get("annotations", {}).get(render.GENERATION_ANNOTATION)
    return rendered is not None and rendered != str(job["metadata"].get("generation"))


def child_patch(job: dict[str, Any], child: dict[str, Any]) -> dict[str, Any] | None:
    """A merge patch for the child's fields the user may change while the job runs (the deadline,
    suspend), or None. Suspend changes only when the user changed theirs since it was last
    applied, and never for Kueue-queued jobs: Kueue owns their suspension. A TTL is removed (one
    rendered by an earlier version): the operator applies it (``status.child_expiry``)."""
    wanted = job["spec"].get("runPolicy", {})
    current = child["spec"].get("runPolicy", {})
    spec_patch: dict[str, Any] = {
        key: value
        for key, value in (("activeDeadlineSeconds", wanted.get("activeDeadlineSeconds")),
                           ("ttlSecondsAfterFinished", None))
        if current.get(key) != value
    }
    patch: dict[str, Any] = {}
    requested = str(wanted.get("suspend", False)).lower()
    applied = child["metadata"].get("annotations", {}).get(render.SUSPEND_ANNOTATION)
    if requested != applied and "queueName" not in job["spec"].get("scheduling", {}):
        spec_patch["suspend"] = wanted.get("suspend", False)
        patch["metadata"] = {"annotations": {render.SUSPEND_ANNOTATION: requested}}
    if spec_patch:
        patch["spec"] = {"runPolicy": spec_patch}
    return patch or None


def missing_claims(ctx: render.Context, cluster: Cluster) -> list[Problem]:
    spec = ctx.spec
    claims = [v["claimName"] for v in spec.get("volumes", [])]
    if "claimName" in spec["checkpoint"]:
        claims.insert(0, spec["checkpoint"]["claimName"])
    return [
        Problem("ClaimNotFound", f"PersistentVolumeClaim {claim} not found in namespace {ctx.namespace}")
        for claim in claims
        if cluster.get("PersistentVolumeClaim", ctx.namespace, claim) is None
    ]


def reads_progress(child: dict[str, Any] | None) -> bool:
    """Read the trainer's log while it runs, and once more when it has just finished."""
    conditions = ((child or {}).get("status") or {}).get("conditions", [])
    return any(c.get("status") == "True" and c["type"] in status.STARTED for c in conditions)


# ---------------------------------------------------------------- orchestration


def reconcile(cluster: Cluster, job: dict[str, Any], settings: Settings, now: str, *,
              fresh: bool = True) -> dict[str, Any]:
    """Bring the children of ``job`` in line with it and write its status; returns the status.

    ``fresh=False`` marks a copy from a list or a watch event whose status may lag behind our own
    last write. Its status write is refused (Stale) if the MFTJob changed since, and events follow
    a successful write only, so a stale pass never records or announces anything; and it raises
    Stale rather than create or recreate a child (which spends restart budget) from such a copy."""
    previous = job.get("status") or {}
    if job["metadata"].get("deletionTimestamp"):
        # Being deleted: the garbage collector removes the children (first, in a foreground
        # deletion); one created again now would only start pods that it deletes in turn.
        return previous
    seen = Observation(now=now)
    if previous.get("phase") not in status.TERMINAL:
        try:
            seen = _observe_and_act(cluster, job, settings, now, fresh)
        except RequestFailed as exc:
            # Shown on the job (Blocked, and an event) rather than only in the operator's log;
            # the phase stays what was last seen, and the next pass tries again.
            seen = Observation(now=now, problems=(Problem("APIRequestFailed", str(exc)),))
    new_status = status.derive(job, seen)
    if new_status != previous:
        cluster.patch_status(job, new_status)
    for event in status.events(previous, new_status):
        cluster.event(job, event)
    if new_status.get("phase") in status.TERMINAL:
        _end_expired_child(cluster, {**job, "status": new_status}, seen.child, now)
        return new_status
    for event in _act_on_pod_restarts(cluster, job, previous, new_status, seen):
        cluster.event(job, event)
    return new_status


def _end_expired_child(cluster: Cluster, job: dict[str, Any], child: dict[str, Any] | None, now: str) -> None:
    """After the status write that recorded the outcome: delete the PyTorchJob (its pods first)
    once it is due."""
    why = status.child_expiry(job, now)
    if why is None:
        return
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    child = child or cluster.get(PYTORCHJOB, namespace, name)
    if child is None or child["metadata"].get("deletionTimestamp") or not controlled_by(child, job):
        return
    log.info("%s/%s: deleting PyTorchJob %s: %s", namespace, name, child["metadata"]["name"], why)
    cluster.delete_child(child)


def _act_on_pod_restarts(cluster: Cluster, job: dict[str, Any], previous: dict[str, Any], new_status: dict[str, Any],
                         seen: Observation) -> list[Event]:
    """After the status write that counted them: stop the pods a replaced one left behind."""
    where = f"{job['metadata']['namespace']}/{job['metadata']['name']}"
    if new_status.get("podRestarts", 0) > previous.get("podRestarts", 0):
        log.info("%s: pod restart %d: replica pods %s, were %s", where, new_status["podRestarts"],
                 new_status.get("replicaPods"), previous.get("replicaPods"))
    found = status.pod_replacements(previous.get("replicaPods", {}), seen)
    if found is None or new_status.get("phase") in status.TERMINAL:
        return []
    events = [_gang_restart_event(found.to_delete, new_status)] if found.replaced and found.to_delete else []
    return events + _stop_left_behind(cluster, where, found.to_delete, left_behind_grace_seconds(new_status.get("failure")))


def _stop_left_behind(cluster: Cluster, where: str, pods: tuple[dict[str, Any], ...], grace: int | None) -> list[Event]:
    """Delete them; one that cannot be deleted now is tried again on the next pass (the status
    records it as stopping) and reported."""
    events = []
    for pod in pods:
        name = pod["metadata"]["name"]
        log.info("%s: deleting pod %s (uid %s), left behind in the process group of a restarted replica", where,
                 name, pod["metadata"]["uid"])
        try:
            cluster.delete_pod(pod, grace)
        except Exception as exc:
            log.warning("%s: cannot delete pod %s: %s", where, name, exc)
            events.append(Event("Warning", "DeletePodFailed",
                                f"cannot delete pod {name}, left behind by a restarted replica: {exc}; "
                                "trying again on the next pass"))
    return events


def left_behind_grace_seconds(failure: dict[str, Any] | None) -> int | None:
    """How long a left-behind pod gets to stop. After a crash it waits on a dead peer and cannot
    save anything: a few seconds. After a preemption (exit 143, an eviction) or an unknown cause
    every rank may still be writing the checkpoint they agreed on: its own grace period (None)."""
    if failure and failure.get("reason") != "Evicted" and failure.get("exitCode") not in (None, 143):
        return CRASH_GRACE_SECONDS
    return None


def _observe_and_act(cluster: Cluster, job: dict[str, Any], settings: Settings, now: str, fresh: bool) -> Observation:
    ctx = render.context(job, settings)
    job = ctx.job  # with defaults applied
    try:
        # Before the first child is recorded in status there is nothing to read: creation finds
        # (and adopts) one left by an operator that stopped before writing the status.
        child = cluster.get(PYTORCHJOB, ctx.namespace, ctx.name) if "pytorchJob" in (job.get("status") or {}) else None
    except KindMissing:
        return Observation(now=now, problems=(_crd_missing(),))
    recreated = False
    if child is not None and not controlled_by(child, job):
        return Observation(now=now, problems=(_conflict(child),))
    if child is None and "pytorchJob" in (job.get("status") or {}):
        final = cluster.finished_child(ctx.namespace, ctx.name)
        if final is not None and controlled_by(final, job):
            # Deleted as soon as it finished, before a pass recorded how: that is the outcome.
            return Observation(now=now, child=final)
    if child is None:
        if not fresh:  # children are only created from a copy whose status is known to be current
            raise Stale(f"{ctx.namespace}/{ctx.name}")
        decision = plan_missing_child(job)
        if decision == BUDGET_SPENT:
            message = f"the PyTorchJob disappeared and the restart budget ({restart_budget(job)}) is spent"
            return Observation(now=now, problems=(Problem("RestartBudgetExhausted", message, terminal=True),))
        if decision == RECREATE:
            _confirm_exists(cluster, job)
        blocking = missing_claims(ctx, cluster)
        if blocking:
            return Observation(now=now, problems=tuple(blocking))
        child, problems = _create_children(cluster, job, settings, first=decision == CREATE)
        if problems:
            return Observation(now=now, problems=problems)
        recreated = decision == RECREATE
    else:
        patch = child_patch(job, child)
        if patch:
            cluster.patch(PYTORCHJOB, ctx.namespace, ctx.name, patch)
    pods = tuple(cluster.list_pods(ctx.namespace, ctx.name))
    if not recreated and any(map(_starting, pods)):
        _restore_config(cluster, ctx)
    reports = _read_reports(cluster, ctx.namespace, pods) if reads_progress(child) else progress.Reports()
    return Observation(now=now, child=child, pods=pods, reports=reports, recreated=recreated,
                       child_warnings=tuple(cluster.child_warnings(ctx.namespace, ctx.name)))


def _confirm_exists(cluster: Cluster, job: dict[str, Any]) -> None:
    """Raise Gone unless the API still has this MFTJob (this uid). A recreation decided from memory
    alone would bring back the child of a job deleted while its deletion event was missed (a
    watch relist reports no deletions) or not yet handled: the API confirms it first, as it
    confirms the child's absence. Recreations are rare: one read each."""
    meta = job["metadata"]
    current = cluster.get_job(meta["namespace"], meta["name"])
    if current is None or current["metadata"].get("uid") != meta.get("uid"):
        raise Gone(f"{meta['namespace']}/{meta['name']}")


def _starting(pod: dict[str, Any]) -> bool:
    """Scheduled, its containers not started yet: the kubelet is mounting its volumes."""
    pod_status = pod.get("status") or {}
    return pod_status.get("phase") == "Pending" and any(
        c.get("type") == "PodScheduled" and c.get("status") == "True" for c in pod_status.get("conditions", []))


def _restore_config(cluster: Cluster, ctx: render.Context) -> None:
    """Create the trainer's ConfigMap again if it was deleted while the job runs: every pod that
    starts (a replacement, a resumed job) mounts it and would wait for it in ContainerCreating for
    good. The spec it comes from is immutable once started; only an operator upgrade in between
    (other defaults, another config format) makes it differ from the one the job started with.
    Looked at only while a pod starts: not one more read per pass."""
    manifest = render.config_map(ctx)
    name = manifest["metadata"]["name"]
    if cluster.get("ConfigMap", ctx.namespace, name) is not None:
        return
    log.warning("%s/%s: ConfigMap %s is gone; creating it again for the pods that start", ctx.namespace,
                ctx.name, name)
    try:
        cluster.create(manifest)
    except AlreadyExists:
        pass  # created in the meantime


def _create_children(cluster: Cluster, job: dict[str, Any], settings: Settings,
                     first: bool) -> tuple[dict[str, Any] | None, tuple[Problem, ...]]:
    """Create (or adopt) every rendered object in order; the PyTorchJob comes last. Returns it and
    the problems that stopped creation. ``first``: no PyTorchJob was recorded in status yet, so
    the spec may have changed since one was created."""
    created = None
    for manifest in render.render(job, settings):
        try:
            created = cluster.create(manifest)
        except AlreadyExists:
            created = cluster.get(manifest["kind"], manifest["metadata"].get("namespace"), manifest["metadata"]["name"])
            if created is None or not adoptable(created, job):
                return None, (_conflict(created or manifest),)
            if first and manifest["kind"] == PYTORCHJOB and outdated_child(created, job):
                return None, (_replace_outdated(cluster, created, job),)
            if manifest["kind"] == "ConfigMap" and created.get("data") != manifest["data"]:
                # Left by an earlier attempt whose PyTorchJob was refused, before the spec was
                # edited: the pods must read the trainer config of the spec as it is now.
                cluster.patch(manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"],
                              {"data": manifest["data"]})
        except KindMissing:
            return None, (_crd_missing(),)
        except Rejected as exc:
            return None, (Problem("ChildRejected",
                                  f"{manifest['kind']} {manifest['metadata']['name']} was rejected: {exc}"),)
    return created, ()


def _replace_outdated(cluster: Cluster, child: dict[str, Any], job: dict[str, Any]) -> Problem:
    """Delete it (once); the pass after its deletion completes creates it from the current spec."""
    if not child["metadata"].get("deletionTimestamp"):
        cluster.delete_child(child)
    rendered = child["metadata"]["annotations"][render.GENERATION_ANNOTATION]
    return Problem("ReplacingOutdatedChild",
                   f"PyTorchJob {child['metadata']['name']} was created from generation {rendered} of the spec, "
                   f"which changed to generation {job['metadata'].get('generation')} before the job started; "
                   "deleting it to create it from the current spec")


def _read_reports(cluster: Cluster, namespace: str, pods: tuple[dict[str, Any], ...]) -> progress.Reports:
    master = next((p for p in pods if status.replica_name(p) == "master-0"), None)
    if master is None or (master.get("status") or {}).get("phase") == "Pending":
        return progress.Reports()
    return progress.parse_log(cluster.master_log(namespace, master["metadata"]["name"]))


def _gang_restart_event(stale: tuple[dict[str, Any], ...], new_status: dict[str, Any]) -> Event:
    cause = status.failure_summary(new_status["failure"]) if new_status.get("failure") else "a replica failed"
    names = ", ".join(status.replica_name(pod) for pod in stale)
    return Event("Warning", "RestartingAllReplicas",
                 f"{cause}; restarting {names} as well, so that every replica starts again together "
                 "from the latest checkpoint")


def _crd_missing() -> Problem:
    return Problem("PyTorchJobCRDMissing",
                   "the PyTorchJob API (kubeflow.org/v1) is not installed; install the Kubeflow training-operator")


def _conflict(existing: dict[str, Any]) -> Problem:
    return Problem("NameConflict", f"{existing['kind']} {existing['metadata']['name']} already exists and "
                                   "is not controlled by this MFTJob; delete or rename it")
