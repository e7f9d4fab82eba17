"""The apiserver itself enforces the CRD's schema and CEL rules: with the operator's help or
without it, for ``kubectl apply`` and ``--dry-run=server`` alike, and for updates of a
started job (transition rules)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .support import ROOT, Cluster, job_manifest, wait_for

pytestmark = pytest.mark.e2e

INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))


def expected_message(path: Path) -> str:
    """The ``# expect:`` line of an invalid example, in the apiserver's words. For unknown
    fields, strict field validation says ``unknown field "<path>"``."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} has no '# expect:' line"
    expect = first.removeprefix("# expect: ")
    unknown = re.fullmatch(r"(\S+): Unknown field", expect)
    return f'unknown field "{unknown.group(1)}"' if unknown else expect


def _errors_by_file(output: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    for line in output.splitlines():
        match = re.search(r'error when creating "([^"]+)"', line)
        if match:
            errors[Path(match.group(1)).name] = line
    return errors


@pytest.fixture(scope="module")
def rejections(cluster: Cluster, chart: dict, request: pytest.FixtureRequest) -> dict[str, dict[str, str]]:
    """Every invalid example sent to the apiserver twice: dry run and real apply (no operator
    needed: the rules live in the CRD)."""
    namespace = "e2e-invalid-manifests"
    cluster.kubectl("create", "namespace", namespace)
    request.addfinalizer(lambda: cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False))
    found = {}
    for mode, extra in (("dry-run", ["--dry-run=server"]), ("apply", [])):
        result = cluster.kubectl("apply", "-n", namespace, *extra, "-f", str(ROOT / "examples" / "invalid"), check=False)
        assert result.returncode != 0
        found[mode] = _errors_by_file(result.stdout + result.stderr)
    created = cluster.kubectl("get", "mftjobs", "-n", namespace, "-o", "name").stdout
    assert created == "", f"the apiserver accepted invalid MFTJobs: {created}"
    return found


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
@pytest.mark.parametrize("mode", ["dry-run", "apply"])
def test_invalid_manifest_is_rejected_by_the_apiserver(rejections: dict[str, dict[str, str]], mode: str, path: Path):
    error = rejections[mode].get(path.name)
    assert error is not None, f"{path.name} was not rejected ({mode})"
    assert expected_message(path) in error, f"{path.name} ({mode}): {error}"


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
