"""The apiserver's CPU per MFTJob write: the CRD as shipped (OpenAPI schema + CEL rules) vs the same
CRD with every CEL rule removed, on the real control plane of the end-to-end suite.

    .venv/bin/python bench/operator/bench_crd_validation.py [--jobs 500] [--repeats 3]

The MFTJob writes of a burst are the user's create and the operator's status writes; every one of
them runs the CRD's validation in the apiserver, and during bench_scale.py's burst the apiserver
is what sets the pace. Per repeat and variant (interleaved: ours, no CEL, ours, ...) a fresh
cluster (tests/e2e/cluster/up.sh in a temporary state dir), the variant's CRD, 20 warm-up creates,
then, 8 client threads each:

1. create: N MFTJobs (bench_scale.py's bench job);
2. first status: one status write per job, as the operator's first (no ``startTime`` yet, so the
   immutability rules, which only hold once a job started, stop at their guard);
3. started status: a second status write per job, now with ``startTime`` in the stored object,
   so every immutability rule compares its part of the spec with the stored one.

Reported: the kube-apiserver process's CPU (user + system, from ``/proc``) per write for each
phase, min / median / max over the repeats, and the ratio ours / no CEL of the medians.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import yaml
from kubernetes import client, config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import CLUSTER, GROUP, KUBECTL, PLURAL, ROOT, VERSION, log, mftjob  # noqa: E402

VARIANTS = ("ours", "no CEL")
PHASES = ("create", "first status", "started status")
NAMESPACE = "bench"
WARM_UP = 20


def without_cel(crd: dict) -> dict:
    """``crd`` with every ``x-kubernetes-validations`` removed, the rest of its schema unchanged."""
    if isinstance(crd, dict):
        return {key: without_cel(value) for key, value in crd.items() if key != "x-kubernetes-validations"}
    if isinstance(crd, list):
        return [without_cel(value) for value in crd]
    return crd


def status(started: bool) -> dict:
    now = "2026-01-01T00:00:00Z"
    body = {"phase": "Running" if started else "Created", "observedGeneration": 1, "restarts": 0,
            "conditions": [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated",
                            "message": "The PyTorchJob was created.", "lastTransitionTime": now,
                            "observedGeneration": 1}]}
    if started:
        body["startTime"] = now
    return {"status": body}


def apiserver_cpu(state: Path) -> float:
    """CPU seconds used so far by the kube-apiserver of the cluster whose state is in ``state``."""
    for process in psutil.process_iter(["name", "cmdline"]):
        if "apiserver" in (process.info["name"] or "") and str(state) in " ".join(process.info["cmdline"] or []):
            times = process.cpu_times()
            return times.user + times.system
    raise RuntimeError(f"no kube-apiserver runs with its state in {state}")


def measure(variant: str, jobs: int) -> dict[str, float]:
    """Milliseconds of apiserver CPU per write, per phase, on a fresh cluster with ``variant``'s CRD."""
    state = Path(tempfile.mkdtemp(prefix="mft-bench-crd-"))
    env = {**os.environ, "MFT_CLUSTER_DIR": str(state), "MFT_CLUSTER_NODES": "1", "KUBECTL": KUBECTL,
           "MFT_CLUSTER_BUILD": "0"}  # built once, in main
    try:
        subprocess.run(["bash", str(CLUSTER / "up.sh")], env=env, check=True, capture_output=True, timeout=300)
        kubeconfig = state / "kubeconfig"
        crd = yaml.safe_load((ROOT / "crds" / "mftjob.yaml").read_text())
        (state / "crd.yaml").write_text(yaml.safe_dump(crd if variant == "ours" else without_cel(crd)))
        kubectl = [KUBECTL, f"--kubeconfig={kubeconfig}"]
        subprocess.run(kubectl + ["apply", "--server-side", "-f", str(state / "crd.yaml")], check=True, capture_output=True)
        subprocess.run(kubectl + ["wait", "--for=condition=Established", "crd/mftjobs.mft.dev", "--timeout=60s"],
                       check=True, capture_output=True, timeout=90)
        api = config.new_client_from_config(config_file=str(kubeconfig))
        api.configuration.connection_pool_maxsize = 16
        custom = client.CustomObjectsApi(api)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})

        def create(name: str) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, mftjob(name))

        def write_status(body: dict):
            return lambda name: custom.patch_namespaced_custom_object_status(GROUP, VERSION, NAMESPACE, PLURAL, name,
                                                                             copy.deepcopy(body))

        for i in range(WARM_UP):
            create(f"warm-up-{i}")
        names = [f"job-{i:04d}" for i in range(jobs)]
        phases = dict(zip(PHASES, (create, write_status(status(False)), write_status(status(True)))))
        spent = {}
        for phase, write in phases.items():
            before = apiserver_cpu(state)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(write, names))
            spent[phase] = (apiserver_cpu(state) - before) * 1e3 / jobs
        return spent
    finally:
        subprocess.run(["bash", str(CLUSTER / "down.sh")], env=env, capture_output=True, timeout=120)


def report(runs: dict[str, list[dict[str, float]]]) -> str:
    """One row per phase: each variant's min / median / max ms per write and ours / no CEL (medians)."""
    lines = ["| apiserver CPU per write, ms | ours: min / median / max | no CEL: min / median / max | ours / no CEL |",
             "|---|---|---|---|"]
    for phase in PHASES:
        cells, medians = [], []
        for variant in VARIANTS:
            values = sorted(run[phase] for run in runs[variant])
            medians.append(statistics.median(values))
            cells.append(f"{values[0]:.2f} / {medians[-1]:.2f} / {values[-1]:.2f}")
        lines.append(f"| {phase} | {cells[0]} | {cells[1]} | {medians[0] / medians[1]:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="MFTJobs written per phase (default 500)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, interleaved (default 3)")
    args = parser.parse_args()
    # The control plane, built from Go modules once (minutes when cold, a no-op when cached).
    subprocess.run(["bash", str(CLUSTER / "build.sh")], check=True)
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for repeat in range(1, args.repeats + 1):
        for variant in VARIANTS:
            started = time.monotonic()
            runs[variant].append(measure(variant, args.jobs))
            spent = ", ".join(f"{phase} {ms:.2f}" for phase, ms in runs[variant][-1].items())
            log(f"run {repeat}, {variant}: {spent} ms per write ({time.monotonic() - started:.0f} s)")
    print(report(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
