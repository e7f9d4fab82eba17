"""The Helm chart: lint, schema-valid rendering against the Kubernetes 1.36 schemas, CRD identity,
least-privilege RBAC shape, and a values table that documents every value."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mft_operator.settings import LOG_LEVELS
from tests.cluster_tools import built_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mft-operator"


@pytest.fixture(scope="module")
def helm() -> Path:
    return built_tool("helm", "helm")


def template(helm: Path, *args: str) -> list[dict]:
    out = subprocess.run([helm, "template", "mft", str(CHART), "-n", "mft-system", *args],
                         check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_chart_crd_is_identical_to_the_top_level_crd():
    assert (CHART / "crds" / "mftjob.yaml").read_bytes() == (ROOT / "crds" / "mftjob.yaml").read_bytes()


def test_helm_lint_strict_is_clean(helm):
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespaces={team-a,team-b}", "--set", "metrics.serviceMonitor.enabled=true"]])
def test_rendered_chart_validates_against_kubernetes_1_36_schemas(helm, tmp_path, values):
    docs = [d for d in template(helm, *values) if d["kind"] != "ServiceMonitor"]
    rendered = tmp_path / "chart.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [Path(sys.executable).parent / "kubernetes-validate", "--strict", "-k", "1.36.0", str(rendered)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_schema_rejects_unknown_and_wrong_values(helm):
    for bad in (["--set", "watchNamespace=x"], ["--set", "logging.format=xml"], ["--set", "metrics.port=0"]):
        result = subprocess.run([helm, "template", "mft", str(CHART), *bad], capture_output=True, text=True)
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr, result.stderr


def operator_roles(docs: list[dict]) -> list[dict]:
    """The (Cluster)Roles bound to the operator's ServiceAccount (not the aggregated user roles)."""
    bound = {(d["roleRef"]["kind"], d["roleRef"]["name"]) for d in docs if d["kind"].endswith("RoleBinding")}
    return [d for d in docs if (d["kind"], d["metadata"]["name"]) in bound]


def test_cluster_wide_install_uses_one_cluster_role(helm):
    docs = template(helm)
    assert [d["kind"] for d in operator_roles(docs)] == ["ClusterRole"] and "Role" not in {d["kind"] for d in docs}


def test_watch_namespaces_gives_namespaced_roles_and_no_cluster_wide_job_rights(helm):
    docs = template(helm, "--set", "watchNamespaces={team-a,team-b}")
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_role = next(d for d in operator_roles(docs) if d["kind"] == "ClusterRole")
    assert {g for rule in cluster_role["rules"] for g in rule["apiGroups"]} == {"apiextensions.k8s.io"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert {"--namespace=team-a", "--namespace=team-b"} <= set(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_rbac_grants_no_wildcards_and_no_secret_access(helm):
    for doc in operator_roles(template(helm)):
        for rule in doc["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "secrets" not in rule["resources"], rule
            assert not {"deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            # Deletes nothing but the pods a restart of one replica leaves running, and a PyTorchJob
            # created from an earlier spec before the job started.
            assert "delete" not in rule["verbs"] or rule["resources"] in (["pods"], ["pytorchjobs"]), rule


def test_namespace_users_get_mftjob_rights_through_the_default_roles(helm):
    """admin and edit manage MFTJobs, view reads them; only the operator writes their status."""
    docs = template(helm)
    operators = {d["metadata"]["name"] for d in operator_roles(docs)}
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] not in operators}
    assert set(roles) == {"mft-mft-operator-edit", "mft-mft-operator-view"}
    edit, view = roles["mft-mft-operator-edit"], roles["mft-mft-operator-view"]
    aggregated = {key for key, value in edit["metadata"]["labels"].items() if value == "true"}
    assert aggregated == {"rbac.authorization.k8s.io/aggregate-to-admin", "rbac.authorization.k8s.io/aggregate-to-edit"}
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    for role in (edit, view):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["mft.dev"] and "*" not in rule["verbs"], rule
            assert "mftjobs/status" not in rule["resources"] or set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    assert not any(d["kind"] == "ClusterRole" and d["metadata"]["name"] in roles
                   for d in template(helm, "--set", "rbac.aggregateToDefaultRoles=false"))


def test_operator_pod_is_locked_down(helm):
    deployment = next(d for d in template(helm) if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    labels = deployment["metadata"]["labels"]
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "helm.sh/chart"):
        assert key in labels


def test_helm_test_hook_exists_and_is_no_endpoint_of_the_operator_service(helm):
    documents = template(helm)
    hooks = [d for d in documents if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(hooks) == 1
    selector = next(d for d in documents if d["kind"] == "Service")["spec"]["selector"]
    assert not selector.items() <= hooks[0]["metadata"]["labels"].items()


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML as strict decoders (kubectl's, kubeconform's) read it: a repeated key is an error."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = {k for k in keys if keys.count(k) > 1}
        assert not repeated, f"repeated keys {sorted(repeated)} at line {node.start_mark.line + 1}"
        return super().construct_mapping(node, deep=deep)


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespaces={a,b}"],
                                    ["--set", r"podLabels.app\.kubernetes\.io/component=controller"]])
def test_rendered_chart_repeats_no_key(helm, values):
    out = subprocess.run([helm, "template", "mft", str(CHART), "-n", "mft-system", *values],
                         check=True, capture_output=True, text=True).stdout
    assert list(yaml.load_all(out, Loader=UniqueKeyLoader))


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        # Free-form maps (resources, labels...) are documented as one row.
        if isinstance(value, dict) and value and path not in ("resources",):
            keys += leaf_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def test_chart_readme_documents_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    for key in leaf_keys(values):
        assert f"`{key}`" in readme, f"charts/mft-operator/README.md: no row for value {key}"
        assert key.split(".")[0] in schema["properties"], f"values.schema.json: no schema for {key}"


def test_values_schema_allows_exactly_the_log_levels_the_operator_accepts():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert tuple(schema["properties"]["logging"]["properties"]["level"]["enum"]) == LOG_LEVELS


def test_job_defaults_reach_the_operator_and_are_checked(helm):
    deployment = next(d for d in template(helm, "--set", "jobDefaults.gpusPerNode=8", "--set", "jobDefaults.memory=64Gi")
                      if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MFT_DEFAULT_GPUS_PER_NODE"], env["MFT_DEFAULT_MEMORY"], env["MFT_DEFAULT_CPU"]) == ("8", "64Gi", "4")
    from mft_operator.settings import from_env

    settings = from_env(env)
    assert (settings.default_gpus_per_node, settings.default_memory, settings.default_shm_size) == (8, "64Gi", "2Gi")
    for bad in ("jobDefaults.memory=lots", "jobDefaults.memory=16K", "jobDefaults.shmSize=2gb", "jobDefaults.cpu=-1",
                "jobDefaults.cpu=0", "jobDefaults.gpusPerNode=65"):
        refused = subprocess.run([helm, "template", "mft", str(CHART), "--set", bad], capture_output=True, text=True)
        assert refused.returncode != 0 and f"/{bad.split('=')[0].replace('.', '/')}" in refused.stderr, bad
    for good in ("jobDefaults.memory=1e9", "jobDefaults.shmSize=512Mi", "jobDefaults.cpu=500m", "jobDefaults.gpusPerNode=64"):
        template(helm, "--set", good)


def test_job_defaults_follow_the_crd():
    """The chart's schema for jobDefaults is the CRD's for the spec.resources fields they fill in."""
    from mft_operator.crd import mftjob_schema

    resources = mftjob_schema()["properties"]["spec"]["properties"]["resources"]["properties"]
    defaults = json.loads((CHART / "values.schema.json").read_text())["properties"]["jobDefaults"]["properties"]
    for name in ("cpu", "memory", "shmSize"):
        assert defaults[name]["pattern"] == resources[name]["pattern"], name
    gpus = resources["gpusPerNode"]
    assert (defaults["gpusPerNode"]["minimum"], defaults["gpusPerNode"]["maximum"]) == (gpus["minimum"], gpus["maximum"])


def test_health_and_metrics_ports_must_differ(helm):
    refused = subprocess.run([helm, "template", "mft", str(CHART), "--set", "healthPort=9090"],
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert "healthPort and metrics.port must differ (both are 9090)" in refused.stderr


def test_pod_labels_never_replace_the_selector_labels(helm):
    for key in ("name", "instance"):
        refused = subprocess.run([helm, "template", "mft", str(CHART), "--set", rf"podLabels.app\.kubernetes\.io/{key}=x"],
                                 capture_output=True, text=True)
        assert refused.returncode != 0 and f"/podLabels/app.kubernetes.io~1{key}" in refused.stderr, refused.stderr
    deployment = next(d for d in template(helm, "--set", "podLabels.team=ml", "--set", r"podLabels.app\.kubernetes\.io/component=c")
                      if d["kind"] == "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert (labels["team"], labels["app.kubernetes.io/component"]) == ("ml", "c")


def umbrella(tmp_path: Path, values: dict) -> Path:
    """A parent chart with this chart as a dependency (as in an umbrella chart or an Argo CD app of apps)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    parent = tmp_path / "platform"
    shutil.copytree(CHART, parent / "charts" / chart["name"])
    dependency = {"name": chart["name"], "version": chart["version"], "condition": f"{chart['name']}.enabled"}
    (parent / "Chart.yaml").write_text(yaml.safe_dump({"apiVersion": "v2", "name": "platform", "version": "1.0.0",
                                                       "dependencies": [dependency]}))
    (parent / "values.yaml").write_text(yaml.safe_dump(values))
    return parent


@pytest.mark.parametrize("values", [{}, {"global": {"imageRegistry": "registry.example.com"},
                                         "mft-operator": {"enabled": True, "jobDefaults": {"gpusPerNode": 8}}}])
def test_chart_renders_as_a_dependency_of_a_parent_chart(helm, tmp_path, values):
    """Helm passes `global` to every subchart, and a condition adds `enabled`: the schema must allow both."""
    result = subprocess.run([helm, "template", "platform", str(umbrella(tmp_path, values)), "-n", "mft-system"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "Deployment" in kinds and "ClusterRole" in kinds


def test_a_parent_chart_can_leave_the_operator_out(helm, tmp_path):
    parent = umbrella(tmp_path, {"mft-operator": {"enabled": False}})
    result = subprocess.run([helm, "template", "platform", str(parent)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "kind: Deployment" not in result.stdout


def test_the_schema_still_checks_values_set_through_a_parent_chart(helm, tmp_path):
    parent = umbrella(tmp_path, {"mft-operator": {"enabled": "yes", "watchNamespace": "x"}})
    result = subprocess.run([helm, "template", "platform", str(parent)], capture_output=True, text=True)
    assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr
