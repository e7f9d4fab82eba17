"""Session fixtures of the end-to-end suite.

``cluster``: builds the control plane (tests/e2e/cluster/build.sh; instant when cached, a
failure with build.sh's message when Go is missing: never a skip), starts it with up.sh in a
temporary state dir and stops it with down.sh at the end, also on failure or interruption.
``chart``: ``helm install`` of charts/mft-operator. ``operator``: ``mftctl operator`` as a local
process, configured like the chart's Deployment and authenticated as the chart's
ServiceAccount with a TokenRequest token, so any missing RBAC rule fails a test.
``ns``: a fresh namespace per test.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.cluster_tools import built_tool

from .support import (CLUSTER_SCRIPTS, KUBECTL, MFTCTL, ROOT, TIMINGS, Cluster, Operator, run, wait_for)

NODES = 6  # fake 8-GPU nodes; examples/sst.yaml alone needs 4 whole nodes
RELEASE = "mft-operator"
RELEASE_NAMESPACE = "mft-system"
SERVICE_ACCOUNT = "mft-operator"  # the chart's name for a release called mft-operator
PROGRESS_INTERVAL = 2  # seconds, set through the chart's progressIntervalSeconds

_OPERATOR: dict[str, Operator] = {}
NAMESPACE_KEY = pytest.StashKey[str]()
LOG_OFFSET_KEY = pytest.StashKey[int]()


def _timed(step: str, started: float) -> None:
    TIMINGS[step] = time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build(config: pytest.Config) -> None:
    """build.sh, its output shown live (a cold build takes minutes) and kept for the failure message."""
    started = time.monotonic()
    capture = config.pluginmanager.getplugin("capturemanager")
    lines = []
    with capture.global_and_fixture_disabled():
        process = subprocess.Popen(["bash", str(CLUSTER_SCRIPTS / "build.sh")], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            lines.append(line)
            sys.stderr.write(line)
        process.wait()
    if process.returncode != 0:
        pytest.fail(f"tests/e2e/cluster/build.sh failed (exit {process.returncode}); the end-to-end suite needs "
                    f"the control plane built from Go modules:\n{''.join(lines[-40:])}", pytrace=False)
    _timed("build.sh", started)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    build(request.config)

    state = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "MFT_CLUSTER_DIR": str(state), "MFT_CLUSTER_NODES": str(NODES), "KUBECTL": KUBECTL,
           "MFT_CLUSTER_BUILD": "0"}
    stopped = False

    def down() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            subprocess.run(["bash", str(CLUSTER_SCRIPTS / "down.sh")], env=env, capture_output=True, timeout=120)

    atexit.register(down)  # also when the session is interrupted before the finalizer runs
    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled CI job: run the finalizers, stop the cluster
    started = time.monotonic()
    up = subprocess.run(["bash", str(CLUSTER_SCRIPTS / "up.sh")], env=env, capture_output=True, text=True,
                        timeout=300)
    if up.returncode != 0:
        down()
        pytest.fail(f"tests/e2e/cluster/up.sh failed (exit {up.returncode}); logs in {state}/logs:\n"
                    f"{up.stdout}{up.stderr}", pytrace=False)
    _timed("up.sh (control plane time to ready)", started)
    try:
        yield Cluster(state)
    finally:
        down()


@pytest.fixture(scope="session")
def helm(cluster: Cluster) -> list[str]:
    return [str(built_tool("helm", "helm")), f"--kubeconfig={cluster.kubeconfig}"]


@pytest.fixture(scope="session")
def chart(cluster: Cluster, helm: list[str]) -> dict:
    """``helm install`` of the chart; returns the release as ``helm status`` reports it."""
    started = time.monotonic()
    run([*helm, "install", RELEASE, str(ROOT / "charts" / "mft-operator"),
         "--namespace", RELEASE_NAMESPACE, "--create-namespace",
         "--set", f"progressIntervalSeconds={PROGRESS_INTERVAL}", "--set", "logging.format=text",
         "--wait", "--timeout", "120s"], timeout=180)
    _timed("helm install", started)
    return json.loads(run([*helm, "status", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json"]).stdout)


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates with a TokenRequest token of the chart's ServiceAccount."""
    token = cluster.kubectl("create", "token", SERVICE_ACCOUNT, "-n", RELEASE_NAMESPACE, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server["server"],
                                                 "certificate-authority-data": server["certificate-authority-data"]}}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": SERVICE_ACCOUNT}}],
        "current-context": "e2e",
    }))
    path.chmod(0o600)
    return path


def operator_as_deployed(cluster: Cluster, work: Path) -> Operator:
    """An out-of-cluster operator (not started) with the arguments and environment of the installed
    chart's Deployment, authenticated as the chart's ServiceAccount; only the ports are free ones."""
    kubeconfig = service_account_kubeconfig(cluster, work / "kubeconfig")
    deployment = json.loads(cluster.kubectl("get", "deployment", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    health_port, metrics_port = _free_port(), _free_port()
    args = [a for a in container.get("args", []) if not a.startswith("--liveness")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "MFT_"))}
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    env.update({"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"})
    return Operator(
        argv=[MFTCTL, "operator", *args, f"--liveness=http://127.0.0.1:{health_port}/healthz",
              f"--metrics-port={metrics_port}"],
        env=env, log_path=work / "operator.log", health_url=f"http://127.0.0.1:{health_port}/healthz",
    )


@pytest.fixture(scope="session")
def operator(cluster: Cluster, chart: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator, started with the arguments and environment of the chart's Deployment
    (only the ports are changed, to free ones on this machine)."""
    process = operator_as_deployed(cluster, tmp_path_factory.mktemp("operator"))
    _OPERATOR["operator"] = process
    atexit.register(process.stop)
    started = time.monotonic()
    process.start()
    _timed("operator ready", started)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest, cluster: Cluster, operator: Operator) -> Iterator[str]:
    """A namespace of its own for each test; deleted (with its volumes) afterwards."""
    assert operator.alive(), f"the operator is not running:\n{operator.tail(4000)}"
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{name}-{uuid.uuid4().hex[:4]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(f"the default ServiceAccount of {name}",
             lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 30)
    request.node.stash[NAMESPACE_KEY] = name
    request.node.stash[LOG_OFFSET_KEY] = operator.log_size()
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        cluster.delete_volumes(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    process = _OPERATOR.get("operator")
    if process:
        since = item.stash.get(LOG_OFFSET_KEY, 0)
        report.sections.append(("operator log (this test)", process.tail(20000, since=since)))


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("end-to-end timings")
        for step, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{step:45s} {seconds:7.1f} s")
    process = _OPERATOR.get("operator")
    if process:
        terminalreporter.write_line(f"operator log: {process.log_path}")
