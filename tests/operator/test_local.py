"""`mftctl run --local`: the plan is the rendered launch, mapped onto this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mft_operator import local
from mft_operator.settings import Settings

from .helpers import ROOT, load


def lora_plan(tmp_path: Path, *, env: list[dict] | None = None, **kwargs) -> local.LocalPlan:
    job = load(ROOT / "examples" / "lora.yaml")
    job["spec"].setdefault("env", []).extend(env or [])
    mounts = [f"/models={tmp_path / 'models'}", f"/data={tmp_path / 'data'}"]
    return local.plan(job, ROOT / "examples", Settings(), workdir=tmp_path / "run",
                      mount_flags=kwargs.pop("mount_flags", mounts), master_port=29555, **kwargs)


def test_plan_maps_every_mount_path_in_the_trainer_config_to_a_local_folder(tmp_path):
    plan = lora_plan(tmp_path)
    assert plan.config["model"]["path"] == str(tmp_path / "models" / "pythia-1b")
    assert plan.config["data"]["paths"] == [str(tmp_path / "data" / "code-helper"), str(tmp_path / "data" / "code-exam")]
    # The checkpoint volume defaults to a folder under the run's workdir.
    assert plan.config["checkpoint"]["mount_path"] == str(tmp_path / "run" / "checkpoints")
    assert plan.config_path == tmp_path / "run" / "config.yaml"


def test_plan_runs_the_rendered_torchrun_command_with_the_kubeflow_env_of_one_node(tmp_path):
    plan = lora_plan(tmp_path)
    command = plan.command
    separator = command.index("--")
    assert [Path(command[0]).name, *command[1:3]] == ["mft-train", "launch", "--grace-seconds=180"]
    # The launcher's preflight checks the local folders the mount paths map to.
    assert command[3:separator] == [
        f"--require=data.paths={tmp_path / 'data' / 'code-helper'}",
        f"--require=data.paths={tmp_path / 'data' / 'code-exam'}",
        f"--require=model.path={tmp_path / 'models' / 'pythia-1b'}",
        f"--require-writable=checkpoint.mountPath={tmp_path / 'run' / 'checkpoints'}",
    ]
    assert Path(command[separator + 1]).name == "torchrun"
    assert command[separator + 2:] == [
        "--nnodes=1", "--nproc_per_node=1", "--node_rank=0", "--master_addr=127.0.0.1",
        "--master_port=29555", "--rdzv_conf=timeout=1980", "-m", "mft_trainer", "train",
        "--config", str(tmp_path / "run" / "config.yaml"),
    ]
    assert plan.env["WORLD_SIZE"] == "1" and plan.env["RANK"] == "0" and plan.env["MASTER_PORT"] == "29555"
    assert plan.env["NCCL_DEBUG"] == "WARN"


def test_plan_falls_back_to_cpu_processes_and_says_so_when_the_gpus_are_missing(tmp_path):
    assert any("gpusPerNode is 8 but 0 GPUs" in w for w in lora_plan(tmp_path).warnings)
    assert "--nproc_per_node=2" in lora_plan(tmp_path, nproc=2).command
    assert "--nproc_per_node=8" in lora_plan(tmp_path, gpus_visible=8).command


def test_secret_env_is_never_resolved_and_the_user_is_told_how_to_pass_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    plan = lora_plan(tmp_path, env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}])
    assert "HF_TOKEN" not in plan.env
    assert any("export HF_TOKEN" in w for w in plan.warnings)


def test_unmapped_volume_is_a_clear_error(tmp_path):
    with pytest.raises(local.LocalRunError, match=r"volume 'models' \(mountPath /models\) has no local folder: pass --mount /models=DIR"):
        lora_plan(tmp_path, mount_flags=[f"/data={tmp_path}"])


def test_mount_annotation_is_relative_to_the_manifest(tmp_path):
    job = load(ROOT / "examples" / "lora.yaml")
    job["metadata"]["annotations"] = {local.MOUNTS_ANNOTATION: "/models=m, /data=d"}
    plan = local.plan(job, tmp_path, Settings(), workdir=tmp_path / "run")
    assert plan.mounts["/models"] == tmp_path / "m" and plan.mounts["/data"] == tmp_path / "d"


@pytest.mark.parametrize("pair", ["models=/x", "/models", "/models="])
def test_malformed_mount_is_a_clear_error(pair, tmp_path):
    with pytest.raises(local.LocalRunError, match="expected MOUNT_PATH=LOCAL_DIR"):
        local.parse_mounts([pair], tmp_path, "--mount")


def test_progress_report_turns_json_lines_into_a_summary(capsys, tmp_path):
    import io

    out = io.StringIO()
    report = local.ProgressReport(out)
    report.feed('{"kind": "mft.progress", "step": 5, "total_steps": 10, "loss": 1.5}\n')
    report.feed("a plain line\n")
    report.feed('{"kind": "mft.checkpoint", "name": "checkpoint-10", "latest": "checkpoint-10", "best": "checkpoint-5"}\n')
    report.feed('{"kind": "mft.progress", "step": 10, "total_steps": 10, "loss": 0.5}\n')
    report.close()
    report.print_summary(0, 3.0, lora_plan(tmp_path))
    text = out.getvalue()
    assert "a plain line" in text and "checkpoint saved: checkpoint-10" in text
    assert "steps:              10/10" in text and "final loss:         0.5000" in text
    assert str(tmp_path / "run" / "checkpoints" / "checkpoint-5") in text


def test_progress_in_a_log_is_a_plain_line_every_tenth_of_the_run():
    import io

    out = io.StringIO()  # not a terminal: no bar redrawn with carriage returns
    report = local.ProgressReport(out)
    for step in range(1, 101):
        report.feed(json.dumps({"kind": "mft.progress", "step": step, "total_steps": 100, "loss": 1 / step}) + "\n")
    report.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 11  # the first report, then each tenth
    assert lines[0] == "step 1/100 (1%)  loss 1" and lines[1] == "step 10/100 (10%)  loss 0.1"
    assert lines[-1] == "step 100/100 (100%)  loss 0.01"


def test_a_local_gpu_job_may_fall_back_to_the_cpu(tmp_path):
    """In the cluster a GPU job requires CUDA; locally the runner picks CPU processes and warns."""
    plan = lora_plan(tmp_path, gpus_visible=0)
    assert "MFT_REQUIRE_CUDA" not in plan.env
    assert any("running one CPU process" in w for w in plan.warnings)
