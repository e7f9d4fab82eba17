"""Offline validation of MFTJobs against the CRD itself: the same schema, the same CEL rules,
the same field paths and messages as the apiserver (``kubectl apply`` with strict field
validation)."""

from __future__ import annotations

from typing import Any, Callable

from . import API_GROUP, API_VERSION, KIND, cel, schema
from .crd import mftjob_schema
from .schema import FieldError

API = f"{API_GROUP}/{API_VERSION}"

# The apiserver names an object created with only metadata.generateName <generateName[:58]><5
# random lower-case letters and digits>, then validates it (CEL rules included) under that name.
GENERATED_SUFFIX = "xxxxx"
MAX_GENERATE_NAME = 63 - len(GENERATED_SUFFIX)


def with_defaults(job: dict[str, Any]) -> dict[str, Any]:
    """The MFTJob as the apiserver stores it: schema defaults applied."""
    return schema.apply_defaults(job, mftjob_schema())


def validate(job: Any, old: dict[str, Any] | None = None) -> list[FieldError]:
    """Errors of an MFTJob manifest; ``old`` is the stored object on updates (transition rules)."""
    if not isinstance(job, dict):
        return [FieldError("", "Invalid value", "expected an object", schema.type_name(job))]
    errors = _check_identity(job)
    if errors:
        return errors
    root = mftjob_schema()
    defaulted = with_defaults(_with_generated_name(job))
    old_defaulted = with_defaults(old) if old is not None else None
    return _then_rules(schema.validate(_without_metadata(defaulted), root),
                       lambda: cel.check(defaulted, root, old_defaulted))


def validate_field(path: str, value: Any) -> list[FieldError]:
    """Errors of ``value`` as the value of one field of an MFTJob (``spec.resources.memory``):
    what the apiserver would say if a manifest held it there."""
    node = mftjob_schema()
    for name in path.split("."):
        node = node["properties"][name]
    return _then_rules(schema.validate(value, node, path), lambda: cel.check(value, node, path=path))


def _then_rules(errors: list[FieldError], rules: Callable[[], list[FieldError]]) -> list[FieldError]:
    """Like the apiserver, CEL rules run only when the schema found no shape errors."""
    if any(error.shape for error in errors):
        return errors
    return errors + rules()


def _check_identity(job: dict[str, Any]) -> list[FieldError]:
    errors = []
    if job.get("apiVersion") != API:
        errors.append(FieldError("apiVersion", "Unsupported value", f'supported values: "{API}"', job.get("apiVersion")))
    if job.get("kind") != KIND:
        errors.append(FieldError("kind", "Unsupported value", f'supported values: "{KIND}"', job.get("kind")))
    metadata = job.get("metadata") or {}
    for key in ("name", "generateName"):
        if not isinstance(metadata.get(key, ""), str):
            actual = schema.type_name(metadata[key])
            errors.append(FieldError(f"metadata.{key}", "Invalid value", "expected a string", actual, shape=True))
    if not (metadata.get("name") or metadata.get("generateName")):
        errors.append(FieldError("metadata.name", "Required value", "name or generateName is required"))
    return errors


def _generated_name(generate_name: str) -> str:
    """A name of the shape the apiserver generates from ``generate_name``: the name rules checked
    against it hold for whatever random suffix the apiserver picks."""
    return generate_name[:MAX_GENERATE_NAME] + GENERATED_SUFFIX


def _with_generated_name(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` as the apiserver validates it: named, when it has only a generateName."""
    metadata = job.get("metadata") or {}
    if metadata.get("name"):
        return job
    return {**job, "metadata": {**metadata, "name": _generated_name(metadata["generateName"])}}


def _without_metadata(job: dict[str, Any]) -> dict[str, Any]:
    """The apiserver validates ObjectMeta itself; the CRD schema only constrains the name (via CEL)."""
    return {key: value for key, value in job.items() if key != "metadata"}
