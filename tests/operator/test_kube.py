"""KubeCluster's HTTP edge: raw JSON back, errors mapped, and every call giving its connection back
to the pool (an unread response would cost the next call a new TCP and TLS handshake). Behaviour
against a real apiserver is the end-to-end suite's; this checks what it cannot see."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from kubernetes import client

from mft_operator import kube
from mft_operator.kube import EventRecorder, KubeCluster, merge_patch
from mft_operator.reconcile import Gone, RequestFailed
from mft_operator.status import Event

POD = {"metadata": {"name": "a-master-0", "namespace": "ml", "creationTimestamp": "2026-11-28T00:00:00Z"}}
REFUSAL = {"metadata": {"name": "a.1", "namespace": "ml"}, "reason": "FailedCreatePod", "type": "Warning",
           "lastTimestamp": "2026-11-28T00:00:00Z"}


class _Apiserver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the apiserver
    connections = 0
    requests: list[tuple[str, str, dict]] = []

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer_text(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, {}))
        if "/hangs/" in self.path:
            time.sleep(1)  # longer than the test's deadline: the client has hung up
            self.close_connection = True
        elif self.path.split("?")[0].endswith("/log"):
            self._answer_text('{"kind": "mft.progress", "step": 3}\nloss \u2581'.encode()[:-1])  # a cut character
        elif "/pods" in self.path:
            self._answer(200, {"kind": "PodList", "items": [POD]})
        elif "/events" in self.path:
            self._answer(200, {"kind": "EventList", "items": [REFUSAL]})
        else:
            self._answer(404, {"kind": "Status", "reason": "NotFound", "details": {"name": "x"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if body.get("reason") == "Refused":
            self._answer(403, {"kind": "Status", "reason": "Forbidden", "message": "events is forbidden"})
            return
        self._answer(201, {**body, "metadata": {**body["metadata"], "uid": "u1", "resourceVersion": "7"}})

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("PATCH", self.path, body))
        if "/gone/" in self.path:
            self._answer(404, {"kind": "Status", "reason": "NotFound", "details": {"name": "gone"}})
            return
        if "/forbidden" in self.path:
            self._answer(403, {"kind": "Status", "reason": "Forbidden", "message": "denied by policy pause-training"})
            return
        self._answer(200, {"kind": "MFTJob", "metadata": {"name": "a", "resourceVersion": "8"}, "status": {}})

    def do_DELETE(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.requests.append(("DELETE", self.path, body))
        if "gone" in self.path:
            self._answer(404, {"kind": "Status", "reason": "NotFound", "details": {"name": "gone"}})
        elif "replaced" in self.path:
            self._answer(409, {"kind": "Status", "reason": "Conflict", "message": "Precondition failed: UID"})
        else:
            self._answer(200, {"kind": "Pod", "metadata": {"name": "a-master-0"}})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def cluster():
    _Apiserver.connections, _Apiserver.requests = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Apiserver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = client.Configuration(host=f"http://127.0.0.1:{server.server_port}")
    yield KubeCluster(client.ApiClient(config))
    server.shutdown()
    server.server_close()


def test_core_calls_return_the_apiservers_json_over_one_connection(cluster):
    job = {"kind": "MFTJob", "metadata": {"name": "a", "namespace": "ml", "uid": "j1"}}
    created = cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a-config", "namespace": "ml"},
                              "data": {"config.yaml": "mode: sft\n"}})
    assert created["metadata"]["uid"] == "u1" and created["data"] == {"config.yaml": "mode: sft\n"}
    assert cluster.list_pods("ml", "a") == [POD]  # timestamps as the API writes them
    assert cluster.child_warnings("ml", "a") == [REFUSAL]
    query = next(path for method, path, _ in _Apiserver.requests if "/events" in path)
    assert unquote(query).endswith("fieldSelector=involvedObject.kind=PyTorchJob,type=Warning,"
                                   "reason=FailedCreatePod,involvedObject.name=a")
    assert cluster.get("ConfigMap", "ml", "missing") is None
    for reason in ("Created", "Running", "Succeeded"):
        cluster.event(job, Event("Normal", reason, "m"))
    assert cluster.flush_events(5)

    events = [body for method, path, body in _Apiserver.requests if path.endswith("/events")]
    assert [e["reason"] for e in events] == ["Created", "Running", "Succeeded"]
    assert events[0]["involvedObject"]["uid"] == "j1" and events[0]["count"] == 1
    assert _Apiserver.connections == 1



def test_a_refused_event_is_logged_and_the_next_ones_are_still_posted(cluster, caplog):
    job = {"kind": "MFTJob", "metadata": {"name": "a", "namespace": "ml", "uid": "j1"}}
    for reason in ("Created", "Refused", "Running"):
        cluster.event(job, Event("Normal", reason, "m"))
    assert cluster.flush_events(5)

    events = [body["reason"] for method, path, body in _Apiserver.requests if path.endswith("/events")]
    assert events == ["Created", "Refused", "Running"]
    assert "cannot record event Refused on ml/a: events is forbidden" in caplog.text


def test_recording_an_event_does_not_wait_for_its_post():
    release, posted = threading.Event(), []

    def post(body):
        release.wait(10)
        posted.append((body["reason"], threading.get_ident()))

    recorder = EventRecorder(post)
    recorder.record({"reason": "Created"})
    recorder.record({"reason": "Running"})  # returned while the first post is still blocked
    assert not recorder.flush(0.2)
    release.set()
    assert recorder.flush(5)
    assert [reason for reason, _ in posted] == ["Created", "Running"]
    assert threading.get_ident() not in {thread for _, thread in posted}


def test_a_status_patch_sends_null_for_what_the_new_status_dropped():
    before = {"phase": "Running", "replicaPods": {"master-0": "m1", "worker-0": "w1"}, "podRestarts": 0,
              "conditions": [{"type": "Running"}], "progress": {"step": 5}}
    after = {"phase": "Running", "replicaPods": {"worker-0": "w2"}, "podRestarts": 1,
             "conditions": [{"type": "Running"}, {"type": "Blocked"}], "progress": {"step": 5}}
    patch = merge_patch(before, after)
    assert patch == {"replicaPods": {"master-0": None, "worker-0": "w2"}, "podRestarts": 1,
                     "conditions": [{"type": "Running"}, {"type": "Blocked"}]}
    assert merge_patch(after, after) == {} and merge_patch({"replicaPods": {"a": "1"}}, {}) == {"replicaPods": None}


def test_a_status_patch_is_conditional_and_sends_only_the_difference(cluster):
    job = {"kind": "MFTJob", "metadata": {"name": "a", "namespace": "ml", "resourceVersion": "7"},
           "status": {"phase": "Running", "replicaPods": {"master-0": "m1", "worker-0": "w1"}}}
    cluster.patch_status(job, {"phase": "Running", "replicaPods": {"worker-0": "w2"}})
    method, path, body = _Apiserver.requests[-1]
    assert (method, path) == ("PATCH", "/apis/mft.dev/v1alpha1/namespaces/ml/mftjobs/a/status")
    assert body == {"metadata": {"resourceVersion": "7"}, "status": {"replicaPods": {"master-0": None, "worker-0": "w2"}}}


def test_a_pod_is_deleted_by_uid_and_gone_or_replaced_is_fine(cluster):
    for name, grace in (("a-master-0", 5), ("gone", None), ("replaced", None)):
        cluster.delete_pod({"metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}"}}, grace)
    deletes = [(path, body) for method, path, body in _Apiserver.requests if method == "DELETE"]
    assert [path for path, _ in deletes] == ["/api/v1/namespaces/ml/pods/a-master-0", "/api/v1/namespaces/ml/pods/gone",
                                             "/api/v1/namespaces/ml/pods/replaced"]
    assert deletes[0][1]["preconditions"] == {"uid": "uid-a-master-0"} and deletes[0][1]["gracePeriodSeconds"] == 5
    assert "gracePeriodSeconds" not in deletes[1][1]  # the pod's own


def test_a_status_write_to_a_deleted_job_says_it_is_gone(cluster):
    job = {"kind": "MFTJob", "metadata": {"name": "gone", "namespace": "ml", "resourceVersion": "7"}, "status": {}}
    with pytest.raises(Gone):
        cluster.patch_status(job, {"phase": "Running"})


def test_a_refused_request_names_the_request_and_the_apiservers_answer(cluster):
    with pytest.raises(RequestFailed, match="cannot patch PyTorchJob ml/forbidden: 403 Forbidden: denied by policy"):
        cluster.patch("PyTorchJob", "ml", "forbidden", {"spec": {"runPolicy": {"suspend": True}}})


def test_a_log_that_is_not_utf8_is_read_with_the_bad_bytes_replaced(cluster):
    text = cluster.master_log("ml", "a-master-0")
    assert text.startswith('{"kind": "mft.progress", "step": 3}\nloss ') and text.endswith("\ufffd")


def test_every_request_has_a_deadline(cluster, monkeypatch):
    """An apiserver that stops answering must not hold a reconcile thread for good."""
    monkeypatch.setattr(kube, "REQUEST_TIMEOUT", (1.0, 0.3))
    started = time.monotonic()
    with pytest.raises(RequestFailed, match="cannot list the pods of hangs/a"):
        cluster.list_pods("hangs", "a")
    assert time.monotonic() - started < 1.9
    assert cluster.master_log("hangs", "a-master-0") == ""  # a report, not the job's state
