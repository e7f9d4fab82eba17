"""Paths to the control-plane tools built from Go modules by tests/e2e/cluster/build.sh (cached by version)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "tests" / "e2e" / "cluster" / "build.sh"


def built_tool(component: str, binary: str) -> Path:
    """Builds the component if its cache entry is missing (a no-op when warm) and returns the binary's path.

    Fails with build.sh's message (for example: Go is missing) rather than skipping."""
    subprocess.run(["bash", str(BUILD), component], check=True)
    directory = subprocess.run(
        ["bash", "-c", f'source "{BUILD}" && component_dir {component}'],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    path = Path(directory) / "bin" / binary
    assert path.is_file(), f"{path} missing after building {component}"
    return path
