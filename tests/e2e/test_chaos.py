"""Operator chaos on the real control plane: no MFTJob may be lost, duplicated or left unconverged.

50 MFTJobs are created at once; while they run the operator is killed with SIGKILL and
restarted at seeded random moments, kube-apiserver is restarted once, some PyTorchJobs are
deleted by hand while they run (they must come back, counted in status.restarts) and some
after they succeeded (they must stay gone). At the end every job has succeeded, has exactly
one ConfigMap and (unless its child was deleted after the end) one PyTorchJob, and its status
has converged.

The module runs on a control plane of its own (a second up.sh state dir, 10 fake 8-GPU nodes
so that all 50 jobs are scheduled at once): restarting the apiserver of the session's cluster
would cut the watches of the session's operator and controllers under the tests that follow.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cluster_tools import built_tool

from .conftest import PROGRESS_INTERVAL, RELEASE, RELEASE_NAMESPACE, build, operator_as_deployed
from .support import (CLUSTER_SCRIPTS, KUBECTL, TIMINGS, Cluster, Operator, condition, job_manifest, run,
                      wait_for)

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

SEED = int(os.environ.get("MFT_CHAOS_SEED") or 20261128)  # `make test-chaos` repeats the scenario with other seeds
JOBS = 50
NODES = 10  # 80 GPUs: 50 jobs, every third with 2 nodes, 1 GPU per pod = 67 GPUs, all scheduled at once
OPERATOR_KILLS = 4
RUNNING_VICTIMS = 4  # PyTorchJobs deleted while running; the first of them twice
FINISHED_VICTIMS = 3  # PyTorchJobs deleted after the MFTJob succeeded
DEADLINE = 300  # seconds from creation for all 50 to succeed (the last pods end near 170 s)
# kube-controller-manager's garbage collector re-reads discovery every 30 s; a resync that
# meets the restarting apiserver drops the PyTorchJob monitor until the next one, and a
# PyTorchJob deleted in between leaves its pods behind for good (the recreated job's pods
# then collide with them: "already exists"). Hand deletions wait out that window.
GC_SETTLE = 35
TICK = 1.0


# ---------------------------------------------------------------- a control plane of our own


@pytest.fixture(scope="module")
def chaos_env(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Operator]]:
    build(request.config)
    state = tmp_path_factory.mktemp("chaos-cluster")
    env = {**os.environ, "MFT_CLUSTER_DIR": str(state), "MFT_CLUSTER_NODES": str(NODES), "KUBECTL": KUBECTL,
           "MFT_CLUSTER_BUILD": "0"}

    def down() -> None:
        subprocess.run(["bash", str(CLUSTER_SCRIPTS / "down.sh")], env=env, capture_output=True, timeout=120)

    started = time.monotonic()
    up = subprocess.run(["bash", str(CLUSTER_SCRIPTS / "up.sh")], env=env, capture_output=True, text=True, timeout=300)
    if up.returncode != 0:
        down()
        pytest.fail(f"up.sh (chaos cluster) failed (exit {up.returncode}); logs in {state}/logs:\n"
                    f"{up.stdout}{up.stderr}", pytrace=False)
    TIMINGS["chaos: up.sh (own control plane)"] = time.monotonic() - started
    operator: Operator | None = None
    try:
        cluster = Cluster(state)
        helm = [str(built_tool("helm", "helm")), f"--kubeconfig={cluster.kubeconfig}"]
        run([*helm, "install", RELEASE, str(CLUSTER_SCRIPTS.parents[2] / "charts" / "mft-operator"),
             "--namespace", RELEASE_NAMESPACE, "--create-namespace",
             "--set", f"progressIntervalSeconds={PROGRESS_INTERVAL}", "--set", "logging.format=text",
             "--wait", "--timeout", "120s"], timeout=180)
        # The operator as the session fixture runs it: the chart's arguments and environment,
        # authenticated as the chart's ServiceAccount.
        operator = operator_as_deployed(cluster, tmp_path_factory.mktemp("chaos-operator"))
        operator.start()
        yield cluster, operator
    finally:
        if operator:
            operator.stop()
        down()


# ---------------------------------------------------------------- bookkeeping


@dataclass
class Ledger:
    """What the test did and what it saw, per MFTJob name."""

    uids: dict[str, str] = field(default_factory=dict)  # MFTJob uid
    child_uids: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # every PyTorchJob uid seen
    max_children: Counter = field(default_factory=Counter)  # most PyTorchJobs owned at one moment
    deleted_running: Counter = field(default_factory=Counter)
    deleted_finished: dict[str, float] = field(default_factory=dict)  # name -> when
    recreated_after_finish: set[str] = field(default_factory=set)
    absent_polls: Counter = field(default_factory=Counter)  # ticks a finished victim was seen without a child
    events: list[str] = field(default_factory=list)
    api_errors: int = 0

    def note(self, t0: float, text: str) -> None:
        self.events.append(f"{time.monotonic() - t0:6.1f}s  {text}")


def controller_uid(obj: dict[str, Any]) -> str | None:
    return next((r["uid"] for r in obj["metadata"].get("ownerReferences", []) if r.get("controller")), None)


def children_by_owner(cluster: Cluster, ns: str) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    jobs: dict[str, list[dict]] = defaultdict(list)
    for child in cluster.pytorchjobs(ns):
        jobs[controller_uid(child)].append(child)
    maps: dict[str, list[dict]] = defaultdict(list)
    for cm in cluster.core.list_namespaced_config_map(ns).items:
        refs = [r for r in cm.metadata.owner_references or [] if r.controller]
        if refs:
            maps[refs[0].uid].append({"name": cm.metadata.name})
    return jobs, maps


def chaos_plan(rng: random.Random) -> tuple[float, list[float]]:
    """The apiserver restart and the operator kills: seeded, at least 8 s apart."""
    apiserver_at = rng.uniform(15, 30)
    kills: list[float] = []
    while len(kills) < OPERATOR_KILLS:
        t = rng.uniform(3, 70)
        if all(abs(t - other) >= 8 for other in (apiserver_at, *kills)):
            kills.append(t)
    return apiserver_at, sorted(kills)


# ---------------------------------------------------------------- the test


def test_fifty_jobs_survive_operator_kills_apiserver_restart_and_child_deletions(
        chaos_env: tuple[Cluster, Operator], capsys: pytest.CaptureFixture):
    cluster, operator = chaos_env
    rng = random.Random(SEED)
    ns = f"chaos-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(f"the default ServiceAccount of {ns}",
             lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode == 0, 30)

    names = [f"chaos-{i:02d}" for i in range(JOBS)]
    victims = rng.sample(names, RUNNING_VICTIMS + FINISHED_VICTIMS)
    running_victims, finished_victims = victims[:RUNNING_VICTIMS], victims[RUNNING_VICTIMS:]
    twice = running_victims[0]
    durations = {name: rng.randint(20, 40) for name in names}
    # Still running when deleted: deletions wait for the apiserver restart (at 15-30 s, about 20 s
    # long) and GC_SETTLE after it, about 70 s in, later on a slow machine.
    durations.update({name: 120 for name in running_victims})
    durations.update({name: 20 for name in finished_victims})
    manifests = [job_manifest(name, nodes=2 if i % 3 == 0 else 1, gpus=1, duration=f"{durations[name]}s")
                 for i, name in enumerate(names)]
    apiserver_at, kill_at = chaos_plan(rng)
    downtimes = [rng.uniform(0, 3) for _ in kill_at]

    ledger = Ledger()
    restarts_done: list[tuple[float, float]] = []  # (at, seconds the operator was down)
    apiserver_down = 0.0
    gc_window = (float("inf"), float("inf"))  # no hand deletion between the restart and a GC resync
    t0 = time.monotonic()
    try:
        cluster.apply(ns, *manifests)
        ledger.note(t0, f"created {JOBS} MFTJobs")
        phases: dict[str, str] = {}
        finished_at: float | None = None
        while True:
            elapsed = time.monotonic() - t0
            # ---- timed faults
            if apiserver_at is not None and elapsed >= apiserver_at:
                ledger.note(t0, "kube-apiserver: SIGTERM to its process group, start again")
                gc_window = (elapsed, float("inf"))
                apiserver_down = cluster.restart_apiserver()
                gc_window = (elapsed, time.monotonic() - t0 + GC_SETTLE)
                ledger.note(t0, f"kube-apiserver ready again after {apiserver_down:.1f}s")
                apiserver_at = None
                continue
            if kill_at and elapsed >= kill_at[0]:
                kill_at.pop(0)
                down_for = downtimes.pop(0)
                started = time.monotonic()
                operator.kill()
                ledger.note(t0, f"operator SIGKILL; restart in {down_for:.1f}s")
                time.sleep(down_for)
                operator.start()
                restarts_done.append((elapsed, time.monotonic() - started))
                ledger.note(t0, "operator live again")
                continue

            # ---- observe
            try:
                jobs = {j["metadata"]["name"]: j for j in cluster.custom.list_namespaced_custom_object(
                    "mft.dev", "v1alpha1", ns, "mftjobs")["items"]}
                owned, _ = children_by_owner(cluster, ns)
            except Exception:  # the apiserver may be starting: count and look again
                ledger.api_errors += 1
                time.sleep(TICK)
                continue
            for name, job in jobs.items():
                uid = ledger.uids.setdefault(name, job["metadata"]["uid"])
                assert uid == job["metadata"]["uid"], f"MFTJob {name} was replaced"
                children = owned.get(uid, [])
                ledger.max_children[name] = max(ledger.max_children[name], len(children))
                ledger.child_uids[name].update(c["metadata"]["uid"] for c in children)
                phase = (job.get("status") or {}).get("phase", "")
                if phase != phases.get(name):
                    phases[name] = phase
                if name in ledger.deleted_finished:
                    if children:
                        ledger.recreated_after_finish.add(name)
                    else:
                        ledger.absent_polls[name] += 1

            # ---- hand deletions (skipped while a fault is being injected: the loop is sequential)
            for name in running_victims:
                job, children = jobs.get(name), owned.get(ledger.uids.get(name), [])
                wanted = 2 if name == twice else 1
                if (ledger.deleted_running[name] < wanted and job and children and elapsed >= 6
                        and not gc_window[0] <= elapsed <= gc_window[1]
                        and (job.get("status") or {}).get("phase") == "Running"
                        and (job.get("status") or {}).get("restarts", 0) == ledger.deleted_running[name]
                        and len(ledger.child_uids[name]) == ledger.deleted_running[name] + 1):
                    cluster.kubectl("delete", "pytorchjob", name, "-n", ns, "--wait=false")
                    ledger.deleted_running[name] += 1
                    ledger.note(t0, f"deleted running PyTorchJob {name} (#{ledger.deleted_running[name]})")
            for name in finished_victims:
                job = jobs.get(name)
                if (name not in ledger.deleted_finished and job
                        and (job.get("status") or {}).get("phase") == "Succeeded"):
                    assert owned.get(ledger.uids[name]), f"{name} succeeded without a PyTorchJob before the deletion"
                    cluster.kubectl("delete", "pytorchjob", name, "-n", ns, "--wait=false")
                    ledger.deleted_finished[name] = time.monotonic()
                    ledger.note(t0, f"deleted succeeded PyTorchJob {name}")

            # ---- done?
            all_done = len(jobs) == JOBS and all(p == "Succeeded" for p in phases.values())
            chaos_done = apiserver_at is None and not kill_at
            quiet = all(name in ledger.deleted_finished and ledger.absent_polls[name] >= 3
                        and time.monotonic() - ledger.deleted_finished[name] >= 3 * PROGRESS_INTERVAL + 1
                        for name in finished_victims)
            if all_done and chaos_done and quiet:
                finished_at = time.monotonic() - t0
                break
            if elapsed > DEADLINE:
                stuck = {n: p for n, p in phases.items() if p != "Succeeded"}
                for name in stuck:
                    child = cluster.pytorchjob(ns, name)
                    ledger.events.append(f"stuck {name}: PyTorchJob uid {child and child['metadata']['uid']} "
                                         f"status {child and child.get('status')}")
                    for pod in cluster.pods(ns, name):
                        ledger.events.append(
                            f"  pod {pod.metadata.name} uid {pod.metadata.uid} phase {pod.status.phase} node "
                            f"{pod.spec.node_name} owners {[r.uid for r in pod.metadata.owner_references or []]} "
                            f"deletion {pod.metadata.deletion_timestamp} finalizers {pod.metadata.finalizers} "
                            f"conditions {[(c.type, c.status, c.reason, c.message) for c in pod.status.conditions or []]}")
                for node in cluster.core.list_node().items:
                    ready = next((c.status for c in node.status.conditions or [] if c.type == "Ready"), None)
                    ledger.events.append(f"node {node.metadata.name} Ready={ready} taints "
                                         f"{[(t.key, t.effect) for t in node.spec.taints or []]}")
                raise AssertionError(
                    f"after {DEADLINE}s: {len(jobs)} MFTJobs, not Succeeded: {stuck or 'none'}; chaos left: "
                    f"apiserver={apiserver_at}, kills={kill_at}; finished victims deleted/absent polls: "
                    f"{ {n: ledger.absent_polls[n] for n in finished_victims} }\n" + "\n".join(ledger.events)
                    + "\n" + cluster.describe(ns)[-6000:])
            time.sleep(TICK)

        # ---------------------------------------------------------------- final state
        assert operator.alive(), f"the operator died on its own:\n{operator.tail(4000)}"
        for component in ("kube-apiserver", "training-operator", "kube-controller-manager", "kwok"):
            assert cluster.component_alive(component), f"{component} is not running after the chaos"
        jobs = {j["metadata"]["name"]: j for j in cluster.custom.list_namespaced_custom_object(
            "mft.dev", "v1alpha1", ns, "mftjobs")["items"]}
        owned, config_maps = children_by_owner(cluster, ns)
        uids = {job["metadata"]["uid"] for job in jobs.values()}
        orphans = [c["metadata"]["name"] for uid, cs in owned.items() if uid not in uids for c in cs]
        problems: list[str] = []
        if orphans:
            problems.append(f"PyTorchJobs not controlled by any MFTJob: {orphans}")
        counts = Counter()
        for name, job in jobs.items():
            st, uid = job.get("status") or {}, job["metadata"]["uid"]
            expected_children = 0 if name in finished_victims else 1
            have = len(owned.get(uid, []))
            counts["pytorchjobs"] += have
            counts["configmaps"] += len(config_maps.get(uid, []))
            if have != expected_children:
                problems.append(f"{name}: {have} PyTorchJobs, expected {expected_children}")
            if len(config_maps.get(uid, [])) != 1:
                problems.append(f"{name}: {len(config_maps.get(uid, []))} ConfigMaps, expected 1")
            if ledger.max_children[name] > 1:
                problems.append(f"{name}: {ledger.max_children[name]} PyTorchJobs at one moment")
            created = len(ledger.child_uids[name])
            if created != 1 + ledger.deleted_running[name]:
                problems.append(f"{name}: {created} distinct PyTorchJobs seen, expected 1 + "
                                f"{ledger.deleted_running[name]} hand deletions")
            if st.get("phase") != "Succeeded":
                problems.append(f"{name}: phase {st.get('phase')}")
            if st.get("observedGeneration") != job["metadata"]["generation"]:
                problems.append(f"{name}: observedGeneration {st.get('observedGeneration')} != generation "
                                f"{job['metadata']['generation']}")
            if st.get("restarts", 0) != ledger.deleted_running[name]:
                problems.append(f"{name}: status.restarts {st.get('restarts', 0)} != "
                                f"{ledger.deleted_running[name]} deletions while running")
            if condition(st, "Succeeded").get("status") != "True" or not st.get("completionTime"):
                problems.append(f"{name}: Succeeded condition {condition(st, 'Succeeded')}, "
                                f"completionTime {st.get('completionTime')}")
            for other in ("Failed", "Running", "Blocked", "Suspended"):
                if condition(st, other).get("status") == "True":
                    problems.append(f"{name}: condition {other} is True next to phase Succeeded")
            if st.get("pytorchJob") != name:
                problems.append(f"{name}: status.pytorchJob {st.get('pytorchJob')}")
        problems += [f"{name}: PyTorchJob recreated after the job succeeded" for name in ledger.recreated_after_finish]
        if sum(ledger.deleted_running.values()) != RUNNING_VICTIMS + 1:
            problems.append(f"only {sum(ledger.deleted_running.values())} of {RUNNING_VICTIMS + 1} deletions of running "
                            f"PyTorchJobs happened (a victim finished first): {dict(ledger.deleted_running)}")
        runtime = time.monotonic() - t0
        TIMINGS["chaos: 50 jobs through the faults"] = runtime

        rows = [
            ("MFTJobs created at once", JOBS),
            ("MFTJobs Succeeded", sum(1 for j in jobs.values() if (j.get("status") or {}).get("phase") == "Succeeded")),
            ("MFTJobs stuck (not Succeeded)", sum(1 for j in jobs.values()
                                                  if (j.get("status") or {}).get("phase") != "Succeeded")),
            ("operator SIGKILLs + restarts", len(restarts_done)),
            ("operator down (s, each)", ", ".join(f"{d:.1f}@{a:.0f}s" for a, d in restarts_done)),
            ("kube-apiserver restarts (down s)", f"1 ({apiserver_down:.1f})"),
            ("API reads failed during the faults", ledger.api_errors),
            ("PyTorchJobs deleted while running", sum(ledger.deleted_running.values())),
            ("  ... recreated (sum of status.restarts)", sum((j.get("status") or {}).get("restarts", 0)
                                                             for j in jobs.values())),
            ("PyTorchJobs deleted after Succeeded", len(ledger.deleted_finished)),
            ("  ... recreated (must be 0)", len(ledger.recreated_after_finish)),
            ("  ... polls seen absent (min)", min(ledger.absent_polls[n] for n in finished_victims)),
            ("PyTorchJobs at the end (expected)", f"{counts['pytorchjobs']} ({JOBS - FINISHED_VICTIMS})"),
            ("ConfigMaps at the end (expected)", f"{counts['configmaps']} ({JOBS})"),
            ("most PyTorchJobs per MFTJob at once", max(ledger.max_children.values())),
            ("duplicate / orphan children", f"{sum(max(0, m - 1) for m in ledger.max_children.values())} / "
                                            f"{len(orphans)}"),
            ("statuses not converged", len({p.split(':')[0] for p in problems})),
            ("all Succeeded after (s)", f"{finished_at:.0f}"),
            ("runtime of the scenario (s)", f"{runtime:.0f}"),
        ]
        with capsys.disabled():
            print(f"\n\nOperator chaos (seed {SEED}):")
            width = max(len(r[0]) for r in rows)
            for label, value in rows:
                print(f"  {label:<{width}}  {value}")
            print("  timeline:\n    " + "\n    ".join(ledger.events))
        results = os.environ.get("MFT_CHAOS_RESULTS")
        if results:
            Path(results).write_text(json.dumps({label: value for label, value in rows}, indent=1) + "\n")
        assert not problems, "\n".join(problems) + "\n" + "\n".join(ledger.events)
    except BaseException:
        print(f"operator log tail:\n{operator.tail(8000)}")
        raise
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
