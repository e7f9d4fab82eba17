"""Operator scale on a real control plane: N MFTJobs created at once, ours vs the Kubeflow
training-operator turning the same number of PyTorchJobs into pods, in the same cluster.

    .venv/bin/python bench/operator/bench_scale.py --sizes 50,200,500 --repeats 3 [--profile]

Sizes run interleaved (50, 200, 500, 50, 200, 500, ...), and each is reported as min / median / max
over its repeats. For each size and repeat a fresh cluster (tests/e2e/cluster/up.sh in a temporary state dir, down.sh in a
finally) with enough fake KWOK nodes, the chart's CRDs through ``helm install`` of
charts/mft-operator, then:

1. anchor: N PyTorchJobs (the exact PyTorchJob our operator renders for the bench MFTJob) created
   at once by this script; the training-operator creates their pods. Latency = PyTorchJob seen
   by a watch -> its pod seen by a watch.
2. ours: the operator runs out of cluster (``mftctl operator --all-namespaces`` through
   bench/operator/run_operator.py, which only counts its HTTP requests), authenticated with the
   cluster's ADMIN kubeconfig (not the chart's ServiceAccount as in the e2e suite: RBAC is not
   what is measured). N MFTJobs created at once; latency = MFTJob seen by a watch -> its
   PyTorchJob seen by a watch, and -> first watch event carrying a status.

All timestamps are client-side watch receipt times (creationTimestamp has 1 s resolution). The
MFTJobs ask for no GPU and 100m CPU so their pods schedule on the fake nodes; KWOK keeps them
Running (annotation ``mft.dev/test-duration: 1h``), so after the burst the operator polls N
running jobs (chart default: every 10 s), which is measured as the steady-state cost.
API requests: the apiserver's ``apiserver_request_total`` (by verb and resource, no user agent
label exists) before/after each phase, and the operator's own count of its requests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.cluster_tools import built_tool  # noqa: E402 (the repository root must be on the path first)

CLUSTER = ROOT / "tests" / "e2e" / "cluster"
VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
KUBECTL = os.environ.get("KUBECTL") or (str(VENV_BIN / "kubectl") if (VENV_BIN / "kubectl").exists() else "kubectl")
GROUP, VERSION, PLURAL = "mft.dev", "v1alpha1", "mftjobs"
JOB_LABEL = "training.kubeflow.org/job-name"
PROGRESS_INTERVAL = 10.0  # the chart's default progressIntervalSeconds


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def mftjob(name: str, duration: str | None = "1h") -> dict:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MFTJob", "metadata": {"name": name},
        "spec": {
            "mode": "sft", "model": {"path": "/models/pythia-1b"}, "data": {"paths": ["/data/code-helper"]},
            "resources": {"nodes": 1, "gpusPerNode": 0, "cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"},
        },
    }
    if duration:
        body["spec"]["podMetadata"] = {"annotations": {"mft.dev/test-duration": duration}}
    return body


def rendered_pytorchjob(name: str, namespace: str) -> dict:
    """The PyTorchJob the operator renders for the bench MFTJob, without the owner reference.
    Its pods Succeed after 2 s (no duration annotation), so the anchor leaves a quiet cluster."""
    from mft_operator.render import render
    from mft_operator.settings import Settings

    job = mftjob(name, duration=None)
    job["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000000")
    manifest = next(m for m in render(job, Settings()) if m["kind"] == "PyTorchJob")
    manifest["metadata"].pop("ownerReferences", None)
    # The anchor has no ConfigMap: drop volumes that refer to one (the pods are never run).
    for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        pod["volumes"] = [v for v in pod.get("volumes", []) if "configMap" not in v]
        names = {v["name"] for v in pod["volumes"]}
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] in names]
    return manifest


class Watcher:
    """Client-side receipt time of watch events, per object name (or per owning job for pods)."""

    def __init__(self, name: str, func, *args, key=None, status: bool = False, **kwargs):
        self.added: dict[str, float] = {}
        self.status: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.key = key or (lambda obj: obj["metadata"]["name"])
        self.track_status = status
        self._w = watch.Watch()
        listing = func(*args, **kwargs, _preload_content=False)
        rv = json.loads(listing.data)["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs, rv), daemon=True, name=name)
        self._thread.start()

    def _run(self, func, args, kwargs, rv) -> None:
        while True:
            try:
                for event in self._w.stream(func, *args, **kwargs, resource_version=rv, deserialize=False,
                                            timeout_seconds=3600, allow_watch_bookmarks=False):
                    now = time.time()
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        continue
                    rv = obj["metadata"]["resourceVersion"]
                    key = self.key(obj)
                    if key is None:
                        continue
                    self.added.setdefault(key, now)
                    if self.track_status and obj.get("status"):
                        self.status.setdefault(key, now)
                        if obj["status"].get("phase") == "Running":
                            self.running.setdefault(key, now)
                return
            except Exception:  # a dropped stream: resume from the last version seen
                if getattr(self._w, "_stop", False):
                    return
                time.sleep(0.2)

    def stop(self) -> None:
        self._w.stop()


class Apiserver:
    def __init__(self, state: Path, port: int):
        self.url = f"https://127.0.0.1:{port}/metrics"
        self.ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
        self.ctx.load_cert_chain(str(state / "pki" / "admin.crt"), str(state / "pki" / "admin.key"))

    def requests(self) -> Counter:
        """apiserver_request_total summed over codes/scopes/components: (verb, resource[/sub]) -> n."""
        with urllib.request.urlopen(self.url, context=self.ctx, timeout=30) as resp:
            text = resp.read().decode()
        out: Counter = Counter()
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels, value = line.rsplit(" ", 1)
            fields = dict(part.split("=", 1) for part in _split_labels(labels[len("apiserver_request_total{"):-1]))
            res = fields.get("resource", "").strip('"')
            sub = fields.get("subresource", "").strip('"')
            out[(fields.get("verb", "").strip('"'), res + ("/" + sub if sub else ""))] += float(value)
        return out


def _split_labels(s: str) -> list[str]:
    parts, cur, quoted = [], "", False
    for ch in s:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def diff(after: Counter, before: Counter) -> Counter:
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0})


def operator_counts(path: Path) -> Counter:
    try:
        return Counter(json.loads(path.read_text()))
    except (OSError, ValueError):
        return Counter()


def wait_until(what: str, probe, timeout: float, interval: float = 0.2) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.time()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def create_all(fn, names: list[str], threads: int = 8) -> tuple[float, float]:
    t0 = time.time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, names))
    return t0, time.time()


def stop(process: subprocess.Popen | None, sig: int, grace: float) -> None:
    """Ask a child to stop with ``sig``; kill it when it has not stopped within ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()

def run_size(n: int, repeat: int, args: argparse.Namespace, workdir: Path, profiled: bool) -> dict:
    state = Path(tempfile.mkdtemp(prefix=f"mft-bench-cluster-{n}-"))
    nodes = max(2, math.ceil(n / 100) + 1)
    env = {**os.environ, "MFT_CLUSTER_DIR": str(state), "MFT_CLUSTER_NODES": str(nodes), "KUBECTL": KUBECTL,
           "MFT_CLUSTER_BUILD": "0"}  # built once, in main
    result: dict = {"n": n, "repeat": repeat, "nodes": nodes}
    operator = None
    profiler = None
    ok = False
    try:
        t = time.monotonic()
        subprocess.run(["bash", str(CLUSTER / "up.sh")], env=env, check=True, capture_output=True, timeout=300)
        log(f"n={n}, run {repeat}: cluster up ({time.monotonic() - t:.1f} s, {nodes} fake nodes)")
        ports = dict(line.split("=", 1) for line in (state / "ports.env").read_text().split())
        apiserver = Apiserver(state, int(ports["APISERVER_PORT"]))
        kubeconfig = state / "kubeconfig"
        api = config.new_client_from_config(config_file=str(kubeconfig))
        api.configuration.connection_pool_maxsize = 16
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        helm = str(built_tool("helm", "helm"))
        subprocess.run([helm, f"--kubeconfig={kubeconfig}", "install", "mft-operator", str(ROOT / "charts" / "mft-operator"),
                        "--namespace", "mft-system", "--create-namespace"], check=True, capture_output=True, timeout=180)
        subprocess.run([KUBECTL, f"--kubeconfig={kubeconfig}", "wait", "--for=condition=Established",
                        "crd/mftjobs.mft.dev", "--timeout=60s"], check=True, capture_output=True, timeout=90)
        for ns in ("anchor", "bench"):
            core.create_namespace({"metadata": {"name": ns}})
            wait_until(f"ServiceAccount default in {ns}", lambda ns=ns: _exists(lambda: core.read_namespaced_service_account("default", ns)), 60)

        # ------------------------------------------------ anchor: training-operator, PyTorchJob -> pod
        ptj_w = Watcher("anchor-ptj", custom.list_namespaced_custom_object, "kubeflow.org", "v1", "anchor", "pytorchjobs")
        pod_w = Watcher("anchor-pods", core.list_namespaced_pod, "anchor", key=lambda o: o["metadata"].get("labels", {}).get(JOB_LABEL))
        template = rendered_pytorchjob("x", "anchor")
        before = apiserver.requests()

        def make_ptj(name: str) -> None:
            body = json.loads(json.dumps(template))
            body["metadata"]["name"] = name
            custom.create_namespaced_custom_object("kubeflow.org", "v1", "anchor", "pytorchjobs", body)

        names = [f"a{i:04d}" for i in range(n)]
        t0, t_created = create_all(make_ptj, names)
        t_all = wait_until("anchor pods", lambda: all(k in pod_w.added for k in names), args.timeout)
        lat = [pod_w.added[k] - ptj_w.added.get(k, t0) for k in names]
        result["anchor"] = {"create_s": t_created - t0, "all_s": t_all - t0, "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                            "requests": sum(diff(apiserver.requests(), before).values())}
        ptj_w.stop(); pod_w.stop()
        log(f"n={n}, run {repeat}: anchor all pods in {t_all - t0:.1f} s, p50 {pct(lat, .5):.2f} p99 {pct(lat, .99):.2f}")
        # Let the anchor's pods finish (2 s) and its jobs settle before the operator starts.
        time.sleep(args.settle)

        # ------------------------------------------------ ours: MFTJob -> PyTorchJob, status
        counts_path = workdir / f"counts-{n}-{repeat}.json"
        counts_path.unlink(missing_ok=True)
        op_env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "MFT_"))}
        op_env.update({"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", "MFT_BENCH_COUNTS": str(counts_path),
                       "MFT_LOG_FORMAT": "text", "MFT_TRAINER_IMAGE": "ghcr.io/mft-dev/mft-trainer:0.1.0"})
        health = _free_port()
        op_log = open(workdir / f"operator-{n}-{repeat}.log", "wb")
        operator = subprocess.Popen([PY, str(Path(__file__).with_name("run_operator.py")), "operator", "--all-namespaces",
                                     f"--liveness=http://127.0.0.1:{health}/healthz", f"--metrics-port={_free_port()}",
                                     f"--progress-interval={PROGRESS_INTERVAL:g}"],
                                    env=op_env, stdout=op_log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        wait_until("operator liveness", lambda: _http_ok(f"http://127.0.0.1:{health}/healthz"), 60)
        proc = psutil.Process(operator.pid)
        time.sleep(2)
        rss_idle = proc.memory_info().rss
        mft_w = Watcher("mftjobs", custom.list_namespaced_custom_object, GROUP, VERSION, "bench", PLURAL, status=True)
        child_w = Watcher("children", custom.list_namespaced_custom_object, "kubeflow.org", "v1", "bench", "pytorchjobs")
        bpod_w = Watcher("bench-pods", core.list_namespaced_pod, "bench", key=lambda o: o["metadata"].get("labels", {}).get(JOB_LABEL))
        if profiled:
            profiler = subprocess.Popen(["py-spy" if shutil.which("py-spy") else str(VENV_BIN / "py-spy"), "record",
                                         "-p", str(operator.pid), "-r", "50", "-f", "raw", "-o", str(workdir / f"profile-{n}.txt"),
                                         "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        cpu0 = sum(proc.cpu_times()[:2])
        req0, opreq0 = apiserver.requests(), operator_counts(counts_path)
        who = {operator.pid: "mft operator", os.getpid(): "bench (clients, watches)"}
        machine0 = cpu_by_process()

        names = [f"m{i:04d}" for i in range(n)]
        t0, t_created = create_all(
            lambda name: custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, mftjob(name)), names)
        t_children = wait_until("every PyTorchJob", lambda: all(k in child_w.added for k in names), args.timeout)
        req_c, opreq_c, cpu_c = apiserver.requests(), operator_counts(counts_path), sum(proc.cpu_times()[:2]) - cpu0
        machine_c, busy_c = cpu_window(machine0, cpu_by_process(), who)
        t_status = wait_until("every first status", lambda: all(k in mft_w.status for k in names), args.timeout)
        t_pods = wait_until("every pod", lambda: all(k in bpod_w.added for k in names), args.timeout)
        cpu_burst = sum(proc.cpu_times()[:2]) - cpu0
        req1, opreq1 = apiserver.requests(), operator_counts(counts_path)
        try:
            t_running = wait_until("every MFTJob Running", lambda: all(k in mft_w.running for k in names), args.timeout)
        except TimeoutError:
            t_running = float("nan")
        req2, opreq2 = apiserver.requests(), operator_counts(counts_path)
        cpu2 = sum(proc.cpu_times()[:2])
        time.sleep(args.steady)
        cpu_steady = sum(proc.cpu_times()[:2]) - cpu2
        req3, opreq3 = apiserver.requests(), operator_counts(counts_path)
        peak = _hwm(operator.pid)
        t_mft = {k: mft_w.added.get(k, t0) for k in names}
        child_lat = [child_w.added[k] - t_mft[k] for k in names]
        status_lat = [mft_w.status[k] - t_mft[k] for k in names]
        burst_api = diff(req1, req0)
        result["ours"] = {
            "create_s": t_created - t0, "children_s": t_children - t0, "status_s": t_status - t0, "pods_s": t_pods - t0,
            "running_s": t_running - t0,
            "child_p50": pct(child_lat, .5), "child_p99": pct(child_lat, .99),
            "status_p50": pct(status_lat, .5), "status_p99": pct(status_lat, .99),
            "cpu_burst_s": cpu_burst, "cpu_steady_s": cpu_steady, "steady_window_s": args.steady,
            "rss_idle_mb": rss_idle / 2**20, "rss_peak_mb": peak / 2**20,
            "api_burst": sum(burst_api.values()),
            "api_children": sum(diff(req_c, req0).values()), "op_children": sum(diff(opreq_c, opreq0).values()),
            "op_children_by": dict(diff(opreq_c, opreq0).most_common(12)), "cpu_children_s": cpu_c,
            "machine_children": {name: round(c, 1) for name, c in machine_c.most_common(8)},
            "machine_children_busy": busy_c,
            "api_burst_by": {f"{v} {r}": c for (v, r), c in burst_api.most_common(14)},
            "api_steady": sum(diff(req3, req2).values()),
            "op_burst": sum(diff(opreq1, opreq0).values()), "op_burst_by": dict(diff(opreq1, opreq0).most_common(12)),
            "op_steady": sum(diff(opreq3, opreq2).values()), "op_steady_by": dict(diff(opreq3, opreq2).most_common(12)),
        }
        for w in (mft_w, child_w, bpod_w):
            w.stop()
        log(f"n={n}, run {repeat}: ours children {t_children - t0:.1f} s, status {t_status - t0:.1f} s, "
            f"p99 child {pct(child_lat, .99):.2f} s, status {pct(status_lat, .99):.2f} s, peak RSS {peak / 2**20:.0f} MB")
        ok = True
    finally:
        stop(profiler, signal.SIGINT, 30)  # py-spy writes its profile on SIGINT
        stop(operator, signal.SIGTERM, 20)
        subprocess.run(["bash", str(CLUSTER / "down.sh")], env=env, capture_output=True, timeout=120)
        if ok:
            shutil.rmtree(state, ignore_errors=True)
        else:
            log(f"n={n}, run {repeat}: failed; cluster logs kept in {state}/logs")
    return result


def _exists(read) -> bool:
    try:
        read()
        return True
    except client.exceptions.ApiException:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_by_process() -> tuple[dict[int, tuple[str, float]], float, float]:
    """Every process's name and CPU seconds used so far, and the machine's busy and total core-seconds."""
    used = {}
    for p in psutil.process_iter(["pid", "name", "cpu_times"]):
        if p.info["cpu_times"] is not None:
            used[p.info["pid"]] = p.info["name"], p.info["cpu_times"].user + p.info["cpu_times"].system
    machine = psutil.cpu_times()
    total = sum(machine)
    return used, total - machine.idle - getattr(machine, "iowait", 0.0), total


def cpu_window(before, after, labels: dict[int, str]) -> tuple[Counter, float]:
    """CPU seconds per process name between two ``cpu_by_process`` snapshots (``labels`` names some
    pids; a process started in between counts whole), and the fraction of the machine's cores busy."""
    (used0, busy0, total0), (used1, busy1, total1) = before, after
    spent = Counter()
    for pid, (name, seconds) in used1.items():
        spent[labels.get(pid, name)] += seconds - used0.get(pid, (name, 0.0))[1]
    return spent, (busy1 - busy0) / max(total1 - total0, 1e-9)


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def summarize_profile(path: Path, top: int = 18) -> str:
    """Self and inclusive sample shares from py-spy's raw (collapsed) output."""
    if not path.exists():
        return "(no profile)"
    total, own, incl = 0, Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        total += c
        own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    lines = [f"py-spy: {total} samples (50 Hz, active threads only)", "self:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("inclusive (operator, kopf, kubernetes client, json/yaml, ssl):")
    keep = ("mft_operator", "reconcile", "render", "kube.py", "handlers", "status.py", "kopf", "rest.py", "api_client",
            "json", "yaml", "ssl", "urllib3", "deepcopy", "schema", "cel", "validation", "sanitize", "deserialize")
    picked = [(f, c) for f, c in incl.most_common(300) if any(k in f for k in keep)]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in picked[:top + 10]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,200,500", help="comma-separated numbers of jobs (default 50,200,500)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for each phase")
    parser.add_argument("--settle", type=float, default=8, help="seconds between the anchor and our phase")
    parser.add_argument("--steady", type=float, default=2 * PROGRESS_INTERVAL,
                        help="seconds of steady state (N running jobs polled) measured after the burst")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each size, interleaved (default 3)")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator during the largest size's last run")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "operator")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    # The control plane and helm, built from Go modules once (minutes when cold, a no-op when cached),
    # with its output shown, before any size's clock starts.
    subprocess.run(["bash", str(CLUSTER / "build.sh")], check=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    results = []
    for repeat in range(1, args.repeats + 1):
        for n in args.sizes:
            try:
                profiled = args.profile and n == max(args.sizes) and repeat == args.repeats
                results.append(run_size(n, repeat, args, args.out, profiled) | {"commit": commit})
            except Exception as exc:  # report what finished; a later size may still run
                log(f"n={n}, run {repeat}: FAILED: {type(exc).__name__}: {exc}")
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    report(results, commit)
    if args.profile and results:
        print()
        print(summarize_profile(args.out / f"profile-{max(args.sizes)}.txt"))
    return 0 if len(results) == len(args.sizes) * args.repeats else 1


def report(results: list[dict], commit: str) -> None:
    print(f"\ncommit {commit}, one row per run")
    print(f"{'N':>4} {'run':>3} | {'all PTJ s':>9} {'status s':>8} {'pods s':>7} {'Running s':>9} | {'child p50/p99 s':>15} "
          f"{'status p50/p99 s':>16} | {'anchor all s':>12} {'anchor p50/p99':>14} | {'CPU s':>6} {'CPU/job ms':>10} "
          f"{'RSS idle/peak MB':>16} | {'API/job':>7} {'op req/job':>10} {'poll req/job':>12}")
    for r in sorted(results, key=lambda r: (r["n"], r["repeat"])):
        o, a, n = r["ours"], r["anchor"], r["n"]
        polls = o["steady_window_s"] / PROGRESS_INTERVAL
        print(f"{n:>4} {r['repeat']:>3} | {o['children_s']:9.1f} {o['status_s']:8.1f} {o['pods_s']:7.1f} {o['running_s']:9.1f} | "
              f"{o['child_p50']:6.2f}/{o['child_p99']:<8.2f} {o['status_p50']:6.2f}/{o['status_p99']:<9.2f} | "
              f"{a['all_s']:12.1f} {a['p50']:6.2f}/{a['p99']:<7.2f} | {o['cpu_burst_s']:6.1f} {1000 * o['cpu_burst_s'] / n:10.1f} "
              f"{o['rss_idle_mb']:7.0f}/{o['rss_peak_mb']:<8.0f} | {o['api_burst'] / n:7.1f} {o['op_burst'] / n:10.1f} "
              f"{o['op_steady'] / n / polls:12.1f}")
    runs = {n: [r for r in results if r["n"] == n] for n in sorted({r["n"] for r in results})}
    print("\nmin / median / max over the runs of each size; ratios are ours / the training-operator anchor, same run:")
    for n, rs in runs.items():
        print(f"  N={n} ({len(rs)} runs): every PyTorchJob {spread(rs, ours('children_s'))} s, "
              f"child p99 {spread(rs, ours('child_p99'), '.2f')} s, "
              f"status p99 {spread(rs, ours('status_p99'), '.2f')} s, "
              f"peak RSS {spread(rs, ours('rss_peak_mb'), '.0f')} MB, "
              f"CPU/job {spread(rs, lambda r: 1000 * r['ours']['cpu_burst_s'] / n, '.0f')} ms, "
              f"apiserver requests/job {spread(rs, lambda r: r['ours']['api_burst'] / n)}")
        print(f"  N={n} ratios: time to all children {spread(rs, versus_anchor('children_s', 'all_s'), '.2f')}x, "
              f"p50 {spread(rs, versus_anchor('child_p50', 'p50'), '.2f')}x, "
              f"p99 {spread(rs, versus_anchor('child_p99', 'p99'), '.2f')}x, "
              f"apiserver requests per job {spread(rs, versus_anchor('api_burst', 'requests'), '.2f')}x")
    if len(runs) > 1:
        base_n = min(runs)
        print(f"\ngrowth vs N={base_n}, medians (linear = the N ratio):")
        for n, rs in runs.items():
            if n != base_n:
                growth = {key: median(rs, ours(key)) / max(median(runs[base_n], ours(key)), 1e-9)
                          for key in ("children_s", "cpu_burst_s", "cpu_steady_s", "api_burst", "rss_peak_mb")}
                print(f"  N x{n / base_n:.1f}: time to all children x{growth['children_s']:.2f}, operator CPU "
                      f"x{growth['cpu_burst_s']:.2f}, steady CPU x{growth['cpu_steady_s']:.2f}, "
                      f"API requests x{growth['api_burst']:.2f}, peak RSS x{growth['rss_peak_mb']:.2f}")
    print("\ntargets: 500 jobs < 60 s, p99 < 2 s, RSS < 250 MB, linear growth (medians; the worst run in brackets)")
    for n, rs in runs.items():
        children, rss, p99 = ours("children_s"), ours("rss_peak_mb"), slower_p99
        print(f"  N={n}: all PyTorchJobs {median(rs, children):.1f} s [{worst(rs, children):.1f}] "
              f"({'ok' if n < 500 or median(rs, children) < 60 else 'MISSED'}); "
              f"p99 child/status {median(rs, p99):.2f} s [{worst(rs, p99):.2f}] ({'ok' if median(rs, p99) < 2 else 'MISSED'}); "
              f"peak RSS {median(rs, rss):.0f} MB [{worst(rs, rss):.0f}] ({'ok' if median(rs, rss) < 250 else 'MISSED'})")
    for n, rs in runs.items():
        o = rs[-1]["ours"]
        print(f"\nN={n}, run {rs[-1]['repeat']}: apiserver requests in the burst (top): {json.dumps(o['api_burst_by'])}")
        print(f"N={n} until every PyTorchJob exists: apiserver {o['api_children'] / n:.1f} requests/job, "
              f"operator {o['op_children'] / n:.1f} requests/job, operator CPU {o['cpu_children_s']:.1f} s "
              f"({1000 * o['cpu_children_s'] / n:.0f} ms/job): {json.dumps(o['op_children_by'])}")
        print(f"N={n} until every PyTorchJob exists: the machine's cores {o['machine_children_busy']:.0%} busy; "
              f"CPU s by process: {json.dumps(o['machine_children'])}")
        print(f"N={n} operator's own requests, burst: {json.dumps(o['op_burst_by'])}")
        print(f"N={n} operator's own requests, {o['steady_window_s']:g} s steady: {json.dumps(o['op_steady_by'])}")


def slower_p99(run: dict) -> float:
    """The larger of a run's p99 latencies, to its child and to its first status."""
    return max(run["ours"]["child_p99"], run["ours"]["status_p99"])


def ours(key: str):
    """The metric ``key`` of our phase of a run."""
    return lambda run: run["ours"][key]


def versus_anchor(ours_key: str, anchor_key: str):
    """Ours / the anchor's of a run, for one metric."""
    return lambda run: run["ours"][ours_key] / max(run["anchor"][anchor_key], 1e-9)


def median(runs: list[dict], value) -> float:
    return statistics.median(value(r) for r in runs)


def worst(runs: list[dict], value) -> float:
    return max(value(r) for r in runs)


def spread(runs: list[dict], value, fmt: str = ".1f") -> str:
    """min / median / max of ``value`` over ``runs``, or the one value of a single run."""
    values = [value(r) for r in runs]
    if len(values) == 1:
        return format(values[0], fmt)
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


if __name__ == "__main__":
    sys.exit(main())
