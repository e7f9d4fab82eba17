"""The real ``reconcile.Cluster``: the Kubernetes API through the official client."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any, Callable

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import API_GROUP, API_VERSION, PLURAL
from .progress import rfc3339
from .reconcile import AlreadyExists, Gone, KindMissing, Rejected, RequestFailed, Stale
from .render import CONTAINER, JOB_NAME_LABEL
from .status import FAILED_CREATE_POD, Event

log = logging.getLogger(__name__)

# Enough lines to hold the last progress and checkpoint records between polls; the byte
# cap bounds what a chatty trainer costs the operator.
LOG_TAIL_LINES = 500
LOG_LIMIT_BYTES = 1 << 20
# Every request has a deadline: an apiserver that stopped answering without closing the connection
# (its node lost, a load balancer failing over) would otherwise hold a reconcile thread for good,
# and with it every later pass of that job and the poll that waits for its passes.
REQUEST_TIMEOUT = (5.0, 30.0)  # seconds to connect, seconds to wait for each read of the answer

_CUSTOM = {"PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs")}
# The training operator's reports of pods the API server refused (a field selector on core/v1 Events).
REFUSED_POD_EVENTS = f"involvedObject.kind=PyTorchJob,type=Warning,reason={FAILED_CREATE_POD}"


class KubeCluster:
    """Core objects come back as the API server's own JSON (``_preload_content=False``), the form
    watch events deliver, without a round trip through the client's typed models.

    Every request has a deadline (``REQUEST_TIMEOUT``). A failure the reconcile can act on has its
    own exception (AlreadyExists, KindMissing, Rejected, Stale, Gone); any other failed request is
    RequestFailed, naming the request and the apiserver's answer."""

    def __init__(self, api: client.ApiClient | None = None):
        api = api or client.ApiClient()
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._events = EventRecorder(self._post_event)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"get {kind} {namespace}/{name}"
        try:
            if kind in _CUSTOM:
                group, version, plural = _CUSTOM[kind]
                return _request(what, self.custom.get_namespaced_custom_object, group, version, namespace, plural, name)
            reader = {"ConfigMap": self.core.read_namespaced_config_map,
                      "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim}[kind]
            return _json(_request(what, reader, name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404 and kind in _CUSTOM and _is_missing_kind(exc):
                raise KindMissing(kind) from exc
            if exc.status == 404:
                return None
            raise _failed(what, exc) from exc

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind, namespace = manifest["kind"], manifest["metadata"]["namespace"]
        what = f"create {kind} {namespace}/{manifest['metadata']['name']}"
        try:
            if kind in _CUSTOM:
                group, version, plural = _CUSTOM[kind]
                return _request(what, self.custom.create_namespaced_custom_object, group, version, namespace, plural,
                                manifest)
            creator = {"ConfigMap": self.core.create_namespaced_config_map,
                       "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim}[kind]
            return _json(_request(what, creator, namespace, manifest, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                raise AlreadyExists(manifest["metadata"]["name"]) from exc
            if exc.status == 404 and _is_missing_kind(exc):
                raise KindMissing(kind) from exc
            if exc.status in (400, 403, 422):
                raise Rejected(_message(exc)) from exc
            raise _failed(what, exc) from exc

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        what = f"patch {kind} {namespace}/{name}"
        try:
            if kind == "ConfigMap":
                _request(what, self.core.patch_namespaced_config_map, name, namespace, patch, _preload_content=False).data
                return
            group, version, plural = _CUSTOM[kind]
            _request(what, self.custom.patch_namespaced_custom_object, group, version, namespace, plural, name, patch)
        except ApiException as exc:
            raise _failed(what, exc) from exc

    def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        what = f"list the pods of {namespace}/{job_name}"
        try:
            return _json(_request(what, self.core.list_namespaced_pod, namespace,
                                  label_selector=f"{JOB_NAME_LABEL}={job_name}", _preload_content=False))["items"]
        except ApiException as exc:
            raise _failed(what, exc) from exc

    def child_warnings(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The training operator's refused-pod events about PyTorchJob ``name``. The operator reads
        them from its event watch instead (``informer.CachedCluster``)."""
        what = f"list the events of PyTorchJob {namespace}/{name}"
        selector = f"{REFUSED_POD_EVENTS},involvedObject.name={name}"
        try:
            return _json(_request(what, self.core.list_namespaced_event, namespace, field_selector=selector,
                                  _preload_content=False))["items"]
        except ApiException as exc:
            raise _failed(what, exc) from exc

    def finished_child(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None  # remembered from watch events only (informer.CachedCluster)

    def delete_child(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        group, version, plural = _CUSTOM[obj["kind"]]
        what = f"delete {obj['kind']} {meta['namespace']}/{meta['name']}"
        options = client.V1DeleteOptions(propagation_policy="Foreground",
                                         preconditions=client.V1Preconditions(uid=meta["uid"]))
        try:
            _request(what, self.custom.delete_namespaced_custom_object, group, version, meta["namespace"], plural,
                     meta["name"], body=options)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or already replaced by an object of the same name
                raise _failed(what, exc) from exc

    def delete_pod(self, pod: dict[str, Any], grace_seconds: int | None) -> None:
        meta = pod["metadata"]
        what = f"delete pod {meta['namespace']}/{meta['name']}"
        options = client.V1DeleteOptions(grace_period_seconds=grace_seconds,
                                         preconditions=client.V1Preconditions(uid=meta["uid"]))
        try:
            _request(what, self.core.delete_namespaced_pod, meta["name"], meta["namespace"], body=options,
                     _preload_content=False).data
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or already replaced by a pod of the same name
                raise _failed(what, exc) from exc

    def master_log(self, namespace: str, pod_name: str) -> str:
        """The tail of the trainer's log; "" when it cannot be read. Progress is a report, not the
        job's state: a log that cannot be read (no pods/log right, the node's kubelet unreachable)
        leaves progress stale but must not stop the reconcile that keeps phase and conditions
        current. Bytes that are not UTF-8 (native code's output, a character cut by the byte
        limit) are replaced, not fatal."""
        what = f"read the log of pod {namespace}/{pod_name}"
        try:
            response = _request(what, self.core.read_namespaced_pod_log, pod_name, namespace, container=CONTAINER,
                                tail_lines=LOG_TAIL_LINES, limit_bytes=LOG_LIMIT_BYTES, _preload_content=False)
            return response.data.decode("utf-8", errors="replace")
        except ApiException as exc:
            if exc.status not in (400, 404):  # 400, 404: container not started yet, or the pod just went away
                log.warning("cannot %s: %s", what, _message(exc))
        except Exception as exc:
            log.warning("cannot %s: %s", what, exc)
        return ""

    def patch_status(self, job: dict[str, Any], new_status: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        what = f"write the status of MFTJob {meta['namespace']}/{meta['name']}"
        # resourceVersion in a merge patch is a precondition: 409 if the MFTJob changed meanwhile.
        # So the status it is applied to is job's own, and a key dropped from it must be sent as null.
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]},
                "status": merge_patch(job.get("status") or {}, new_status)}
        try:
            return _request(what, self.custom.patch_namespaced_custom_object_status, API_GROUP, API_VERSION,
                            meta["namespace"], PLURAL, meta["name"], body)
        except ApiException as exc:
            if exc.status == 409:
                raise Stale(_message(exc)) from exc
            if exc.status == 404:
                raise Gone(f"{meta['namespace']}/{meta['name']}") from exc
            raise _failed(what, exc) from exc

    def event(self, job: dict[str, Any], event: Event) -> None:
        meta = job["metadata"]
        now = rfc3339(time.time())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": job["kind"], "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid"),
            },
            "type": event.type, "reason": event.reason, "message": event.message[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "mft-operator"},
            "reportingComponent": "mft.dev/mft-operator", "reportingInstance": "mft-operator",
        }
        self._events.record(body)

    def flush_events(self, timeout: float) -> bool:
        """Wait until every recorded event is posted (or given up); False on timeout."""
        return self._events.flush(timeout)

    def _post_event(self, body: dict[str, Any]) -> None:
        # Reading the body returns the connection to the pool; an unread one would be dropped.
        _request(f"post an event in {body['metadata']['namespace']}", self.core.create_namespaced_event,
                 body["metadata"]["namespace"], body, _preload_content=False).data

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        what = f"list the MFTJobs of namespace {namespace}" if namespace else "list the MFTJobs"
        try:
            if namespace:
                found = _request(what, self.custom.list_namespaced_custom_object, API_GROUP, API_VERSION, namespace,
                                 PLURAL)
            else:
                found = _request(what, self.custom.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)
        except ApiException as exc:
            raise _failed(what, exc) from exc
        return found.get("items", [])

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"get MFTJob {namespace}/{name}"
        try:
            return _request(what, self.custom.get_namespaced_custom_object, API_GROUP, API_VERSION, namespace, PLURAL,
                            name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _failed(what, exc) from exc


def _request(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call`` with the deadline. An answer with an HTTP status raises ApiException, for the
    caller to classify; no answer (a timeout, a reset or refused connection) is RequestFailed."""
    try:
        return call(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise RequestFailed(f"cannot {what}: {exc}") from exc


def _failed(what: str, exc: ApiException) -> RequestFailed:
    return RequestFailed(f"cannot {what}: {exc.status} {exc.reason}: {_message(exc)}")


def merge_patch(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``before`` into ``after``: changed values, and
    null for each key ``after`` no longer has (a merge patch keeps keys it does not mention)."""
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            nested = merge_patch(old, value)
            if nested:
                patch[key] = nested
        elif key not in before or old != value:
            patch[key] = value
    return patch


class EventRecorder:
    """Posts events in order on a thread of its own, as client-go's event recorder does: an event
    is a report, so the reconcile that emits it does not wait for the round trip, and in a burst
    the writes that create children and status are not queued behind reports. A post that fails
    is logged and dropped (the status holds the same facts)."""

    def __init__(self, post: Callable[[dict[str, Any]], None]):
        self._post = post
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._run, name="events", daemon=True).start()

    def record(self, body: dict[str, Any]) -> None:
        self._queue.put(body)

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            try:
                self._post(body)
            except Exception as exc:  # a lost report must not stop the ones after it
                obj = body["involvedObject"]
                log.warning("cannot record event %s on %s/%s: %s", body["reason"], obj["namespace"], obj["name"],
                            _message(exc) if isinstance(exc, ApiException) else exc)
            finally:
                self._queue.task_done()


def _json(response: Any) -> Any:
    return json.loads(response.data)


def _is_missing_kind(exc: ApiException) -> bool:
    """404 for the resource type itself (no CRD), not for one object: the body has no details.name."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        return True
    return not (body.get("details") or {}).get("name")


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or str(exc.reason)
    except ValueError:
        return str(exc.reason)
