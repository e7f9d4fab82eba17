"""Shared paths and loaders of the operator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mft_operator import yamlio

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_INPUTS = sorted((GOLDEN / "inputs").glob("*.yaml"))
EXAMPLE_UID = "00000000-0000-0000-0000-00000000000"


def load(path: Path) -> dict[str, Any]:
    (doc,) = yamlio.load_all(path.read_text(encoding="utf-8"))
    return doc


def render_inputs() -> list[tuple[str, dict[str, Any]]]:
    """Every renderer input: the GPU examples (given a namespace and uid, as the apiserver
    would) and the golden-only cases."""
    cases = []
    for index, path in enumerate(EXAMPLES, start=1):
        job = load(path)
        job["metadata"].update(namespace="ml-team", uid=f"{EXAMPLE_UID}{index}", generation=1)
        cases.append((f"example-{path.stem}", job))
    cases += [(path.stem, load(path)) for path in GOLDEN_INPUTS]
    return cases
