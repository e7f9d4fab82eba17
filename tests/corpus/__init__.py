"""Corpus of invalid MFTJob manifests, shared by the offline checks (tests/corpus) and by runs
against a real apiserver.

Each case is ``invalid/<case>.yaml``, starting with comment lines:

    # expect: <a substring of the rejection message, in the apiserver's wording>
    # field: <the field path the message names>

Updates of a started job (immutable fields) come in pairs: ``<case>.old.yaml`` is the stored
object (with ``status.startTime``), ``<case>.yaml`` the update that must be rejected. Create the
old object first, set its status, then apply the new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from mft_operator import yamlio

INVALID = Path(__file__).resolve().parent / "invalid"


class Case(NamedTuple):
    name: str
    doc: dict[str, Any]
    old_doc: dict[str, Any] | None
    expect: str
    field: str


def comment(path: Path, key: str) -> str:
    """The value of the leading ``# key: value`` comment line of ``path``."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(f"# {key}: "):
            return line.removeprefix(f"# {key}: ").strip()
    raise ValueError(f"{path}: no '# {key}: ...' line at the top")


def load(path: Path) -> dict[str, Any]:
    (doc,) = yamlio.load_all(path.read_text(encoding="utf-8"))
    return doc


def invalid_cases() -> list[Case]:
    """Every case, sorted by name: (name, doc, old_doc_or_None, expect, field)."""
    cases = []
    for path in sorted(INVALID.glob("*.yaml")):
        if path.name.endswith(".old.yaml"):
            continue
        name = path.name.removesuffix(".yaml")
        old = INVALID / f"{name}.old.yaml"
        cases.append(Case(name, load(path), load(old) if old.exists() else None,
                          comment(path, "expect"), comment(path, "field")))
    return cases
