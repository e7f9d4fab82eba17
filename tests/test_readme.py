"""The README's commands work as written: every command in it that needs no cluster, no GPU and no
Docker engine is run here (the demo's are run by `make demo`, the cluster's by the e2e suite), and a
`console` block's shown output must match."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CHART_README = (ROOT / "charts" / "mft-operator" / "README.md").read_text(encoding="utf-8")
CHART_CRDS = "charts/mft-operator/crds/"
# Programs whose README commands run offline on any machine.
RUNNABLE = ("mftctl validate", "mftctl render", "mftctl reference", "mft-train tokenize")


def blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def crd_upgrade_commands(text: str) -> list[str]:
    """The commands of ``text``'s bash blocks that apply the chart's CRD (the upgrade step)."""
    return [line.strip() for block in blocks("bash", text) for line in block.splitlines()
            if line.startswith("kubectl apply") and CHART_CRDS in line]


def runnable_bash_commands() -> list[str]:
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(RUNNABLE):
                commands.append(line)
    return commands


def console_examples() -> list[tuple[str, str]]:
    examples = []
    for block in blocks("console"):
        for chunk in block.split("$ ")[1:]:
            command, _, output = chunk.partition("\n")
            command = command.split(" #")[0].strip()
            if command.startswith(RUNNABLE):
                examples.append((command, output.strip()))
    return examples


def run(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_readme_has_runnable_commands():
    assert len(runnable_bash_commands()) >= 1 and len(console_examples()) >= 2


@pytest.mark.parametrize("command", runnable_bash_commands())
def test_readme_bash_command_runs(command):
    result = run(command)
    assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), command


@pytest.mark.parametrize(("command", "expected"), console_examples())
def test_readme_console_example_prints_what_the_readme_shows(command, expected):
    result = run(command)
    shown = (result.stdout + result.stderr).strip()
    if "validate" in shlex.split(command)[1:2] and "invalid" in command:
        assert result.returncode == 1
    else:
        assert result.returncode == 0, result.stderr[-2000:]
    if expected:
        assert shown == expected


def test_both_readmes_upgrade_the_crd_over_the_fields_helm_owns():
    """Helm creates the CRD, so its field manager owns the fields: a plain server-side apply of a changed
    CRD fails with a conflict (tests/e2e/test_chart_and_rbac.py runs the README's command against a CRD
    Helm installed). tests/e2e/cluster/up.sh applies its CRDs the same way."""
    expected = f"kubectl apply --server-side --force-conflicts -f {CHART_CRDS}"
    assert crd_upgrade_commands(README) == [expected]
    assert crd_upgrade_commands(CHART_README) == [expected]
    up = (ROOT / "tests" / "e2e" / "cluster" / "up.sh").read_text(encoding="utf-8")
    server_side = [line for line in up.splitlines() if "apply --server-side" in line]
    assert server_side and all("--force-conflicts" in line for line in server_side)

