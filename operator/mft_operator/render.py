"""MFTJob -> the objects the operator creates: a PyTorchJob, the trainer's ConfigMap and,
with ``checkpoint.create``, the checkpoint PVC.

Pure functions over plain dicts. The PyTorchJob is built by a list of small steps
``(Context, manifest) -> manifest``, each owning one concern (launch, volumes, shared memory,
resources, scheduling, security, run policy, ownership, pod metadata), applied in order, so a
different child kind can reuse most of them. ``launch_layout`` (``Context.layout``) is the part
that does not depend on Kubernetes (command, environment, config, mounts): ``mftctl run --local``
reuses it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from . import API_GROUP, API_VERSION, KIND, schema, yamlio
from .crd import mftjob_schema
from .settings import Settings
from .validation import with_defaults

PYTORCHJOB_API = "kubeflow.org/v1"
CONTAINER = "pytorch"  # the Kubeflow training-operator requires this container name
PORT_NAME = "pytorchjob-port"  # and reads the master port from the port with this name
MASTER_PORT = 23456
CONFIG_DIR = "/etc/mft"
CONFIG_FILE = "config.yaml"
SHM_DIR = "/dev/shm"
TRAINER_UID = 1000
# Extra seconds after the trainer's preemption grace: torchrun must forward SIGTERM and
# reap its workers after they wrote the final checkpoint.
GRACE_MARGIN_SECONDS = 30

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_NAME_LABEL = f"{API_GROUP}/job-name"
# The spec.runPolicy.suspend last applied to the child: the operator changes the child's
# suspend only when the user changed theirs, so it never undoes Kueue's admission.
SUSPEND_ANNOTATION = f"{API_GROUP}/suspend-requested"
# The MFTJob's metadata.generation the PyTorchJob was rendered from: a child created just before
# the spec changed (while it still may) is replaced rather than adopted (reconcile.outdated_child).
GENERATION_ANNOTATION = f"{API_GROUP}/spec-generation"

# Trainer config sections, in file order (mft_trainer.config.SECTIONS).
SECTIONS = ("model", "data", "training", "lora", "checkpoint")
# Keys inside these are the trainer's own (GPT-NeoX config keys), passed through unconverted.
PASSTHROUGH = {("model", "config")}


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def checkpoint_claim_name(job_name: str) -> str:
    return f"{job_name}-checkpoints"


def labels(job_name: str) -> dict[str, str]:
    """The allow-listed labels of every child (never a copy of the parent's labels).

    No ``app.kubernetes.io/instance``: Argo CD tracks its applications by that label, and a child
    carrying it could be claimed, and pruned, by an application of the same name."""
    return {
        "app.kubernetes.io/name": "mftjob",
        "app.kubernetes.io/managed-by": "mft-operator",
        JOB_NAME_LABEL: job_name,
    }


@dataclass(frozen=True)
class Context:
    """What every rendering step reads: the MFTJob with all defaults applied, and settings."""

    job: dict[str, Any]
    settings: Settings

    @property
    def name(self) -> str:
        return self.job["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        return self.job["metadata"].get("namespace")

    @property
    def spec(self) -> dict[str, Any]:
        return self.job["spec"]

    @property
    def resources(self) -> dict[str, Any]:
        return self.spec["resources"]

    @property
    def image(self) -> str:
        return self.spec.get("image") or self.settings.trainer_image

    @cached_property
    def layout(self) -> Launch:
        """The launch layout, built once: several steps and the ConfigMap read it."""
        return launch_layout(self)


def context(job: dict[str, Any], settings: Settings) -> Context:
    """Apply the CRD's defaults, then the operator's defaults for what the CRD leaves open."""
    job = with_defaults(job)
    resources = job["spec"]["resources"]
    resources.setdefault("gpusPerNode", settings.default_gpus_per_node)
    resources.setdefault("cpu", settings.default_cpu)
    resources.setdefault("memory", settings.default_memory)
    resources.setdefault("shmSize", settings.default_shm_size)
    return Context(job, settings)


# ---------------------------------------------------------------- trainer config and launch


def snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _snake_keys(value: Any, section: tuple[str, ...] = ()) -> Any:
    if isinstance(value, dict) and section not in PASSTHROUGH:
        return {snake_case(k): _snake_keys(v, section + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v, section) for v in value]
    return value


def trainer_config(ctx: Context) -> dict[str, Any]:
    """The trainer's config file: ``mode`` plus the snake_case form of the spec's sections."""
    spec = dict(ctx.spec)
    if spec["mode"] == "lora":
        lora_schema = mftjob_schema()["properties"]["spec"]["properties"]["lora"]
        spec["lora"] = schema.apply_defaults(spec.get("lora") or {}, lora_schema)
    config: dict[str, Any] = {"mode": spec["mode"]}
    for section in SECTIONS:
        if section in spec:
            config[snake_case(section)] = _snake_keys(spec[section], (section,))
    return config


@dataclass(frozen=True)
class Mount:
    """A directory the trainer sees, and what backs it (in Kubernetes terms)."""

    name: str
    path: str
    source: dict[str, Any]  # a core/v1 volume source, e.g. {"persistentVolumeClaim": {...}}
    read_only: bool = False
    sub_path: str | None = None


@dataclass(frozen=True)
class Launch:
    """How the trainer starts, independent of where: command, environment, config, mounts.

    ``command`` uses Kubernetes' ``$(VAR)`` expansion for the values the Kubeflow
    training-operator injects (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT);
    a local runner substitutes them itself.
    """

    command: list[str]
    env: list[dict[str, Any]]
    config_path: str
    config: dict[str, Any]
    mounts: list[Mount] = field(default_factory=list)


RENDEZVOUS_TIMEOUT_SECONDS = 1800


def launch_layout(ctx: Context) -> Launch:
    procs = ctx.resources["gpusPerNode"] or 1
    config_path = f"{CONFIG_DIR}/{CONFIG_FILE}"
    # The supervisor turns the kubelet's SIGTERM into a checkpoint on every worker and exit 143
    # (retried by the ExitCode restart policy); torchrun alone would exit 1 (not retried).
    grace = ctx.spec["checkpoint"]["preemptionGraceSeconds"]
    command = [
        "mft-train", "launch", f"--grace-seconds={grace}", *_preflight_arguments(ctx.spec), "--",
        "torchrun",
        "--nnodes=$(PET_NNODES)",
        f"--nproc_per_node={procs}",
        "--node_rank=$(PET_NODE_RANK)",
        "--master_addr=$(PET_MASTER_ADDR)",
        "--master_port=$(PET_MASTER_PORT)",
        # torchrun's static rendezvous waits 600 s for all nodes by default: too short for a pod
        # whose node pulls a large image, or whose peer must first end its grace period.
        f"--rdzv_conf=timeout={RENDEZVOUS_TIMEOUT_SECONDS + grace}",
        "-m", "mft_trainer", "train", "--config", config_path,
    ]
    return Launch(
        command=command,
        env=_environment(ctx),
        config_path=config_path,
        config=trainer_config(ctx),
        mounts=_mounts(ctx),
    )


# A pod that asks for no GPU still sees every GPU of its node when its image sets
# NVIDIA_VISIBLE_DEVICES=all (as CUDA base images do) and the NVIDIA runtime is the node's default:
# a CPU job would then train on GPUs the scheduler gave to other pods.
NO_GPUS = ({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, {"name": "CUDA_VISIBLE_DEVICES", "value": ""})

# The NVIDIA runtime exposes the GPUs this variable names, whoever set it: a job's own value would
# override the device plugin's choice or the fence above. The CRD rejects it in spec.env; a job
# stored before that rule existed still has it, so rendering drops it too.
DEVICE_SELECTOR = "NVIDIA_VISIBLE_DEVICES"


# In a GPU job the trainer fails (with the reason) when CUDA cannot be used, instead of training
# on the CPU while the job holds the node's GPUs.
REQUIRE_CUDA = {"name": "MFT_REQUIRE_CUDA", "value": "true"}


def _environment(ctx: Context) -> list[dict[str, Any]]:
    env = [copy.deepcopy(var) for var in ctx.spec.get("env", []) if var["name"] != DEVICE_SELECTOR]
    device = NO_GPUS if ctx.resources["gpusPerNode"] == 0 else (REQUIRE_CUDA,)
    names = {var["name"] for var in env}
    return env + [dict(var) for var in device if var["name"] not in names]


def _mounts(ctx: Context) -> list[Mount]:
    checkpoint = ctx.spec["checkpoint"]
    mounts = [
        Mount("mft-config", CONFIG_DIR, {"configMap": {"name": config_map_name(ctx.name)}}, read_only=True),
        Mount("mft-checkpoints", checkpoint["mountPath"], _checkpoint_source(ctx)),
    ]
    for volume in ctx.spec.get("volumes", []):
        source = {"persistentVolumeClaim": {"claimName": volume["claimName"], "readOnly": volume["readOnly"]}}
        mounts.append(Mount(volume["name"], volume["mountPath"], source, volume["readOnly"], volume.get("subPath")))
    return mounts


def _checkpoint_source(ctx: Context) -> dict[str, Any]:
    checkpoint = ctx.spec["checkpoint"]
    if "claimName" in checkpoint:
        return {"persistentVolumeClaim": {"claimName": checkpoint["claimName"]}}
    if "create" in checkpoint:
        return {"persistentVolumeClaim": {"claimName": checkpoint_claim_name(ctx.name)}}
    return {"emptyDir": {}}


# ---------------------------------------------------------------- PyTorchJob steps

Step = Callable[[Context, dict[str, Any]], dict[str, Any]]


def _pod_templates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return [replica["template"] for replica in manifest["spec"]["pytorchReplicaSpecs"].values()]


def _trainer_container(template: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in template["spec"]["containers"] if c["name"] == CONTAINER)


def skeleton(ctx: Context) -> dict[str, Any]:
    """One Master (without it Kubeflow injects no MASTER_ADDR/RANK/WORLD_SIZE) and nodes-1 Workers."""

    def replica(count: int) -> dict[str, Any]:
        container = {"name": CONTAINER, "ports": [{"name": PORT_NAME, "containerPort": MASTER_PORT}]}
        # ExitCode: 128-255 (signals, e.g. a preempted trainer's 143) are retried, 1-127 fail.
        return {"replicas": count, "restartPolicy": "ExitCode", "template": {"metadata": {}, "spec": {"containers": [container]}}}

    replicas = {"Master": replica(1)}
    if ctx.resources["nodes"] > 1:
        replicas["Worker"] = replica(ctx.resources["nodes"] - 1)
    metadata = {"name": ctx.name, "namespace": ctx.namespace} if ctx.namespace else {"name": ctx.name}
    return {"apiVersion": PYTORCHJOB_API, "kind": "PyTorchJob", "metadata": metadata, "spec": {"pytorchReplicaSpecs": replicas}}


def launch(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    layout = ctx.layout
    for template in _pod_templates(manifest):
        container = _trainer_container(template)
        container["image"] = ctx.image
        if "imagePullPolicy" in ctx.spec:
            container["imagePullPolicy"] = ctx.spec["imagePullPolicy"]
        container["command"] = list(layout.command)
        # A failure's last log lines (a missing path, a traceback) reach the pod status, and from
        # there status.failure.
        container["terminationMessagePolicy"] = "FallbackToLogsOnError"
        if layout.env:
            container["env"] = copy.deepcopy(layout.env)
        if "imagePullSecrets" in ctx.spec:
            template["spec"]["imagePullSecrets"] = copy.deepcopy(ctx.spec["imagePullSecrets"])
    return manifest


def volumes(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    mounts = ctx.layout.mounts
    for template in _pod_templates(manifest):
        template["spec"]["volumes"] = [{"name": m.name, **copy.deepcopy(m.source)} for m in mounts]
        _trainer_container(template)["volumeMounts"] = [_volume_mount(m) for m in mounts]
    return manifest


def _volume_mount(mount: Mount) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": mount.name, "mountPath": mount.path}
    if mount.read_only:
        entry["readOnly"] = True
    if mount.sub_path:
        entry["subPath"] = mount.sub_path
    return entry


def resources(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS: a training pod should not be evicted first)."""
    amounts = {"cpu": str(ctx.resources["cpu"]), "memory": str(ctx.resources["memory"])}
    limits = dict(amounts)
    if ctx.resources["gpusPerNode"] > 0:
        limits["nvidia.com/gpu"] = str(ctx.resources["gpusPerNode"])
    for template in _pod_templates(manifest):
        _trainer_container(template)["resources"] = {"requests": dict(amounts), "limits": dict(limits)}
    return manifest


def _preflight_arguments(spec: dict[str, Any]) -> list[str]:
    """The paths `mft-train launch` checks before torchrun starts. A missing one fails the job at
    once, with a message that names it, in the trainer container itself: Kubeflow reads only that
    container's exit code, so a failing init container would be retried forever."""
    required = {path: "data.paths" for path in spec["data"]["paths"]}
    for key in ("path", "tokenizerPath"):
        if key in spec["model"]:
            required.setdefault(spec["model"][key], f"model.{key}")
    arguments = [f"--require={field}={path}" for path, field in required.items()]
    return arguments + [f"--require-writable=checkpoint.mountPath={spec['checkpoint']['mountPath']}"]


def shared_memory(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    """A memory-backed /dev/shm: the container runtime's 64 MiB default starves NCCL and
    data loader workers."""
    volume = {"name": "mft-shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(ctx.resources["shmSize"])}}
    for template in _pod_templates(manifest):
        template["spec"].setdefault("volumes", []).append(dict(volume, emptyDir=dict(volume["emptyDir"])))
        _trainer_container(template).setdefault("volumeMounts", []).append({"name": "mft-shm", "mountPath": SHM_DIR})
    return manifest


def scheduling(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    scheduling_spec = ctx.spec.get("scheduling", {})
    for template in _pod_templates(manifest):
        pod = template["spec"]
        for key in ("nodeSelector", "tolerations", "affinity"):
            if ctx.resources.get(key):
                pod[key] = copy.deepcopy(ctx.resources[key])
        if "priorityClassName" in scheduling_spec:
            pod["priorityClassName"] = scheduling_spec["priorityClassName"]
        if "schedulerName" in scheduling_spec:
            pod["schedulerName"] = scheduling_spec["schedulerName"]
    if "schedulerName" in scheduling_spec:
        # Gang scheduling (Volcano, scheduler-plugins): all pods or none.
        policy: dict[str, Any] = {"minAvailable": ctx.resources["nodes"]}
        if "priorityClassName" in scheduling_spec:
            policy["priorityClass"] = scheduling_spec["priorityClassName"]
        manifest["spec"].setdefault("runPolicy", {})["schedulingPolicy"] = policy
    if "queueName" in scheduling_spec:
        manifest["metadata"].setdefault("labels", {})[QUEUE_LABEL] = scheduling_spec["queueName"]
    return manifest


def security(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    """PodSecurity "restricted", no API token (progress travels through logs), no service links."""
    pod_context = {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        # Large model and data volumes: change ownership only when the root does not match.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container_context = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    grace = ctx.spec["checkpoint"]["preemptionGraceSeconds"] + GRACE_MARGIN_SECONDS
    for template in _pod_templates(manifest):
        pod = template["spec"]
        pod["securityContext"] = copy.deepcopy(pod_context)
        pod["automountServiceAccountToken"] = False
        pod["enableServiceLinks"] = False
        pod["terminationGracePeriodSeconds"] = grace
        for container in pod["containers"] + pod.get("initContainers", []):
            container["securityContext"] = copy.deepcopy(container_context)
    return manifest


def run_policy(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    user = ctx.spec["runPolicy"]
    policy = manifest["spec"].setdefault("runPolicy", {})
    policy["cleanPodPolicy"] = user["cleanPodPolicy"]
    policy["backoffLimit"] = user["backoffLimit"]
    # Not ttlSecondsAfterFinished: the operator deletes a finished child itself, once the outcome
    # is recorded (status.child_expiry); the training operator's TTL could delete it before.
    if "activeDeadlineSeconds" in user:
        policy["activeDeadlineSeconds"] = user["activeDeadlineSeconds"]
    # Kueue admits a queued job by unsuspending it; it must be created suspended.
    policy["suspend"] = user["suspend"] or "queueName" in ctx.spec.get("scheduling", {})
    manifest["metadata"].setdefault("annotations", {})[SUSPEND_ANNOTATION] = str(user["suspend"]).lower()
    return manifest


def ownership(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    _own(ctx, manifest)
    generation = ctx.job["metadata"].get("generation")
    if generation is not None:  # offline (mftctl render) the MFTJob has none yet
        manifest["metadata"].setdefault("annotations", {})[GENERATION_ANNOTATION] = str(generation)
    for template in _pod_templates(manifest):
        template["metadata"]["labels"] = labels(ctx.name)
    return manifest


def pod_metadata(ctx: Context, manifest: dict[str, Any]) -> dict[str, Any]:
    """The user's ``spec.podMetadata`` on every pod template; the operator's labels win."""
    extra = ctx.spec.get("podMetadata", {})
    for template in _pod_templates(manifest):
        metadata = template["metadata"]
        if extra.get("labels"):
            metadata["labels"] = {**extra["labels"], **metadata.get("labels", {})}
        if extra.get("annotations"):
            metadata["annotations"] = {**metadata.get("annotations", {}), **extra["annotations"]}
    return manifest


def _own(ctx: Context, manifest: dict[str, Any], controller_owned: bool = True) -> dict[str, Any]:
    metadata = manifest["metadata"]
    metadata["labels"] = {**labels(ctx.name), **metadata.get("labels", {})}
    uid = ctx.job["metadata"].get("uid")
    # Offline (mftctl render) the MFTJob has no uid yet, so there is nothing to point at.
    if controller_owned and uid:
        metadata["ownerReferences"] = [owner_reference(ctx.job)]
    return manifest


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


PYTORCHJOB_STEPS: tuple[Step, ...] = (
    launch, volumes, shared_memory, resources, scheduling, security, run_policy, ownership,
    pod_metadata,
)


def pytorchjob(ctx: Context, steps: tuple[Step, ...] = PYTORCHJOB_STEPS) -> dict[str, Any]:
    manifest = skeleton(ctx)
    for step in steps:
        manifest = step(ctx, manifest)
    return manifest


# ---------------------------------------------------------------- ConfigMap and PVC


def config_map(ctx: Context) -> dict[str, Any]:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ctx, config_map_name(ctx.name)),
        "data": {CONFIG_FILE: yamlio.dump(ctx.layout.config)},
    }
    return _own(ctx, manifest)


def checkpoint_claim(ctx: Context) -> dict[str, Any] | None:
    """The operator-created checkpoint PVC; owned by the job (deleted with it) only when
    ``retainOnDelete`` is false."""
    checkpoint = ctx.spec["checkpoint"]
    if "create" not in checkpoint:
        return None
    request = checkpoint["create"]
    # Every node writes checkpoints (sharded optimizer state): more than one node needs a
    # volume that several nodes can mount.
    access_mode = "ReadWriteMany" if ctx.resources["nodes"] > 1 else "ReadWriteOnce"
    spec: dict[str, Any] = {"accessModes": [access_mode], "resources": {"requests": {"storage": request["size"]}}}
    if "storageClassName" in request:
        spec["storageClassName"] = request["storageClassName"]
    manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(ctx, checkpoint_claim_name(ctx.name)),
        "spec": spec,
    }
    return _own(ctx, manifest, controller_owned=not checkpoint["retainOnDelete"])


def _metadata(ctx: Context, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": ctx.namespace} if ctx.namespace else {"name": name}


def render(job: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    """Every object the operator creates for ``job``, in creation order (the PyTorchJob last:
    its pods need the ConfigMap and PVC)."""
    ctx = context(job, settings)
    claim = checkpoint_claim(ctx)
    return [config_map(ctx), *([claim] if claim else []), pytorchjob(ctx)]
