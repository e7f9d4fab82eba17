"""The README's MFTJob reference is generated from the CRD and must be current."""

from __future__ import annotations

from mft_operator import reference
from mft_operator.crd import mftjob_schema

from .helpers import ROOT


def test_readme_reference_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme == reference.embed(readme), "README.md's MFTJob reference is stale: run `mftctl reference --write README.md`"


def test_reference_documents_every_training_field():
    text = reference.markdown()
    for name, field in mftjob_schema()["properties"]["spec"]["properties"]["training"]["properties"].items():
        assert f"`spec.training.{name}`" in text
        assert field["description"].split()[0] in text
