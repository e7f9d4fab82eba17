"""The renderer: golden files for every mode, node count and device kind, and checks of the
output against the real PyTorchJob CRD, Kubernetes' core schemas and the trainer's config."""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from mft_operator import render, schema, yamlio
from mft_operator.settings import Settings
from mft_trainer.config import load_config

from .helpers import GOLDEN, ROOT, load, render_inputs
from .pytorchjob_crd import pytorchjob_schema

CASES = render_inputs()
IDS = [name for name, _ in CASES]
SETTINGS = Settings(trainer_image="ghcr.io/mft-dev/mft-trainer:0.1.0")
K8S_VERSION = latest_version()


def _rendered(job):
    return render.render(job, SETTINGS)


def _by_kind(objects):
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize(("name", "job"), CASES, ids=IDS)
def test_golden(name, job):
    text = yamlio.dump_all(_rendered(job))
    golden = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"{golden} missing; run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8"), f"{golden} differs; if intended, rerun with UPDATE_GOLDEN=1"


def test_goldens_cover_modes_node_counts_and_devices():
    seen = set()
    for _, job in CASES:
        ctx = render.context(job, SETTINGS)
        seen.add((ctx.spec["mode"], ctx.resources["nodes"] > 1, ctx.resources["gpusPerNode"] > 0))
    assert {mode for mode, _, _ in seen} == {"sst", "sft", "lora"}
    assert {multi for _, multi, _ in seen} == {True, False}
    assert {gpu for _, _, gpu in seen} == {True, False}


@pytest.mark.parametrize(("name", "job"), CASES, ids=IDS)
def test_pytorchjob_is_valid_against_the_real_crd(name, job):
    manifest = _by_kind(_rendered(job))["PyTorchJob"]
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    assert [str(e) for e in schema.validate(body, pytorchjob_schema())] == []


@pytest.mark.parametrize(("name", "job"), CASES, ids=IDS)
def test_core_objects_and_pods_are_valid(name, job):
    objects = _rendered(job)
    for obj in objects:
        if obj["kind"] != "PyTorchJob":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    for replica, spec in _by_kind(objects)["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{replica.lower()}", **spec["template"]["metadata"]},
               "spec": spec["template"]["spec"]}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize(("name", "job"), CASES, ids=IDS)
def test_config_map_loads_in_the_trainer(name, job, tmp_path: Path):
    config_map = _by_kind(_rendered(job))["ConfigMap"]
    path = tmp_path / render.CONFIG_FILE
    path.write_text(config_map["data"][render.CONFIG_FILE], encoding="utf-8")
    config = load_config(path)
    spec = render.context(job, SETTINGS).spec
    assert config.mode == spec["mode"]
    assert config.training.learning_rate == spec["training"]["learningRate"]
    assert config.data.paths == spec["data"]["paths"]
    assert (config.lora is not None) == (spec["mode"] == "lora")
    assert config.checkpoint.mount_path == spec["checkpoint"]["mountPath"]


def test_model_config_keys_pass_through_unconverted():
    job = load(GOLDEN / "inputs" / "sst-1-gpu.yaml")
    config = yamlio.load(_by_kind(_rendered(job))["ConfigMap"]["data"]["config.yaml"])
    assert config["model"]["config"] == job["spec"]["model"]["config"]
    assert "tokenizer_path" in config["model"]


def test_master_plus_workers_and_launch():
    job = load(ROOT / "examples" / "sst.yaml")
    replicas = _by_kind(_rendered(job))["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 3}
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
    assert "--nproc_per_node=8" in container["command"]
    assert container["command"][-5:] == ["-m", "mft_trainer", "train", "--config", "/etc/mft/config.yaml"]
    assert "nprocPerNode" not in _by_kind(_rendered(job))["PyTorchJob"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_cpu_job_runs_one_process_per_node_and_requests_no_gpu():
    job = load(GOLDEN / "inputs" / "lora-3-cpu.yaml")
    container = _by_kind(_rendered(job))["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert "--nproc_per_node=1" in container["command"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_security_context_and_no_service_account_token():
    job = load(ROOT / "examples" / "lora.yaml")
    for spec in _by_kind(_rendered(job))["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod and "hostNetwork" not in pod
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["terminationGracePeriodSeconds"] == 180 + render.GRACE_MARGIN_SECONDS
        for container in pod["containers"]:
            assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert all("hostPath" not in volume for volume in pod["volumes"])


def test_labels_are_an_allow_list_and_owner_references_point_at_the_job():
    job = load(ROOT / "examples" / "sft.yaml")  # has a user label that must not leak
    job["metadata"].update(uid="u-1", namespace="ns", labels={"team": "x", "app.kubernetes.io/instance": "argo-app"})
    for obj in _rendered(job):
        assert "team" not in obj["metadata"]["labels"]
        assert "app.kubernetes.io/instance" not in obj["metadata"]["labels"]
        assert obj["metadata"]["labels"]["mft.dev/job-name"] == "pythia-1b-code-sft"
    pytorchjob = _by_kind(_rendered(job))["PyTorchJob"]
    assert pytorchjob["metadata"]["ownerReferences"] == [{
        "apiVersion": "mft.dev/v1alpha1", "kind": "MFTJob", "name": "pythia-1b-code-sft", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True,
    }]


def test_created_claim_is_owned_only_when_not_retained():
    job = load(ROOT / "examples" / "sft.yaml")
    job["metadata"].update(uid="u-1", namespace="ns")
    assert "ownerReferences" in _by_kind(_rendered(job))["PersistentVolumeClaim"]["metadata"]
    job["spec"]["checkpoint"]["retainOnDelete"] = True
    claim = _by_kind(_rendered(job))["PersistentVolumeClaim"]
    assert "ownerReferences" not in claim["metadata"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kueue_jobs_are_created_suspended_with_the_queue_label():
    job = load(ROOT / "examples" / "lora.yaml")
    pytorchjob = _by_kind(_rendered(job))["PyTorchJob"]
    assert pytorchjob["metadata"]["labels"][render.QUEUE_LABEL] == "team-a"
    assert pytorchjob["spec"]["runPolicy"]["suspend"] is True
    assert pytorchjob["metadata"]["annotations"][render.SUSPEND_ANNOTATION] == "false"


def test_settings_fill_what_the_spec_leaves_open():
    job = load(GOLDEN / "inputs" / "sft-1-cpu.yaml")
    settings = Settings(trainer_image="img:1", default_cpu="3", default_memory="5Gi", default_gpus_per_node=2)
    pod = _by_kind(render.render(job, settings))["PyTorchJob"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "img:1"
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "3", "memory": "5Gi", "nvidia.com/gpu": "2"}


def test_the_trainer_container_checks_the_paths_itself_before_torchrun():
    # Kubeflow reads only the trainer container's exit code: a failing init container would be
    # retried forever, so the launcher checks the paths and exits 2 (permanent) instead.
    job = load(ROOT / "examples" / "lora.yaml")
    for spec in _by_kind(_rendered(job))["PyTorchJob"]["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        assert "initContainers" not in pod
        (container,) = pod["containers"]
        command = container["command"]
        checks = command[command.index("launch") + 1:command.index("--")]
        spec_ = job["spec"]
        assert checks == [
            f"--grace-seconds={spec_['checkpoint']['preemptionGraceSeconds']}",
            *[f"--require=data.paths={p}" for p in spec_["data"]["paths"]],
            f"--require=model.path={spec_['model']['path']}",
            f"--require-writable=checkpoint.mountPath={spec_['checkpoint']['mountPath']}",
        ]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_launch_layout_is_reusable_without_kubernetes():
    ctx = render.context(load(GOLDEN / "inputs" / "lora-3-cpu.yaml"), SETTINGS)
    layout = render.launch_layout(ctx)
    assert layout.command[:2] == ["mft-train", "launch"] and "torchrun" in layout.command
    assert layout.config_path == "/etc/mft/config.yaml"
    assert layout.config["mode"] == "lora" and layout.config["lora"]["r"] == 96
    assert {m.name: m.path for m in layout.mounts} == {"mft-config": "/etc/mft", "mft-checkpoints": "/out"}
    assert [e["name"] for e in layout.env] == ["OMP_NUM_THREADS", "POD_NAME", "SETTINGS", "NVIDIA_VISIBLE_DEVICES",
                                               "CUDA_VISIBLE_DEVICES"]


def _env_of(job: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in render.launch_layout(render.context(job, SETTINGS)).env}


def test_a_cpu_job_is_kept_off_the_nodes_gpus():
    # An image that sets NVIDIA_VISIBLE_DEVICES=all would otherwise see GPUs given to other pods.
    env = _env_of(load(GOLDEN / "inputs" / "sft-1-cpu.yaml"))
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and env["CUDA_VISIBLE_DEVICES"] == ""


def test_a_gpu_job_leaves_device_selection_to_the_device_plugin_and_requires_cuda():
    env = _env_of(load(GOLDEN / "inputs" / "sst-1-gpu.yaml"))
    assert "NVIDIA_VISIBLE_DEVICES" not in env and "CUDA_VISIBLE_DEVICES" not in env
    assert env["MFT_REQUIRE_CUDA"] == "true"  # the trainer fails rather than train on the CPU


def test_a_cpu_jobs_own_cuda_visible_devices_wins():
    job = load(GOLDEN / "inputs" / "sft-1-cpu.yaml")
    job["spec"]["env"] = [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"}]
    env = _env_of(job)
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["NVIDIA_VISIBLE_DEVICES"] == "void"


# The CRD rejects NVIDIA_VISIBLE_DEVICES in spec.env, but an MFTJob stored before that rule still has it.
@pytest.mark.parametrize(("stem", "expected"), [("sft-1-cpu", ["void"]), ("sst-1-gpu", [])])
def test_a_jobs_own_nvidia_visible_devices_never_reaches_the_pods(stem, expected):
    job = load(GOLDEN / "inputs" / f"{stem}.yaml")
    job["spec"]["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]
    env = render.launch_layout(render.context(job, SETTINGS)).env
    assert [var["value"] for var in env if var["name"] == "NVIDIA_VISIBLE_DEVICES"] == expected


def test_rendering_does_not_modify_its_input():
    job = load(ROOT / "examples" / "lora.yaml")
    before = yamlio.dump(job)
    _rendered(job)
    assert yamlio.dump(job) == before


def test_the_crd_check_catches_a_broken_pytorchjob():
    manifest = _by_kind(_rendered(load(ROOT / "examples" / "lora.yaml")))["PyTorchJob"]
    master = manifest["spec"]["pytorchReplicaSpecs"]["Master"]
    master["replicas"] = "one"
    master["template"]["spec"]["hostNetworkk"] = True
    errors = [str(e) for e in schema.validate({"spec": manifest["spec"]}, pytorchjob_schema())]
    assert any(e.startswith("spec.pytorchReplicaSpecs.Master.replicas: Invalid value") for e in errors)
    assert any(e.startswith("spec.pytorchReplicaSpecs.Master.template.spec.hostNetworkk: Unknown field") for e in errors)
