"""``mftctl run FILE --local``: the same MFTJob on this machine, without a cluster.

The plan is pure: the renderer's launch layout (the command, env and volume layout the pods get),
with each mount path mapped to a local folder and the Kubeflow-injected env of a one-node job.
The edge runs ``torchrun`` in its own session, shows the trainer's JSON progress as a progress
bar, and turns Ctrl-C into SIGTERM so the trainer saves a checkpoint before it exits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import API_GROUP, render, yamlio
from .settings import Settings

# Annotation that maps mount paths to local folders, relative to the manifest's folder:
# "local.mft.dev/mounts: /data=../data,/models=models". Kubernetes ignores it.
MOUNTS_ANNOTATION = f"local.{API_GROUP}/mounts"
# What the Kubeflow training-operator injects for the Master of a one-node job.
MASTER_ADDR = "127.0.0.1"


class LocalRunError(ValueError):
    """The job cannot run locally as written; the message says what to pass."""


@dataclass
class LocalPlan:
    command: list[str]
    env: dict[str, str]
    config: dict[str, Any]
    config_path: Path
    workdir: Path
    mounts: dict[str, Path]
    checkpoint_dir: Path  # the checkpoint volume's local folder, created like a mounted volume
    warnings: list[str] = field(default_factory=list)


def parse_mounts(pairs: Iterable[str], base: Path, origin: str) -> dict[str, Path]:
    """``PATH=DIR`` pairs; relative DIRs are taken from ``base``."""
    mounts = {}
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        mount_path, sep, local = pair.partition("=")
        if not sep or not mount_path.startswith("/") or not local:
            raise LocalRunError(f"{origin}: expected MOUNT_PATH=LOCAL_DIR with an absolute mount path, found {pair!r}")
        mounts[mount_path.rstrip("/") or "/"] = (base / local).resolve()
    return mounts


def plan(job: dict[str, Any], manifest_dir: Path, settings: Settings, *, workdir: Path | None = None,
         mount_flags: Iterable[str] = (), nproc: int | None = None, master_port: int = 29500,
         gpus_visible: int = 0) -> LocalPlan:
    ctx = render.context(job, settings)
    layout = ctx.layout
    workdir = (workdir or Path("runs") / ctx.name).resolve()
    annotation = (job["metadata"].get("annotations") or {}).get(MOUNTS_ANNOTATION, "")
    mounts = parse_mounts(annotation.split(","), manifest_dir, f"metadata.annotations[{MOUNTS_ANNOTATION}]")
    mounts.update(parse_mounts(mount_flags, Path.cwd(), "--mount"))
    checkpoint_path = ctx.spec["checkpoint"]["mountPath"].rstrip("/")
    mounts.setdefault(checkpoint_path, workdir / "checkpoints")
    config_path = workdir / render.CONFIG_FILE
    mounts[render.CONFIG_DIR] = workdir
    for mount in layout.mounts:
        if mount.path.rstrip("/") not in mounts:
            raise LocalRunError(
                f"volume {mount.name!r} (mountPath {mount.path}) has no local folder: "
                f"pass --mount {mount.path}=DIR or set the {MOUNTS_ANNOTATION} annotation")
    warnings: list[str] = []
    procs = _processes(ctx.resources["gpusPerNode"], nproc, gpus_visible, warnings)
    env = _env(layout.env, master_port, procs, warnings)
    command = [_substitute(arg, env) for arg in layout.command]
    command = [_local_path(arg, mounts) if arg == layout.config_path else arg for arg in command]
    command = [f"--nproc_per_node={procs}" if arg.startswith("--nproc_per_node=") else arg for arg in command]
    command = [_program(arg) if arg in ("mft-train", "torchrun") else arg for arg in command]
    command = [_local_requirement(arg, mounts) for arg in command]
    config = _map_paths(layout.config, mounts)
    return LocalPlan(command, env, config, config_path, workdir, mounts, mounts[checkpoint_path], warnings)


def _local_requirement(arg: str, mounts: dict[str, Path]) -> str:
    """The launcher's preflight checks (--require=FIELD=PATH) of the local folders."""
    for flag in ("--require=", "--require-writable="):
        if arg.startswith(flag):
            field, _, path = arg[len(flag):].partition("=")
            return f"{flag}{field}={_local_path(path, mounts)}"
    return arg


def _processes(gpus_per_node: int, nproc: int | None, gpus_visible: int, warnings: list[str]) -> int:
    if nproc:
        return nproc
    if gpus_per_node and gpus_visible >= gpus_per_node:
        return gpus_per_node
    if gpus_per_node:
        warnings.append(f"spec.resources.gpusPerNode is {gpus_per_node} but {gpus_visible} GPUs are visible: "
                        "running one CPU process (use --nproc to change)")
    return 1


def _env(spec_env: list[dict[str, Any]], master_port: int, procs: int, warnings: list[str]) -> dict[str, str]:
    env = {
        "PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": str(procs),
        "PET_MASTER_ADDR": MASTER_ADDR, "PET_MASTER_PORT": str(master_port),
        "MASTER_ADDR": MASTER_ADDR, "MASTER_PORT": str(master_port), "WORLD_SIZE": "1", "RANK": "0",
        "PYTHONUNBUFFERED": "1",
        # This runner draws the progress bar from the trainer's JSON lines.
        "MFT_HUMAN_PROGRESS": "off",
    }
    for var in spec_env:
        if var == render.REQUIRE_CUDA:
            continue  # locally, the runner chooses GPU or CPU processes itself, and says which
        if "value" in var:
            env[var["name"]] = _substitute(str(var["value"]), env)
        elif var["name"] in os.environ:
            env[var["name"]] = os.environ[var["name"]]
        else:
            warnings.append(f"env {var['name']} comes from valueFrom; export {var['name']} to pass it locally")
    return env


def _program(name: str) -> str:
    """A console script on PATH, else beside this Python (an environment that is not activated)."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside) if beside.exists() else None)
    if found is None:
        raise LocalRunError(f"{name} not found on PATH nor in {beside.parent}: install mft-trainer in this environment")
    return found


def _substitute(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion."""
    for name, value in env.items():
        text = text.replace(f"$({name})", value)
    return text


def _local_path(path: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            return str(mounts[mount_path] / path[len(mount_path):].lstrip("/"))
    return path


def _map_paths(value: Any, mounts: dict[str, Path]) -> Any:
    if isinstance(value, dict):
        return {k: _map_paths(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_paths(v, mounts) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return _local_path(value, mounts)
    return value


# ---------------------------------------------------------------- the edge: run and report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((MASTER_ADDR, 0))
        return sock.getsockname()[1]


def visible_gpus() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    result = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU ")) if result.returncode == 0 else 0


def execute(local: LocalPlan, grace_seconds: float, out=sys.stderr) -> int:
    local.workdir.mkdir(parents=True, exist_ok=True)
    local.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    local.config_path.write_text(yamlio.dump(local.config), encoding="utf-8")
    for warning in local.warnings:
        print(f"warning: {warning}", file=out)
    print(f"running: {' '.join(local.command)}", file=out)
    print(f"config:  {local.config_path}", file=out)
    env = {**os.environ, **local.env}
    # Ctrl-C must reach us even when this process inherited SIGINT ignored (started in the
    # background by a non-interactive shell): it is how a user asks for a checkpoint and a stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A session of its own: the terminal's Ctrl-C reaches only us, and we decide how the trainer stops.
    process = subprocess.Popen(local.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True)
    report = ProgressReport(out)
    started = time.monotonic()
    try:
        for line in process.stdout:
            report.feed(line)
    except KeyboardInterrupt:
        print(f"\ninterrupted: asking the trainer to save a checkpoint (up to {grace_seconds:.0f}s; "
              "Ctrl-C again to kill)", file=out)
        # What the kubelet does on preemption: SIGTERM to the pod's first process, the launch supervisor.
        process.send_signal(signal.SIGTERM)
        try:
            for line in process.stdout:
                report.feed(line)
        except KeyboardInterrupt:
            os.killpg(process.pid, signal.SIGKILL)
    code = process.wait()
    report.close()
    report.print_summary(code, time.monotonic() - started, local)
    return code


class ProgressReport:
    """Turns the trainer's JSON lines into a progress bar and a final summary; other lines pass through.
    Written to a log rather than a terminal, the bar becomes a plain line every tenth of the run."""

    def __init__(self, out) -> None:
        self.out = out
        self.live = out.isatty()
        self.bar = None
        self._logged_tenth = -1
        self.last: dict[str, Any] = {}
        self.checkpoint: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}

    def feed(self, line: str) -> None:
        record = _json_record(line)
        kind = record.get("kind") if record else None
        if kind == "mft.progress":
            self._progress(record)
        elif kind == "mft.checkpoint":
            self.checkpoint = record
            self._write(f"checkpoint saved: {record.get('name')}")
        elif kind == "mft.summary":
            self.summary = record
        else:
            self._write(line.rstrip("\n"))

    def _progress(self, record: dict[str, Any]) -> None:
        self.last = record
        step, total = record.get("step", 0), record.get("total_steps") or None
        numbers = {"loss": record.get("loss"), "valid": record.get("valid_loss"), "tok/s": record.get("tokens_per_second")}
        shown = {k: f"{v:.4g}" for k, v in numbers.items() if isinstance(v, (int, float))}
        if not self.live:
            self._log_line(step, total, shown)
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", file=self.out, dynamic_ncols=True)
        self.bar.n = step
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def _log_line(self, step: int, total: int | None, shown: dict[str, str]) -> None:
        tenth = step * 10 // total if total else step
        if tenth == self._logged_tenth:
            return
        self._logged_tenth = tenth
        where = f"{step}/{total} ({100 * step // total}%)" if total else f"{step}"
        print("  ".join([f"step {where}"] + [f"{k} {v}" for k, v in shown.items()]), file=self.out)

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def print_summary(self, code: int, seconds: float, local: LocalPlan) -> None:
        final = {**self.last, **self.summary}
        status = "succeeded" if code == 0 else f"exited with code {code}"
        rows = []
        if "step" in final:
            rows.append(("steps", f"{final.get('step')}/{final.get('total_steps')}"))
        for key, label in (("loss", "final loss"), ("valid_loss", "valid loss")):
            if isinstance(final.get(key), (int, float)):
                rows.append((label, f"{final[key]:.4f}"))
        checkpoint_dir = Path(local.config["checkpoint"]["mount_path"])
        for key in ("latest", "best"):
            name = final.get(key) or self.checkpoint.get(key)
            if name:
                rows.append((f"{key} checkpoint", str(checkpoint_dir / name)))
        rows.append(("output", str(checkpoint_dir)))
        lines = [f"\njob {status} in {seconds:.0f}s"] + [f"  {label + ':':19} {value}" for label, value in rows]
        print("\n".join(lines), file=self.out)


def _json_record(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
