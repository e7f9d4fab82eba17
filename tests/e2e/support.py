"""Helpers of the end-to-end suite: the cluster started by tests/e2e/cluster/up.sh, the
operator process (run as the chart's ServiceAccount), bounded waits with clear messages,
and small builders for MFTJobs and the volumes they need."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPTS = ROOT / "tests" / "e2e" / "cluster"
VENV_BIN = ROOT / ".venv" / "bin"
KUBECTL = os.environ.get("KUBECTL") or (str(VENV_BIN / "kubectl") if (VENV_BIN / "kubectl").exists() else "kubectl")
MFTCTL = str(VENV_BIN / "mftctl") if (VENV_BIN / "mftctl").exists() else (shutil.which("mftctl") or "mftctl")

GROUP, VERSION, PLURAL = "mft.dev", "v1alpha1", "mftjobs"

# Step -> seconds, printed at the end of the session so regressions are visible.
TIMINGS: dict[str, float] = {}

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60, interval: float = 0.5,
             describe: Callable[[], str] | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` and the last state."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except (ApiException, subprocess.SubprocessError, AssertionError, KeyError) as exc:
            error = exc
        if time.monotonic() >= deadline:
            state = describe() if describe else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                                 + (f"\nlast error: {error}" if error else "")
                                 + (f"\nstate:\n{state}" if state else ""))
        time.sleep(interval)


def run(argv: list[str], *, check: bool = True, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    return result


class Cluster:
    """The running control plane: admin kubeconfig, kubectl, and API clients."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        return run([KUBECTL, f"--kubeconfig={kubeconfig or self.kubeconfig}", *args], input=input, check=check,
                   timeout=timeout)

    def apply(self, namespace: str, *objects: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects), check=check)

    # ------------------------------------------------------------ reads

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.job(namespace, name).get("status") or {}

    def pytorchjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._maybe(lambda: self.custom.get_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", name))

    def pytorchjobs(self, namespace: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")["items"]

    def pods(self, namespace: str, job: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(namespace, label_selector=f"training.kubeflow.org/job-name={job}").items

    def services(self, namespace: str, job: str) -> list[client.V1Service]:
        return self.core.list_namespaced_service(namespace, label_selector=f"training.kubeflow.org/job-name={job}").items

    def config_map(self, namespace: str, name: str) -> client.V1ConfigMap | None:
        return self._maybe(lambda: self.core.read_namespaced_config_map(name, namespace))

    def claim(self, namespace: str, name: str) -> client.V1PersistentVolumeClaim | None:
        return self._maybe(lambda: self.core.read_namespaced_persistent_volume_claim(name, namespace))

    def events(self, namespace: str, name: str) -> list[client.CoreV1Event]:
        return self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=MFTJob,involvedObject.name={name}").items

    @staticmethod
    def _maybe(read: Callable[[], T]) -> T | None:
        try:
            return read()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ------------------------------------------------------------ waits

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        """The MFTJob once its status.phase is ``phase``."""
        def probe() -> dict[str, Any] | None:
            job = self.job(namespace, name)
            return job if (job.get("status") or {}).get("phase") == phase else None
        return wait_for(f"MFTJob {namespace}/{name} to reach phase {phase}", probe, timeout,
                        describe=lambda: self.describe(namespace))

    def wait_gone(self, what: str, read: Callable[[], Any], timeout: float = 60) -> None:
        wait_for(f"{what} to be deleted", lambda: read() is None, timeout)

    def describe(self, namespace: str) -> str:
        """What a person would look at first when a wait fails."""
        listing = self.kubectl("get", "mftjobs,pytorchjobs,pods,pvc", "-n", namespace, "-o", "wide", check=False)
        statuses = self.kubectl("get", "mftjobs", "-n", namespace, "-o",
                                "jsonpath={range .items[*]}{.metadata.name}: {.status}{\"\\n\"}{end}", check=False)
        events = self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)
        return "\n".join((listing.stdout + listing.stderr, statuses.stdout, events.stdout[-4000:]))

    # ------------------------------------------------------------ volumes

    def provide_volume(self, namespace: str, claim: str, storage_class: str = "") -> None:
        """A hostPath PersistentVolume pre-bound to ``claim`` (no provisioner in this cluster);
        the PersistentVolume binder of kube-controller-manager binds the claim to it."""
        self.core.create_persistent_volume({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}"[:253], "labels": {"mft-e2e/namespace": namespace}},
            "spec": {
                "capacity": {"storage": "1Ti"},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": storage_class,
                "hostPath": {"path": f"/tmp/mft-e2e-volumes/{namespace}/{claim}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        })

    def provide_claims(self, namespace: str, *claims: str) -> None:
        """Existing claims an MFTJob refers to (models, data, a shared checkpoint volume), bound."""
        for claim in claims:
            self.provide_volume(namespace, claim)
            self.core.create_namespaced_persistent_volume_claim(namespace, {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                         "resources": {"requests": {"storage": "1Gi"}}},
            })
        for claim in claims:
            wait_for(f"PVC {namespace}/{claim} to be bound",
                     lambda claim=claim: self.claim(namespace, claim).status.phase == "Bound", timeout=30)

    def delete_volumes(self, namespace: str) -> None:
        self.core.delete_collection_persistent_volume(label_selector=f"mft-e2e/namespace={namespace}")

    # ------------------------------------------------------------ control-plane faults

    def restart_component(self, name: str, ready: Callable[[], bool], timeout: float = 90,
                          env: dict[str, str] | None = None) -> float:
        """Stop a component that up.sh started (its process group: SIGTERM, SIGKILL after 15 s)
        and start it again with the command line up.sh recorded in ``logs/<name>.cmdline``, in a
        session of its own, logging to the same file; ``pids/<name>.pid`` is rewritten so that
        down.sh stops the new process. Waits for ``ready``; returns the seconds it was down."""
        pid_file = self.dir / "pids" / f"{name}.pid"
        pid = int(pid_file.read_text().split()[0])
        stopped = time.monotonic()
        os.killpg(pid, signal.SIGTERM)
        try:
            wait_for(f"{name} (pid {pid}) to exit on SIGTERM", lambda: not Path(f"/proc/{pid}").exists(), 15, 0.1)
        except AssertionError:
            os.killpg(pid, signal.SIGKILL)
            wait_for(f"{name} (pid {pid}) to exit on SIGKILL", lambda: not Path(f"/proc/{pid}").exists(), 15, 0.1)
        cmdline = (self.dir / "logs" / f"{name}.cmdline").read_text().strip()
        with open(self.dir / "logs" / f"{name}.log", "ab") as log:
            log.write(f"\n===== restarted by the tests: {cmdline}\n".encode())
            log.flush()
            process = subprocess.Popen(["bash", "-c", f"exec {cmdline}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        # The same "PID start-time" record as lib.sh's start_component (field 22 of /proc/PID/stat).
        start_time = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        pid_file.write_text(f"{process.pid} {start_time}\n")

        def probe() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} after its restart; "
                                   f"see {self.dir}/logs/{name}.log")
            return ready()
        wait_for(f"{name} to be ready after its restart", probe, timeout, 0.2)
        return time.monotonic() - stopped

    def restart_apiserver(self, timeout: float = 90) -> float:
        """Restart kube-apiserver (etcd keeps the data); returns the seconds until /readyz was ok again."""
        return self.restart_component(
            "kube-apiserver", lambda: self.kubectl("get", "--raw", "/readyz", check=False, timeout=5).returncode == 0,
            timeout)

    def component_alive(self, name: str) -> bool:
        """The process up.sh (or restart_component) recorded for ``name`` is still running."""
        pid_file = self.dir / "pids" / f"{name}.pid"
        if not pid_file.exists():
            return False
        pid, start_time = pid_file.read_text().split()[:2]
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[19] == start_time


def job_manifest(name: str, *, nodes: int = 1, gpus: int = 1, duration: str | None = None, fail: bool = False,
                 exit_code: int | None = None, hold_pending: bool = False, **spec: Any) -> dict[str, Any]:
    """A small valid MFTJob; the pod annotations drive the KWOK stages (tests/e2e/cluster/stages, and
    up.sh for ``hold_pending``: pods stay Pending once scheduled)."""
    annotations = {}
    if hold_pending:
        annotations["mft.dev/test-hold-pending"] = "true"
    if duration:
        annotations["mft.dev/test-duration"] = duration
    if fail:
        annotations["mft.dev/test-fail"] = "true"
    if exit_code is not None:
        annotations["mft.dev/test-exit-code"] = str(exit_code)
    body: dict[str, Any] = {
        "mode": "sft",
        "model": {"path": "/models/pythia-1b"},
        "data": {"paths": ["/data/code-helper"]},
        "resources": {"nodes": nodes, "gpusPerNode": gpus, "cpu": "2", "memory": "8Gi", "shmSize": "1Gi"},
    }
    if annotations:
        body["podMetadata"] = {"annotations": annotations}
    body.update(copy.deepcopy(spec))
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MFTJob", "metadata": {"name": name}, "spec": body}


def owner_uids(obj: Any) -> list[str]:
    meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
    refs = meta.get("ownerReferences") if isinstance(meta, dict) else meta.owner_references
    return [(r["uid"] if isinstance(r, dict) else r.uid) for r in refs or []]


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == condition_type), {})


@dataclass
class Operator:
    """``mftctl operator`` as a child process, authenticated with ``kubeconfig`` (the chart's
    ServiceAccount token); its output goes to ``log_path``."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    health_url: str
    proc: subprocess.Popen | None = None
    starts: int = 0
    _log: Any = field(default=None, repr=False)

    def start(self, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "operator already running"
        self.starts += 1
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== operator start #{self.starts}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        wait_for("the operator's liveness endpoint", self._healthy, timeout, describe=lambda: self.tail(4000))

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with code {self.proc.returncode}:\n{self.tail(4000)}")
        try:
            with urllib.request.urlopen(self.health_url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, as when a node dies or the OOM killer strikes."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def tail(self, limit: int = 20000, since: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            data = handle.read()
        return data[-limit:].decode(errors="replace")


def cri_line(text: str) -> str:
    """One line of a container log in the CRI format KWOK serves."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000000000Z"
    return f"{stamp} stdout F {text}\n"
