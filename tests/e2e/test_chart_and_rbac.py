"""The chart installs with real Helm, the operator runs as its ServiceAccount with exactly the
RBAC the chart grants, and the CRD documents itself through ``kubectl explain``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from mft_operator import yamlio
from tests.test_readme import CHART_CRDS, README, crd_upgrade_commands

from .conftest import RELEASE, RELEASE_NAMESPACE, SERVICE_ACCOUNT
from .support import ROOT, Cluster, Operator, wait_for

pytestmark = pytest.mark.e2e

SUBJECT = f"system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}"

# Everything the chart's ServiceAccount may do (kubectl auth can-i --list), and nothing more:
# resource -> verbs.
ALLOWED_RESOURCES = {
    "mftjobs.mft.dev": {"get", "list", "watch"},
    "mftjobs.mft.dev/status": {"patch"},
    # blockOwnerDeletion on children, under OwnerReferencesPermissionEnforcement (on in the e2e cluster).
    "mftjobs.mft.dev/finalizers": {"update"},
    "pytorchjobs.kubeflow.org": {"get", "list", "watch", "create", "patch", "delete"},
    "configmaps": {"get", "create", "patch"},
    "persistentvolumeclaims": {"get", "create"},
    "pods": {"list", "watch", "delete"},
    "pods/log": {"get"},
    "events": {"create", "list", "watch"},
    "customresourcedefinitions.apiextensions.k8s.io": {"list", "watch"},
    # Kubernetes' default roles for every authenticated user (system:basic-user).
    "selfsubjectreviews.authentication.k8s.io": {"create"},
    "selfsubjectaccessreviews.authorization.k8s.io": {"create"},
    "selfsubjectrulesreviews.authorization.k8s.io": {"create"},
}
# Kubernetes' default discovery and public-info roles (system:discovery, system:public-info-viewer).
ALLOWED_URLS = {
    "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/",
    "/openapi", "/openapi/*", "/.well-known/openid-configuration", "/.well-known/openid-configuration/",
    "/openid/v1/jwks", "/openid/v1/jwks/",
}


def test_helm_install_creates_crd_rbac_and_service_account(cluster: Cluster, chart: dict):
    assert chart["info"]["status"] == "deployed", chart["info"]
    established = cluster.kubectl("wait", "--for=condition=Established", "crd/mftjobs.mft.dev", "--timeout=30s")
    assert "condition met" in established.stdout
    sa = json.loads(cluster.kubectl("get", "serviceaccount", SERVICE_ACCOUNT, "-n", RELEASE_NAMESPACE,
                                    "-o", "json").stdout)
    assert sa["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    binding = json.loads(cluster.kubectl("get", "clusterrolebinding", RELEASE, "-o", "json").stdout)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": RELEASE_NAMESPACE}]
    deployment = json.loads(cluster.kubectl("get", "deployment", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    # The short name and the category from the CRD work against the real apiserver.
    assert cluster.kubectl("get", "mft", "-A").returncode == 0
    # Two listings a moment apart: jobs of other tests' namespaces may go in between, so ask until they agree.
    wait_for("the short name to list what the plural lists",
             lambda: cluster.kubectl("get", "mft", "-A", "-o", "name").stdout
             == cluster.kubectl("get", "mftjobs", "-A", "-o", "name").stdout, 30)


def test_operator_authenticates_as_the_chart_service_account(cluster: Cluster, operator: Operator):
    kubeconfig = operator.env["KUBECONFIG"]
    whoami = json.loads(cluster.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == SUBJECT
    # A token, not a client certificate: the operator has no other credentials.
    assert "client-certificate" not in open(kubeconfig).read()
    # And RBAC is enforced for it: what the chart does not grant is denied.
    denied = cluster.kubectl("get", "secrets", "-A", kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr


def _can_i_list(cluster: Cluster, namespace: str) -> tuple[dict[str, set[str]], set[str]]:
    out = cluster.kubectl("auth", "can-i", "--list", f"--as={SUBJECT}", "-n", namespace).stdout
    resources: dict[str, set[str]] = {}
    urls: set[str] = set()
    for line in out.splitlines()[1:]:
        match = re.match(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line)
        assert match, f"unexpected line in kubectl auth can-i --list: {line!r}"
        resource, url, names, verbs = match.groups()
        assert not names, f"unexpected resourceNames rule: {line!r}"
        if resource:
            resources.setdefault(resource, set()).update(verbs.split())
        else:
            urls.add(url)
    return resources, urls


def test_service_account_has_exactly_the_allowed_rbac(cluster: Cluster, chart: dict, ns: str):
    for namespace in (ns, RELEASE_NAMESPACE):
        resources, urls = _can_i_list(cluster, namespace)
        assert resources == ALLOWED_RESOURCES, (
            f"in {namespace}: extra {sorted(set(resources) - set(ALLOWED_RESOURCES))}, "
            f"missing {sorted(set(ALLOWED_RESOURCES) - set(resources))}, "
            f"verbs differ {[(r, sorted(v)) for r, v in resources.items() if ALLOWED_RESOURCES.get(r, v) != v]}"
        )
        assert urls == ALLOWED_URLS


def test_namespace_users_manage_or_read_mftjobs_through_the_default_roles(cluster: Cluster, chart: dict, ns: str):
    """The chart's user roles aggregate into Kubernetes' admin, edit and view (the aggregation
    controller of the real kube-controller-manager fills them in)."""
    for user, role in (("alice", "edit"), ("bob", "view")):
        cluster.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}", "-n", ns)

    def can(user: str, verb: str, resource: str) -> bool:
        resource, _, subresource = resource.partition("/")
        answer = cluster.kubectl("auth", "can-i", verb, resource, f"--subresource={subresource}", f"--as={user}",
                                 "-n", ns, check=False)
        return answer.stdout.strip() == "yes"

    wait_for("the edit role to include MFTJobs", lambda: can("alice", "create", "mftjobs.mft.dev"), 30)
    wait_for("the view role to include MFTJobs", lambda: can("bob", "list", "mftjobs.mft.dev"), 30)
    assert can("alice", "delete", "mftjobs.mft.dev") and can("alice", "get", "mftjobs.mft.dev/status")
    assert not can("alice", "patch", "mftjobs.mft.dev/status")  # only the operator writes status
    assert not can("bob", "create", "mftjobs.mft.dev") and can("bob", "watch", "mftjobs.mft.dev")


def _explain_fields(text: str) -> dict[str, str]:
    """FIELDS of ``kubectl explain``: name -> description (whitespace normalised)."""
    fields: dict[str, list[str]] = {}
    current = None
    for line in text.split("FIELDS:", 1)[1].splitlines():
        match = re.match(r"^  (\w+)\t<", line)
        if match:
            current = match.group(1)
            fields[current] = []
        elif current and line.startswith("    "):
            fields[current].append(line.strip())
    return {name: " ".join(words) for name, words in fields.items()}


def test_kubectl_explain_documents_every_training_field(cluster: Cluster, chart: dict):
    from mft_operator.crd import mftjob_schema

    schema = mftjob_schema()["properties"]["spec"]["properties"]["training"]["properties"]
    explained = _explain_fields(cluster.kubectl("explain", "mftjob.spec.training").stdout)
    assert set(explained) == set(schema)
    for name, field in schema.items():
        description = " ".join(field["description"].split())
        assert explained[name] == description, f"spec.training.{name}: {explained[name]!r} != {description!r}"
    # Every section of the spec is documented too.
    spec = _explain_fields(cluster.kubectl("explain", "mftjob.spec").stdout)
    assert all(spec[name] for name in mftjob_schema()["properties"]["spec"]["properties"]), spec


def test_readme_crd_upgrade_command_applies_a_changed_crd_over_helms_fields(cluster: Cluster, chart: dict,
                                                                             tmp_path: Path):
    """The README's upgrade step, run as written against the CRD Helm installed, with the chart's CRD
    changed the way a new release changes it; the original CRD is put back the same way."""
    (command,) = crd_upgrade_commands(README)
    original = ROOT / CHART_CRDS / "mftjob.yaml"
    crd = yamlio.load(original.read_text(encoding="utf-8"))
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] += " Upgraded."
    upgraded = tmp_path / "crds"
    upgraded.mkdir()
    (upgraded / "mftjob.yaml").write_text(yamlio.dump(crd))

    def apply(folder: Path, *args: str):
        argv = [str(folder) if arg == CHART_CRDS else arg for arg in shlex.split(command)[1:]]
        return cluster.kubectl(*[a for a in argv if a not in args], check=False)

    def description() -> str:
        return cluster.kubectl("get", "crd", "mftjobs.mft.dev", "-o",
                               "jsonpath={.spec.versions[0].schema.openAPIV3Schema.description}").stdout

    plain = apply(upgraded, "--force-conflicts")
    assert plain.returncode != 0 and 'conflict with "helm"' in plain.stderr, plain.stdout + plain.stderr
    try:
        result = apply(upgraded)
        assert result.returncode == 0, result.stderr
        assert description().endswith(" Upgraded.")
    finally:
        restored = apply(ROOT / CHART_CRDS)
        assert restored.returncode == 0, restored.stderr
    assert not description().endswith(" Upgraded.")

