"""The CRD itself: identical copies, documented fields, printer columns, the name limit."""

from __future__ import annotations

from typing import Any, Iterator

from mft_operator import render
from mft_operator.crd import mftjob_crd, mftjob_schema

from .helpers import ROOT, load


def _fields(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _fields(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _fields(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _fields(schema["additionalProperties"], f"{path}{{}}")


def test_package_copy_is_identical_to_the_repository_crd():
    packaged = ROOT / "operator" / "mft_operator" / "crds" / "mftjob.yaml"
    assert packaged.read_bytes() == (ROOT / "crds" / "mftjob.yaml").read_bytes()


def test_every_spec_and_status_field_has_a_description():
    root = mftjob_schema()
    missing = [path for top in ("spec", "status") for path, sub in _fields(root["properties"][top], top)
               if not sub.get("description")]
    assert missing == []


def test_names_and_printer_columns():
    crd = mftjob_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("MFTJob", "mftjobs", ["mft"])
    assert set(names["categories"]) == {"mft", "all"}
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Mode", "Phase", "Progress", "Loss", "Age"]


def test_status_declares_every_field_the_operator_writes():
    status = mftjob_schema()["properties"]["status"]["properties"]
    assert set(status) >= {"phase", "observedGeneration", "conditions", "pytorchJob", "progress", "checkpoints",
                           "restarts", "failure", "startTime", "completionTime"}
    assert set(status["progress"]["properties"]) >= {"step", "totalSteps", "epoch", "loss", "validLoss", "learningRate",
                                                     "tokensPerSecond", "mfu", "eta", "updatedAt", "summary"}
    assert set(status["checkpoints"]["properties"]) == {"latest", "best", "bestValidLoss"}
    assert set(status["failure"]["properties"]) == {"replica", "exitCode", "reason", "message"}


def test_longest_allowed_name_gives_pod_names_within_63_characters():
    rules = mftjob_schema()["x-kubernetes-validations"]
    limit = int(next(r["rule"] for r in rules if "size() <=" in r["rule"]).rsplit("<=", 1)[1])
    max_nodes = mftjob_schema()["properties"]["spec"]["properties"]["resources"]["properties"]["nodes"]["maximum"]
    name = "n" * limit
    longest = [f"{name}-worker-{max_nodes - 2}", f"{name}-master-0",
               render.config_map_name(name), render.checkpoint_claim_name(name)]
    assert max(len(n) for n in longest) <= 63


def test_examples_exercise_every_spec_section():
    sections = set()
    for stem in ("sst", "sft", "lora"):
        sections |= set(load(ROOT / "examples" / f"{stem}.yaml")["spec"])
    assert sections == set(mftjob_schema()["properties"]["spec"]["properties"])
