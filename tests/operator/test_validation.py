"""Offline validation says what the apiserver says (messages checked against kube-apiserver
1.36 with this CRD): examples pass, every invalid example fails with its expected line."""

from __future__ import annotations

import copy

import celpy
import pytest

from mft_operator import cel, schema, validation, yamlio

from .helpers import EXAMPLES, INVALID, load


def _expected(path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <field path>: <message>'"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    assert [str(e) for e in validation.validate(load(path))] == []


def test_there_are_enough_invalid_cases():
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_fail_with_the_expected_field_path_and_message(path):
    errors = [str(e) for e in validation.validate(load(path))]
    expected = _expected(path)
    assert any(e.startswith(expected) for e in errors), f"expected {expected!r}, got {errors}"


def test_yaml_numbers_without_a_dot_are_numbers():
    doc = yamlio.load("learningRate: 2e-4\nminLr: 1E-6\nseed: 42\nname: '2e-4'\n")
    assert doc == {"learningRate": 2e-4, "minLr": 1e-6, "seed": 42, "name": "2e-4"}


def test_strings_that_read_as_numbers_are_written_quoted():
    doc = {"name": "1e5", "lr": "2e-4", "nan": ".nan", "seed": "42", "rate": 2e-4, "text": "a\nb"}
    text = yamlio.dump(doc)
    assert "name: '1e5'" in text and "lr: '2e-4'" in text
    assert yamlio.load(text) == doc


def _lora():
    return load(EXAMPLES[0].parent / "lora.yaml")


def test_defaults_are_applied_like_the_apiserver():
    job = validation.with_defaults({"apiVersion": "mft.dev/v1alpha1", "kind": "MFTJob", "metadata": {"name": "x"},
                                    "spec": {"mode": "sft", "model": {"path": "/m"}, "data": {"paths": ["/d"]}}})
    spec = job["spec"]
    assert spec["training"]["learningRate"] == 1e-4 and spec["training"]["evaluationStrategy"] == ["steps", "epoch"]
    assert spec["checkpoint"]["mountPath"] == "/checkpoints" and spec["resources"]["nodes"] == 1
    assert spec["model"]["type"] == "gpt_neox" and "lora" not in spec
    assert isinstance(validation.with_defaults({**job, "spec": {**spec, "training": {"minLr": 0}}})["spec"]["training"]["minLr"], float)


def _started(job):
    return {**copy.deepcopy(job), "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}}


def test_training_fields_are_immutable_once_started():
    old = _started(_lora())
    new = copy.deepcopy(old)
    new["spec"]["training"]["epochs"] = 5
    new["spec"]["lora"]["r"] = 8
    errors = [str(e) for e in validation.validate(new, old=old)]
    assert errors == ["spec.training: Invalid value: training is immutable once the job has started",
                      "spec.lora: Invalid value: lora is immutable once the job has started"]


def test_run_policy_may_change_once_started_and_anything_before():
    old = _started(_lora())
    new = copy.deepcopy(old)
    new["spec"]["runPolicy"].update(suspend=True, activeDeadlineSeconds=10, ttlSecondsAfterFinished=5)
    assert validation.validate(new, old=old) == []
    not_started = copy.deepcopy(_lora())
    changed = copy.deepcopy(not_started)
    changed["spec"]["training"]["epochs"] = 5
    assert validation.validate(changed, old=not_started) == []


def test_wrong_kind_and_missing_name():
    errors = [str(e) for e in validation.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {}})]
    assert errors == ['apiVersion: Unsupported value: "v1": supported values: "mft.dev/v1alpha1"',
                      'kind: Unsupported value: "Pod": supported values: "MFTJob"',
                      "metadata.name: Required value: name or generateName is required"]


def test_schema_walker_reports_like_the_apiserver():
    # Expected lines as kube-apiserver 1.36 printed them for the same object.
    job = _lora()
    spec = job["spec"]
    spec["image"] = "x" * 600
    spec["training"]["evaluationStrategy"] = ["steps", "steps", "epoch", "epoch"]
    spec["training"]["seqLength"] = 2.0  # an integral number is an integer
    spec["resources"]["nodeSelector"] = {"a": 1}
    spec["volumes"].append({"name": "models", "claimName": "y", "mountPath": "/b"})
    spec["data"]["paths"] = [""]
    errors = [str(e) for e in validation.validate(job)]
    assert set(errors) == {
        "spec.image: Too long: may not be more than 512 bytes",
        'spec.training.evaluationStrategy: Too many: 4: must have at most 3 items',
        'spec.training.evaluationStrategy[1]: Duplicate value: "steps"',
        'spec.training.evaluationStrategy[3]: Duplicate value: "epoch"',
        'spec.resources.nodeSelector.a: Invalid value: "integer": spec.resources.nodeSelector.a in body must be of type string: "integer"',
        'spec.volumes[2]: Duplicate value: {"name":"models"}',
        'spec.data.paths[0]: Invalid value: "": spec.data.paths[0] in body should be at least 1 chars long',
    }


def test_scalar_rules_and_string_checks_report_like_the_apiserver():
    """A rule on a scalar prints its value (never one on an object or a list), and a string reports only
    the first of maxLength, minLength and pattern it fails. Lines as kube-apiserver 1.36 printed them."""
    job = _lora()
    spec = job["spec"]
    spec["checkpoint"]["mountPath"] = "/etc/mft"
    spec["imagePullSecrets"] = [{"name": ""}]
    spec["resources"].update(memory="0Gi", cpu=0)
    spec["podMetadata"]["labels"]["n" * 64] = "x"
    errors = [str(e) for e in validation.validate(job)]
    assert set(errors) == {
        'spec.checkpoint.mountPath: Invalid value: "/etc/mft": /etc/mft and /dev/shm are reserved for the operator',
        'spec.imagePullSecrets[0].name: Invalid value: "": spec.imagePullSecrets[0].name in body should be at least 1 chars long',
        'spec.resources.memory: Invalid value: "0Gi": must be greater than 0',
        "spec.resources.cpu: Invalid value: 0: spec.resources.cpu in body should be greater than or equal to 1",
        "spec.podMetadata.labels: Invalid value: keys must be qualified names: an optional DNS subdomain prefix of at "
        "most 253 characters and '/', then a name of at most 63 characters (letters, digits, '-', '_' and '.', "
        "starting and ending with a letter or digit)",
    }


def test_one_field_is_checked_by_the_crds_schema_and_rules():
    assert validation.validate_field("spec.resources.shmSize", "64Gi") == []
    assert [str(e) for e in validation.validate_field("spec.resources.shmSize", "0")] == [
        'spec.resources.shmSize: Invalid value: "0": must be greater than 0']
    assert [e.kind for e in validation.validate_field("spec.resources.gpusPerNode", "8")] == ["Invalid value"]


def test_int_or_string_quantities():
    crd_quantity = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True,
                    "pattern": "^[0-9]+(Gi)?$"}
    assert schema.validate(32, crd_quantity) == [] and schema.validate("32Gi", crd_quantity) == []
    assert [str(e) for e in schema.validate(1.5, crd_quantity, "spec.cpu")] == [
        'spec.cpu: Invalid value: "number": spec.cpu in body must be of type integer,string: "number"']


def test_unknown_field_suggests_the_declared_one():
    job = _lora()
    job["spec"]["training"]["learningrate"] = job["spec"]["training"].pop("learningRate")
    (error,) = validation.validate(job)
    assert str(error) == 'spec.training.learningrate: Unknown field: field not declared in schema (did you mean "learningRate"?)'


def _named(metadata):
    return {**_lora(), "metadata": metadata}


def test_generate_name_is_checked_as_the_name_the_apiserver_generates():
    """The apiserver appends 5 random characters to generateName (cut to 58) and validates that name."""
    assert validation.validate(_named({"generateName": "nightly-lora-"})) == []
    assert validation.validate(_named({"generateName": "n" * 45})) == []  # a 50-character name
    too_long = "metadata.name: Invalid value: must be no more than 50 characters"
    assert [str(e) for e in validation.validate(_named({"generateName": "n" * 46}))] == [
        too_long + ", so that pod and service names like <name>-worker-<index> stay within 63"]
    assert [str(e).split(",")[0] for e in validation.validate(_named({"generateName": "n" * 58 + "_"}))] == [too_long]
    assert [e.path for e in validation.validate(_named({"generateName": "Nightly-"}))] == ["metadata.name"]


def test_name_wins_over_generate_name_which_must_be_a_string():
    assert validation.validate(_named({"name": "x", "generateName": "n" * 80})) == []
    assert [str(e) for e in validation.validate(_named({"generateName": 7}))] == [
        'metadata.generateName: Invalid value: "integer": expected a string']


def test_integral_floats_of_integer_fields_are_stored_as_ints():
    """Like the apiserver, which stores gpusPerNode: 8.0 as 8; number fields stay floats."""
    job = _lora()
    job["spec"]["resources"].update(gpusPerNode=8.0, nodes=2.0, cpu=16.0)
    job["spec"]["training"].update(seqLength=2048.0, learningRate=1)
    job["spec"]["model"]["config"] = {"hidden_size": 64.0, "layer_norm_eps": 1e-5, "rope": [1.0, 0.5]}
    assert validation.validate(job) == []
    spec = validation.with_defaults(job)["spec"]
    values = [spec["resources"][k] for k in ("gpusPerNode", "nodes", "cpu")] + [spec["training"]["seqLength"]]
    assert values == [8, 2, 16, 2048] and all(type(v) is int for v in values)
    assert type(spec["training"]["learningRate"]) is float
    assert spec["model"]["config"] == {"hidden_size": 64, "layer_norm_eps": 1e-5, "rope": [1, 0.5]}
    assert type(spec["model"]["config"]["hidden_size"]) is int


def test_a_float_in_a_string_field_is_reported_as_a_number():
    job = _lora()
    job["spec"]["image"] = 2.0
    assert [str(e) for e in validation.validate(job)] == [
        'spec.image: Invalid value: "number": spec.image in body must be of type string: "number"']


@pytest.mark.parametrize(("section", "value"), [
    ("tolerations", [{"operator": "Exists"}, {"key": "", "operator": "Exists"},
                     {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                     {"key": "pool", "operator": "Equal", "value": "a100"}]),
    ("env", [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "registry.creds", "key": ".dockerconfigjson"}}},
             {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a..b_C-1"}}},
             {"name": "C", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}]),
    ("checkpoint", {"create": {"size": "10Gi", "storageClassName": ""}}),
    ("checkpoint", {"create": {"size": "10Gi", "storageClassName": "fast-ssd.example.com"}}),
    ("scheduling", {"schedulerName": "volcano"}),
    ("affinity", {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]},
                                      {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["40000"]},
                                      {"key": "spot", "operator": "DoesNotExist"}]},
                {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["gpu-node-7.example"]}]},
                {}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [{"key": "pool", "operator": "Exists"}]}}]},
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {
            "topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "cache"}},
            "namespaces": ["data"], "namespaceSelector": {}}}]},
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
            "topologyKey": "kubernetes.io/hostname", "matchLabelKeys": ["mft.dev/job"],
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a", "b"]}]}}]}}),
    ("data", {"paths": ["/data/chat", "/data/x/code", "/data/y/code-review", "/data/ünï/cödé", "/cöde"]}),
])
def test_values_kubernetes_accepts_in_pods_and_claims_are_accepted(section, value):
    job = _lora()
    if section in ("tolerations", "affinity"):
        job["spec"]["resources"][section] = value
    else:
        job["spec"][section] = value
    assert [str(e) for e in validation.validate(job)] == []


def test_device_variables_that_do_not_choose_gpus_are_allowed():
    """NVIDIA_VISIBLE_DEVICES is reserved (tests/corpus); CUDA_VISIBLE_DEVICES only narrows the GPUs a
    pod was given, and NVIDIA_DRIVER_CAPABILITIES picks the driver libraries, not the devices."""
    job = _lora()
    job["spec"]["env"] = [{"name": "CUDA_VISIBLE_DEVICES", "value": "0"},
                          {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"}]
    assert [str(e) for e in validation.validate(job)] == []


def test_the_strings_extension_works_as_in_kubernetes():
    """cel-python lacks the strings extension the apiserver's CEL has: the functions the CRD uses,
    registered in cel.py, count code points and fail where cel-go fails."""
    def run(expression):
        return cel._program(expression).evaluate({})
    assert run("'/data/ünï/cödé'.lastIndexOf('/')") == 9
    assert run("'/data/ünï/cödé'.substring(10)") == "cödé"
    assert run("'héllo'.substring(1, 3)") == "él"
    assert [run(e) for e in ("'abc'.lastIndexOf('/')", "'abc'.lastIndexOf('')", "'hello'.lastIndexOf('l', 2)",
                             "'hello'.lastIndexOf('l', 1)", "'a'.lastIndexOf('abc')")] == [-1, 3, 2, -1, -1]
    for expression, message in (("'abc'.substring(4)", "index out of range: 4"),
                                ("'abc'.substring(2, 1)", "invalid substring range. start: 2, end: 1"),
                                ("'abc'.lastIndexOf('a', -1)", "index out of range: -1")):
        with pytest.raises(celpy.CELEvalError) as error:
            run(expression)
        assert error.value.args[0] == message
