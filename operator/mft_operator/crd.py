"""The MFTJob CRD shipped as package data (identical to the repository's ``crds/mftjob.yaml``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

from . import API_VERSION, yamlio


@lru_cache(maxsize=1)
def mftjob_crd() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("crds/mftjob.yaml").read_text(encoding="utf-8")
    return yamlio.load(text)


def openapi_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one served version of a CRD."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def mftjob_schema() -> dict[str, Any]:
    return openapi_schema(mftjob_crd(), API_VERSION)
