"""The apiserver itself enforces the CRD's schema and CEL rules: with the operator's help or
without it, for ``kubectl apply`` and ``--dry-run=server`` alike, and for updates of a
started job (transition rules)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mft_operator import yamlio
from tests.corpus import invalid_cases

from .support import Cluster, job_manifest, wait_for

pytestmark = pytest.mark.e2e

CORPUS = invalid_cases()
NEW_OBJECTS = [case for case in CORPUS if case.old_doc is None]
UPDATES = [case for case in CORPUS if case.old_doc is not None]


def apiserver_wording(expect: str) -> str:
    """The corpus states messages in ``mftctl validate``'s words; they are the apiserver's, except
    for unknown fields, which strict field validation reports as ``unknown field "<path>"``."""
    unknown = re.fullmatch(r"(\S+): Unknown field.*", expect)
    return f'unknown field "{unknown.group(1)}"' if unknown else expect


def _errors_by_file(output: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    for line in output.splitlines():
        match = re.search(r'error when creating "([^"]+)"', line)
        if match:
            errors[Path(match.group(1)).stem] = line
    return errors


@pytest.fixture(scope="module")
def rejections(cluster: Cluster, chart: dict, request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Every invalid new object of the corpus sent to the apiserver twice: dry run and real apply
    (no operator needed: the rules live in the CRD)."""
    namespace = "e2e-invalid-manifests"
    cluster.kubectl("create", "namespace", namespace)
    request.addfinalizer(lambda: cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False))
    folder = tmp_path_factory.mktemp("corpus")
    for case in NEW_OBJECTS:
        (folder / f"{case.name}.yaml").write_text(yamlio.dump(case.doc))
    found = {}
    for mode, extra in (("dry-run", ["--dry-run=server"]), ("apply", [])):
        result = cluster.kubectl("apply", "-n", namespace, *extra, "-f", str(folder), check=False, timeout=180)
        assert result.returncode != 0
        found[mode] = _errors_by_file(result.stdout + result.stderr)
    created = cluster.kubectl("get", "mftjobs", "-n", namespace, "-o", "name").stdout
    assert created == "", f"the apiserver accepted invalid MFTJobs: {created}"
    return found


@pytest.mark.parametrize("case", NEW_OBJECTS, ids=[case.name for case in NEW_OBJECTS])
@pytest.mark.parametrize("mode", ["dry-run", "apply"])
def test_invalid_manifest_is_rejected_by_the_apiserver(rejections: dict[str, dict[str, str]], mode: str, case):
    """Rejected, naming the field, in the words ``mftctl validate`` uses (tests/corpus). Only where a
    wrong type reaches the apiserver's strict decoder first do the two word it differently (e.g.
    ``unknown field "spec.env.HF_TOKEN"`` for a map given as env), naming the same field."""
    error = rejections[mode].get(case.name)
    assert error is not None, f"{case.name} was not rejected ({mode})"
    assert case.field.split("[")[0] in error, f"{case.name} ({mode}): the message does not name {case.field}: {error}"
    decoded_first = "strict decoding error" in error and "must be of type" in case.expect
    assert decoded_first or apiserver_wording(case.expect) in error, f"{case.name} ({mode}): {error}"


@pytest.mark.parametrize("case", UPDATES, ids=[case.name for case in UPDATES])
def test_change_of_an_immutable_field_is_refused_by_the_apiserver(cluster: Cluster, chart: dict, ns: str, case):
    """The stored object is a started job (status.startTime set through the status subresource)."""
    old = {key: value for key, value in case.old_doc.items() if key != "status"}
    cluster.apply(ns, old)
    cluster.kubectl("patch", "mftjob", old["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": case.old_doc["status"]}))
    refused = cluster.kubectl("apply", "-n", ns, "-f", "-", input=yamlio.dump(case.doc), check=False)
    assert refused.returncode != 0, f"{case.name}: the apiserver accepted the change"
    assert apiserver_wording(case.expect) in refused.stderr, refused.stderr


def test_immutable_training_field_is_refused_after_start(cluster: Cluster, ns: str):
    cluster.apply(ns, job_manifest("fixed", training={"learningRate": 2e-4}))
    wait_for("status.startTime", lambda: cluster.status(ns, "fixed").get("startTime"), 30,
             describe=lambda: cluster.describe(ns))
    for extra in (["--dry-run=server"], []):
        refused = cluster.kubectl("patch", "mftjob", "fixed", "-n", ns, "--type=merge", *extra,
                                  "-p", '{"spec":{"training":{"learningRate":0.001}}}', check=False)
        assert refused.returncode != 0
        assert "spec.training: Invalid value" in refused.stderr
        assert "training is immutable once the job has started" in refused.stderr
    assert cluster.job(ns, "fixed")["spec"]["training"]["learningRate"] == 2e-4
    # Fields documented as changeable while running are accepted.
    cluster.kubectl("patch", "mftjob", "fixed", "-n", ns, "--type=merge",
                    "-p", '{"spec":{"runPolicy":{"activeDeadlineSeconds":7200}}}')
    assert cluster.job(ns, "fixed")["spec"]["runPolicy"]["activeDeadlineSeconds"] == 7200
    wait_for("the deadline on the PyTorchJob",
             lambda: cluster.pytorchjob(ns, "fixed")["spec"]["runPolicy"].get("activeDeadlineSeconds") == 7200, 30,
             describe=lambda: cluster.describe(ns))
