"""kopf wiring: watch MFTJobs, their PyTorchJobs and pods, and Warning events about PyTorchJobs,
and poll running jobs' progress; every trigger runs the same ``reconcile.reconcile`` for the MFTJob
concerned.

Only watch-event handlers and an operator-level polling task: no change handlers (no
last-handled-configuration annotations), no timers or daemons (they would add finalizers and
block deletion while the operator is down). Deletion cascades through owner references.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import kopf
from kubernetes import client, config

from . import API_GROUP, API_VERSION, KIND, PLURAL, reconcile, status
from .informer import CachedCluster, WatchCache
from .kube import REFUSED_POD_EVENTS, KubeCluster
from .metrics import Metrics
from .progress import rfc3339
from .render import JOB_NAME_LABEL
from .settings import Settings

log = logging.getLogger("mft_operator")

MANAGED = {"app.kubernetes.io/managed-by": "mft-operator"}
MANAGED_SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED.items())
RESYNC_SECONDS = 60.0  # the poll's resync of jobs whose children have not started
# The poll takes the MFTJobs from the watch cache, and lists them from the API this often: to
# repair what a missed watch event left behind, and to learn of deletions a relist does not report.
LIST_SECONDS = 60.0
EVENT_FLUSH_SECONDS = 5.0  # on stop, for the events still queued (well inside a pod's grace period)
# Liveness fails once the poll has not completed for this long: with a deadline on every request
# a poll ends within minutes even in a burst, so a longer one is stuck, and a restart recovers.
POLL_STALL_SECONDS = 600.0


def now_rfc3339() -> str:
    return rfc3339(time.time())


def owner_job_name(obj: dict[str, Any]) -> str | None:
    """The MFTJob controlling a child, from its owner references (or our label on pods)."""
    for ref in obj.get("metadata", {}).get("ownerReferences", []):
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{API_GROUP}/"):
            return ref["name"]
    return obj.get("metadata", {}).get("labels", {}).get(JOB_NAME_LABEL)


class Runtime:
    """What the handlers share: settings, the cluster (behind the watch cache the handlers feed),
    metrics, and which MFTJobs are being reconciled.

    Triggers for one MFTJob coalesce: while it is being reconciled, further triggers only ask for
    one more pass, which the running reconcile makes when it is done (with the newest copy). So
    one job is never reconciled twice at once (no two creations of one child), and a burst of pod
    and status events costs one or two passes instead of one each, without holding a worker."""

    _RUNNING, _AGAIN = "running", "again"
    _READS = 3  # passes over fresh reads when status writes keep meeting a newer MFTJob

    def __init__(self, settings: Settings, cluster: reconcile.Cluster, metrics: Metrics,
                 clock: Callable[[], str] = now_rfc3339, cache: WatchCache | None = None):
        self.settings = settings
        self.cache = cache or WatchCache()
        self.cluster = CachedCluster(cluster, self.cache)
        self.metrics = metrics
        self.clock = clock
        self._passes: dict[tuple[str, str], str] = {}
        self._passes_guard = threading.Lock()
        self._last_pass: dict[tuple[str, str], float] = {}  # monotonic end of the last complete pass
        self._last_poll = time.monotonic()  # when the last poll ended (or the operator started)
        self._last_list = float("-inf")  # when the poll last listed the MFTJobs

    def reconcile(self, namespace: str, name: str, trigger: str, body: dict[str, Any] | None = None) -> None:
        """Reconcile the MFTJob now, or have the reconcile already running pass once more.

        ``body``, a copy from a watch event or a list, saves reading the job (otherwise the watch
        cache's newest copy does); a pass that finds its copy stale (or would create from it) reads
        the job and passes again."""
        self.metrics.reconciles.labels(trigger=trigger).inc()
        key = (namespace, name)
        with self._passes_guard:
            if key in self._passes:
                self._passes[key] = self._AGAIN
                self.metrics.skipped.labels(reason="coalesced").inc()
                return
            self._passes[key] = self._RUNNING
        while True:
            self._reconcile_once(namespace, name, trigger, body)
            body = None  # every further pass takes the newest copy
            with self._passes_guard:
                if self._passes[key] == self._RUNNING:
                    del self._passes[key]
                    return
                self._passes[key] = self._RUNNING

    def _reconcile_once(self, namespace: str, name: str, trigger: str, body: dict[str, Any] | None) -> None:
        started = time.monotonic()
        job = body or self.cache.job(namespace, name)
        fresh = job is not None and self.cache.is_current(job)
        try:
            for _ in range(self._READS):
                if job is None:
                    job, fresh = self.cluster.get_job(namespace, name), True
                    if job is None:
                        self.forget(namespace, name)
                        return
                try:
                    reconcile.reconcile(self.cluster, job, self.settings, self.clock(), fresh=fresh)
                    self._last_pass[(namespace, name)] = time.monotonic()
                    return
                except reconcile.Stale:
                    self.metrics.skipped.labels(reason="stale-copy").inc()
                    job = None
            log.info("%s/%s kept changing during %d passes; the next trigger retries", namespace, name, self._READS)
        except reconcile.Gone:
            log.info("%s/%s is deleted; forgetting it", namespace, name)
            self.forget(namespace, name)
        except Exception as exc:  # one job's failure must not stop the others; the next poll retries
            self.metrics.errors.labels(error=type(exc).__name__).inc()
            log.exception("reconciling %s/%s (%s) failed", namespace, name, trigger)
        finally:
            self.metrics.latency.observe(time.monotonic() - started)

    def _poll_after(self, phase: str | None) -> float:
        """Seconds after its last pass that a job is due for the poll. Running ones every half
        interval, for progress (a report reaches the status within 1.5 intervals plus the poll's
        own duration); jobs without a child yet too, as what they wait for (a claim, the CRD) is
        not watched. Jobs between (a child that has not started, a suspended one) change only
        through watched objects: resyncing them once a minute repairs a missed event in time."""
        if phase in (status.RUNNING, status.RESTARTING, status.PENDING, None):
            return self.settings.progress_interval_seconds / 2
        return max(RESYNC_SECONDS, self.settings.progress_interval_seconds)

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is remembered about a deleted MFTJob."""
        self.cache.forget_job(namespace, name)
        self._last_pass.pop((namespace, name), None)

    def poll_once(self) -> None:
        """Reconcile the active MFTJobs that are due: a level-based resync that repairs anything a
        missed watch event left behind, and progress for running ones; and the finished ones whose
        PyTorchJob is due for deletion."""
        try:
            self._poll_due()
        finally:
            self._last_poll = time.monotonic()

    def _poll_due(self) -> None:
        if time.monotonic() - self._last_list >= LIST_SECONDS:
            for namespace in self.settings.namespaces or (None,):
                self._relist(namespace)
            self._last_list = time.monotonic()
        jobs = self.cache.jobs()
        self.cache.prune_child_warnings()
        self.metrics.count_phases((job.get("status") or {}).get("phase") for job in jobs)
        now, wall_clock, due = time.monotonic(), self.clock(), []
        for job in jobs:
            meta, phase = job["metadata"], (job.get("status") or {}).get("phase")
            if phase in status.TERMINAL:
                # Finished: only the deletion of its child once due (nothing else would trigger it).
                if (status.child_expiry(job, wall_clock) is not None
                        and self.cache.knows_pytorchjob(meta["namespace"], meta["name"])):
                    due.append((meta["namespace"], meta["name"]))
                continue
            if now - self._last_pass.get((meta["namespace"], meta["name"]), float("-inf")) < self._poll_after(phase):
                self.metrics.skipped.labels(reason="recently-reconciled").inc()
                continue
            due.append((meta["namespace"], meta["name"]))
        with ThreadPoolExecutor(self.settings.max_concurrent_reconciles, thread_name_prefix="poll") as pool:
            list(pool.map(lambda key: self.reconcile(*key, "timer"), due))

    def _relist(self, namespace: str | None) -> None:
        """Bring the watch cache's MFTJobs of ``namespace`` (None: all) in line with a LIST, and
        forget those it no longer has: a watch that expires relists without reporting deletions.
        One namespace that cannot be listed (its Role deleted, say) does not stop the others."""
        listed_at = self.cache.clock()
        try:
            jobs = self.cluster.list_jobs(namespace)
        except Exception as exc:
            self.metrics.errors.labels(error="poll-list").inc()
            log.warning("cannot list the MFTJobs of %s: %s", f"namespace {namespace}" if namespace else "the cluster", exc)
            return
        for gone in self.cache.replace_jobs(jobs, namespace, listed_at):
            log.info("%s/%s is deleted (its deletion event was missed); forgetting it", *gone)
            self.forget(*gone)

    def seconds_since_poll(self) -> float:
        """For the liveness probe: seconds since the last poll ended; raises once it is stuck."""
        waited = time.monotonic() - self._last_poll
        if waited > max(POLL_STALL_SECONDS, 10 * self.settings.progress_interval_seconds):
            raise kopf.PermanentError(f"the poll has not completed for {waited:.0f} s")
        return round(waited, 1)


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: only event handlers are registered, and only change handlers compare an
    object with its last handled state. kopf still builds that state (a deep copy of the whole
    object, managedFields included) on every watch event unless the storage says there is none."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def configure(settings: kopf.OperatorSettings, runtime_settings: Settings) -> None:
    settings.posting.enabled = False  # the reconciler emits its own, meaningful events
    settings.execution.max_workers = runtime_settings.max_concurrent_reconciles
    settings.persistence.diffbase_storage = NoDiffBase()
    # Filter on the API server: kopf's own filters are applied after every object in the cluster
    # (all its pods, all its events) has been sent to the operator.
    settings.watching.label_selectors["v1", "pods"] = MANAGED_SELECTOR
    settings.watching.label_selectors["kubeflow.org", "v1", "pytorchjobs"] = MANAGED_SELECTOR
    settings.watching.field_selectors["v1", "events"] = REFUSED_POD_EVENTS


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="start", registry=registry)
    async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, runtime.settings)
        runtime.metrics.serve(runtime.settings.metrics_port)
        memo["poller"] = asyncio.create_task(_poll_forever(runtime))

    @kopf.on.probe(id="secondsSincePoll", registry=registry)
    def poll_alive(**_: Any) -> float:
        return runtime.seconds_since_poll()

    @kopf.on.cleanup(id="stop", registry=registry)
    async def stop(memo: kopf.Memo, **_: Any) -> None:
        poller = memo.get("poller")
        if poller:
            poller.cancel()

    @kopf.on.event(API_GROUP, API_VERSION, PLURAL, id="mftjob", registry=registry)
    def mftjob_changed(type: str, name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            runtime.forget(namespace, name)
        elif runtime.cache.is_own_status_write(namespace, name, body.get("metadata", {}).get("resourceVersion")):
            runtime.metrics.skipped.labels(reason="own-status-write").inc()
        else:
            runtime.cache.observe_job(dict(body))  # the cache keeps its own copy; the pass takes the newest
            runtime.reconcile(namespace, name, "mftjob")

    @kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels=MANAGED, id="pytorchjob", registry=registry)
    def pytorchjob_changed(type: str, body: kopf.Body, namespace: str, **_: Any) -> None:
        child = dict(body)  # the cache keeps its own copy
        runtime.cache.observe_pytorchjob(child, deleted=type == "DELETED")
        parent = owner_job_name(child)
        if parent:
            runtime.reconcile(namespace, parent, "pytorchjob")

    @kopf.on.event("v1", "pods", labels=MANAGED, id="pod", registry=registry)
    def pod_changed(type: str, body: kopf.Body, namespace: str, **_: Any) -> None:
        pod = dict(body)  # the cache keeps its own copy
        runtime.cache.observe_pod(pod, deleted=type == "DELETED")
        parent = owner_job_name(pod)
        if parent:
            runtime.reconcile(namespace, parent, "pod")

    @kopf.on.event("v1", "events", id="pytorchjob-warning", registry=registry)
    def pytorchjob_warning(type: str, body: kopf.Body, **_: Any) -> None:
        namespace, name = runtime.cache.observe_child_warning(dict(body), deleted=type == "DELETED")
        if type != "DELETED" and runtime.cache.has_job(namespace, name):  # a PyTorchJob is named after its MFTJob
            runtime.reconcile(namespace, name, "pytorchjob-warning")

    return registry


async def _poll_forever(runtime: Runtime) -> None:
    while True:
        try:
            await asyncio.to_thread(runtime.poll_once)
        except Exception:
            runtime.metrics.errors.labels(error="poll").inc()
            log.exception("polling MFTJobs failed")
        await asyncio.sleep(runtime.settings.progress_interval_seconds)


def log_levels(level: str) -> dict[str, int]:
    """Logger levels for the operator's ``level`` (a name). Above DEBUG, kopf's line for every
    watch event a handler took ("Handler 'pod' succeeded.", about 13 per job) and the access log
    of every liveness probe keep only their warnings: the reconciler logs what it does."""
    root = logging.getLevelName(level)
    chatty = root if root <= logging.DEBUG else max(root, logging.WARNING)
    return {"": root, "kopf.objects": chatty, "aiohttp.access": chatty}


def run(settings: Settings, liveness: str | None) -> None:
    """Run the operator until interrupted (standalone: one replica, no peering)."""
    kopf.configure(log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL)
    for logger, level in log_levels(settings.log_level).items():
        logging.getLogger(logger).setLevel(level)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.Configuration.get_default_copy()
    # A connection for every reconcile and poll thread: one beyond the pool is a new TLS handshake.
    api.connection_pool_maxsize = 2 * settings.max_concurrent_reconciles + 2
    api.keep_alive = True  # TCP keepalive: a connection to a vanished apiserver fails instead of waiting
    cluster = KubeCluster(client.ApiClient(api))
    runtime = Runtime(settings, cluster, Metrics())
    kopf.run(
        registry=build_registry(runtime),
        standalone=True,
        liveness_endpoint=liveness,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
    )
    if not cluster.flush_events(EVENT_FLUSH_SECONDS):
        log.warning("stopping with events not yet posted")
