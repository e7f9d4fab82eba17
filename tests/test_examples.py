"""The examples a user copies: GitOps manifests render and validate, and the Argo CD health check
(real Lua, through lupa) maps MFTJob status to Argo CD health."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lupa import LuaRuntime

from mft_operator import validation, yamlio

ROOT = Path(__file__).resolve().parents[1]
GITOPS = ROOT / "examples" / "gitops"


def test_kustomize_overlay_renders_a_valid_mftjob():
    kubectl = Path(sys.executable).parent / "kubectl"
    out = subprocess.run([kubectl, "kustomize", str(GITOPS / "kustomize" / "overlays" / "team-a")],
                         check=True, capture_output=True, text=True).stdout
    (job,) = yamlio.load_all(out)  # YAML 1.2 numbers: minLr: 2e-5 is a float
    assert validation.validate(job) == []
    assert job["metadata"]["namespace"] == "team-a" and job["spec"]["scheduling"]["queueName"] == "team-a"


def test_gitops_base_is_the_lora_example():
    assert (GITOPS / "kustomize" / "base" / "mftjob-lora.yaml").read_bytes() == (ROOT / "examples" / "lora.yaml").read_bytes()


def test_argocd_application_syncs_server_side():
    app = yaml.safe_load((GITOPS / "argocd-application.yaml").read_text())
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
    assert (ROOT / app["spec"]["source"]["path"]).is_dir()


def health(status: dict | None) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    to_lua = lambda value: lua.table_from(  # noqa: E731 - recursive conversion of plain data
        {k: to_lua(v) for k, v in value.items()} if isinstance(value, dict) else [to_lua(v) for v in value],
    ) if isinstance(value, (dict, list)) else value
    check = lua.eval("function(obj) " + (GITOPS / "argocd-health.lua").read_text() + " end")
    result = check(to_lua({"status": status} if status is not None else {}))
    return result["status"], result["message"]


def condition(kind: str, message: str) -> dict:
    return {"type": kind, "status": "True", "reason": kind, "message": message}


@pytest.mark.parametrize(("status", "expected"), [
    (None, "Progressing"),
    ({"phase": "Running", "conditions": [condition("Running", "training")], "progress": {"summary": "10/100 (10%)"}}, "Progressing"),
    ({"phase": "Succeeded", "conditions": [condition("Running", "x"), condition("Succeeded", "done")]}, "Healthy"),
    ({"phase": "Failed", "conditions": [condition("Failed", "Master-0 exited with code 1")]}, "Degraded"),
    ({"phase": "Suspended", "conditions": [condition("Suspended", "suspended by the user")]}, "Suspended"),
    ({"phase": "Pending", "conditions": [condition("Blocked", "PVC data-pvc not found")]}, "Degraded"),
])
def test_argocd_health_check(status, expected):
    assert health(status)[0] == expected


def test_argocd_health_message_carries_progress_and_failure_reasons():
    assert health({"phase": "Running", "conditions": [], "progress": {"summary": "10/100 (10%)"}})[1] == "Running: step 10/100 (10%)"
    assert health({"conditions": [condition("Failed", "Master-0 exited with code 1")]})[1] == "Master-0 exited with code 1"


def test_readme_embeds_the_argocd_health_check():
    readme = (ROOT / "README.md").read_text()
    assert (GITOPS / "argocd-health.lua").read_text().strip() in readme
