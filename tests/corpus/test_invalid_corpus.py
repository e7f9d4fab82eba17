"""The invalid-manifest corpus is rejected offline, field by field, and the valid examples render
least-privilege pods that nothing in an MFTJob can widen."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import pytest

from mft_operator import render, validation, yamlio
from mft_operator.settings import Settings

from . import INVALID, invalid_cases

ROOT = Path(__file__).resolve().parents[2]
MFTCTL = str(Path(sys.executable).with_name("mftctl"))
CASES = invalid_cases()
VALID_EXAMPLES = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/demo/*.yaml"),
                         *ROOT.glob("examples/gitops/kustomize/base/*.yaml")])
VALID_EXAMPLES = [p for p in VALID_EXAMPLES if p.name != "kustomization.yaml"]


def test_corpus_is_large_and_covers_every_category():
    names = {c.name for c in CASES}
    assert len(CASES) >= 30, len(CASES)
    pairs = [c for c in CASES if c.old_doc is not None]
    assert {c.field for c in pairs} >= {"spec.mode", "spec.model", "spec.data", "spec.training", "spec.lora",
                                        "spec.checkpoint"}, "every immutable section needs an update case"
    for needed in ("nodes-absurd", "name-too-long", "hostpath-volume", "privileged", "host-network",
                   "service-account", "missing-mode", "epochs-string", "batch-size-negative", "nodes-zero",
                   "secret-from-other-namespace", "typo-learning-rate"):
        assert needed in names, f"corpus case {needed} is missing"
    for path in INVALID.glob("*.old.yaml"):
        assert path.with_name(path.name.replace(".old.yaml", ".yaml")).exists(), f"{path.name} has no update"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_rejected_naming_the_field(case):
    if case.old_doc is not None:
        assert validation.validate(case.old_doc) == [], f"{case.name}.old.yaml must itself be valid"
    errors = [str(e) for e in validation.validate(case.doc, old=case.old_doc)]
    assert errors, f"{case.name}: ACCEPTED, expected a rejection naming {case.field}"
    assert any(case.field in e and case.expect in e for e in errors), \
        f"{case.name}: expected an error naming {case.field!r} containing {case.expect!r}, got {errors}"


def test_update_pairs_are_accepted_before_the_job_starts():
    """The immutability rules bite only once status.startTime is set: the same change to a job
    that has not started is fine, so each pair really tests the transition rule."""
    for case in CASES:
        if case.old_doc is None:
            continue
        not_started = {k: v for k, v in case.old_doc.items() if k != "status"}
        assert validation.validate(case.doc, old=not_started) == [], case.name


def test_mftctl_validate_rejects_every_case_with_the_expected_message():
    """One `mftctl validate` over all files: each prints FILE: MFTJob/name: field: message, exit 1.
    (Update pairs need the old object, which the command line does not take: checked above.)"""
    singles = [c for c in CASES if c.old_doc is None]
    files = [INVALID / f"{c.name}.yaml" for c in singles]
    proc = subprocess.run([MFTCTL, "validate", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed: dict[str, list[str]] = defaultdict(list)
    for line in proc.stdout.splitlines():
        path, _, message = line.partition(": ")
        printed[Path(path).name.removesuffix(".yaml")].append(message)
    accepted = [c.name for c in singles if not printed[c.name]]
    assert accepted == [], f"mftctl validate accepted: {accepted}\nstderr: {proc.stderr[-2000:]}"
    for case in singles:
        assert any(case.field in m and case.expect in m for m in printed[case.name]), \
            f"{case.name}: expected {case.field!r} and {case.expect!r} in {printed[case.name]}"


# ---------------------------------------------------------------- valid examples: least privilege


def rendered(job: dict[str, Any], settings: Settings | None = None) -> list[dict[str, Any]]:
    assert validation.validate(job) == [], validation.validate(job)
    return render.render(copy.deepcopy(job), settings or Settings())


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (job,) = [o for o in objects if o["kind"] == "PyTorchJob"]
    return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{path}[{i}]")


FORBIDDEN_KEYS = {"hostPath", "privileged", "hostNetwork", "hostPID", "hostIPC", "hostUsers", "hostAliases",
                  "serviceAccountName", "serviceAccount", "nodeName", "procMount", "windowsOptions", "hostPort"}


def assert_least_privilege(pod: dict[str, Any], where: str) -> None:
    for path, value in walk(pod):
        key = path.rsplit(".", 1)[-1]
        assert key not in FORBIDDEN_KEYS, f"{where}: pod spec has {path} = {value!r}"
    assert pod["automountServiceAccountToken"] is False, where
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context.get("runAsUser", 1) != 0, (where, context)
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, (where, context)
    containers = pod["containers"] + pod.get("initContainers", [])
    assert containers, f"{where}: expected the trainer container"
    for container in containers:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, (where, container["name"], sc)
        assert sc["capabilities"] == {"drop": ["ALL"]}, (where, container["name"], sc)
        assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0, (where, container["name"], sc)
        assert "seccompProfile" not in sc or sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for volume in pod["volumes"]:
        source = set(volume) - {"name"}
        assert source <= {"persistentVolumeClaim", "configMap", "emptyDir"}, f"{where}: volume {volume}"


def assert_secrets_only_by_reference(job: dict[str, Any], objects: list[dict[str, Any]], where: str) -> None:
    assert not [o for o in objects if o["kind"] == "Secret"], where
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config_text = yamlio.dump(config_map)
    for env in job["spec"].get("env", []):
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            assert ref["name"] not in config_text and env["name"] not in config_text, (where, env)
    for pod in pod_specs(objects):
        for container in pod["containers"]:
            for env in container.get("env", []):
                secretish = any(w in env["name"].upper() for w in ("TOKEN", "SECRET", "PASSWORD", "KEY"))
                if secretish:
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (where, env)


@pytest.mark.parametrize("path", VALID_EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in VALID_EXAMPLES])
def test_valid_example_renders_least_privilege_pods(path):
    (job,) = [d for d in yamlio.load_all(path.read_text(encoding="utf-8")) if d.get("kind") == "MFTJob"]
    objects = rendered(job)
    for pod in pod_specs(objects):
        assert_least_privilege(pod, path.name)
    assert_secrets_only_by_reference(job, objects, path.name)


def test_a_secret_reaches_the_pods_only_by_reference():
    """The examples need no secret, so the checks above get one added to an example."""
    (job,) = [d for d in yamlio.load_all((ROOT / "examples" / "lora.yaml").read_text(encoding="utf-8"))
              if d.get("kind") == "MFTJob"]
    job["spec"].setdefault("env", []).append(
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "api-key"}}})
    objects = rendered(job)
    assert_secrets_only_by_reference(job, objects, "lora.yaml with a secret")
    passed = [env for pod in pod_specs(objects) for c in pod["containers"] for env in c.get("env", [])
              if env["name"] == "WANDB_API_KEY"]
    assert passed and all(env["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"} for env in passed)


SMUGGLED = {
    "hostPath": {"path": "/"}, "privileged": True, "hostNetwork": True, "hostPID": True, "hostIPC": True,
    "serviceAccountName": "cluster-admin", "automountServiceAccountToken": True,
    "securityContext": {"runAsUser": 0, "privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    "spec": {"hostNetwork": True}, "template": {"spec": {"hostPID": True}},
}


def test_opaque_model_config_never_reaches_the_pod_spec():
    """spec.model.config is passed through to the trainer unchanged (x-kubernetes-preserve-unknown-fields):
    pod-spec keys hidden in it end up only in the trainer's ConfigMap, never in the PyTorchJob."""
    base = {"apiVersion": "mft.dev/v1alpha1", "kind": "MFTJob", "metadata": {"name": "smuggle", "namespace": "t"},
            "spec": {"mode": "sst", "model": {"config": {"hidden_size": 64}, "tokenizerPath": "/data/tok"},
                     "data": {"paths": ["/data/a"]}, "resources": {"nodes": 2}}}
    poisoned = copy.deepcopy(base)
    poisoned["spec"]["model"]["config"].update(copy.deepcopy(SMUGGLED))
    clean_objects, poisoned_objects = rendered(base), rendered(poisoned)
    clean_job = next(o for o in clean_objects if o["kind"] == "PyTorchJob")
    poisoned_job = next(o for o in poisoned_objects if o["kind"] == "PyTorchJob")
    assert poisoned_job == clean_job, "model.config changed the PyTorchJob"
    for pod in pod_specs(poisoned_objects):
        assert_least_privilege(pod, "poisoned model.config")
    config = next(o for o in poisoned_objects if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    assert "hostPath" in config and "cluster-admin" in config  # carried, as opaque trainer config only


def test_pod_metadata_reaches_only_pod_metadata():
    """Labels and annotations land on the pod template's metadata, never in its spec."""
    job = {"apiVersion": "mft.dev/v1alpha1", "kind": "MFTJob", "metadata": {"name": "meta"},
           "spec": {"mode": "sft", "model": {"path": "/m"}, "data": {"paths": ["/data/a"]},
                    "podMetadata": {"labels": {"hostNetwork": "true"},
                                    "annotations": {"privileged": "true", "hostPath": "/"}}}}
    for pod in pod_specs(rendered(job)):
        assert_least_privilege(pod, "podMetadata")
