"""A walker over structural OpenAPI v3 schemas (CRD ``openAPIV3Schema``).

It applies defaults and checks what the apiserver checks before CEL rules run (types,
required fields, enums, bounds, lengths, patterns, unknown fields, list uniqueness), with the
apiserver's field paths and wording, so offline validation reads like ``kubectl apply``.
Used for MFTJobs (against our CRD) and, in tests, for rendered PyTorchJobs (against
Kubeflow's CRD).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

Schema = dict[str, Any]

# The value of an error that prints none (a missing field, a rule on an object or a list).
NO_VALUE = object()


@dataclass(frozen=True)
class FieldError:
    """One validation error, printed like the apiserver's field errors."""

    path: str
    kind: str
    detail: str = ""
    value: Any = NO_VALUE
    # A wrong type, a missing field, a value outside an enum or over a size limit: the
    # apiserver then skips CEL rules, which were type-checked against the schema's shape.
    shape: bool = False

    def __str__(self) -> str:
        parts = [self.path or "<nil>", self.kind]
        if self.value is not NO_VALUE:
            parts.append(go_repr(self.value))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)


def go_repr(value: Any) -> str:
    """A value the way apiserver messages print it (strings quoted, numbers bare)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _is_int_or_string(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string"))


def _accepts(schema_type: str, value: Any) -> bool:
    actual = type_name(value)
    if schema_type == "number":
        return actual in ("integer", "number")
    if schema_type == "integer":
        return actual == "integer" or (actual == "number" and float(value).is_integer())
    return actual == schema_type


# ---------------------------------------------------------------- defaults


def apply_defaults(value: Any, schema: Schema) -> Any:
    """A copy of ``value`` with schema defaults filled in, the apiserver's way.

    Nulls of non-nullable fields count as absent (the apiserver prunes them). Values of
    ``type: number`` fields become floats: JSON does not keep ``2`` and ``2.0`` apart, and
    the apiserver's CEL types them as doubles. Any other integral float (``gpusPerNode: 8.0``,
    a ``hidden_size: 64.0`` in schemaless ``model.config``) becomes an int, as the apiserver
    stores it (its JSON encoder writes ``8``), so rendered configs and pods read the same.
    """
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        present = {}
        for key, item in value.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if item is None and not (sub or {}).get("nullable"):
                continue
            present[key] = apply_defaults(item, sub) if sub else _stored(item)
        for key, sub in props.items():
            if key not in present and "default" in sub:
                present[key] = apply_defaults(copy.deepcopy(sub["default"]), sub)
        # Schema order, then undeclared keys: stable, readable output.
        ordered = {key: present[key] for key in props if key in present}
        return ordered | {key: item for key, item in present.items() if key not in ordered}
    if isinstance(value, list):
        items = schema.get("items")
        return [apply_defaults(item, items) if items else _stored(item) for item in value]
    if schema.get("type") == "number" and type_name(value) == "integer":
        return float(value)
    if schema.get("type") in ("integer", None):  # integer, int-or-string (no type) or schemaless
        return _stored(value)
    return value  # a float in a string or boolean field stays one: its type error names "number"


def _stored(value: Any) -> Any:
    """A copy of ``value`` with its integral floats written as ints, as the apiserver stores them."""
    if isinstance(value, dict):
        return {key: _stored(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stored(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# ---------------------------------------------------------------- validation


def validate(value: Any, schema: Schema, path: str = "") -> list[FieldError]:
    """Schema errors of ``value`` (defaults already applied), in document order."""
    errors: list[FieldError] = []
    _validate(value, schema, path, errors)
    return errors


def _validate(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
    if not _check_type(value, schema, path, errors):
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(go_repr(v) for v in schema["enum"])
        errors.append(FieldError(path, "Unsupported value", f"supported values: {supported}", value, shape=True))
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        _check_number(value, schema, path, errors)
    elif isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors)
    elif isinstance(value, dict):
        _check_object(value, schema, path, errors)


def _check_type(value: Any, schema: Schema, path: str, errors: list[FieldError]) -> bool:
    if value is None:
        return bool(schema.get("nullable"))
    if _is_int_or_string(schema):
        expected = ["integer", "string"]
    elif "type" in schema:
        expected = [schema["type"]]
    else:
        return True  # schemaless (x-kubernetes-preserve-unknown-fields) value
    if any(_accepts(t, value) for t in expected):
        return True
    actual = type_name(value)
    detail = f"{path} in body must be of type {','.join(expected)}: {go_repr(actual)}"
    errors.append(FieldError(path, "Invalid value", detail, actual, shape=True))
    return False


def _check_number(value: float, schema: Schema, path: str, errors: list[FieldError]) -> None:
    if "minimum" in schema:
        low, exclusive = schema["minimum"], schema.get("exclusiveMinimum", False)
        if value < low or (exclusive and value == low):
            words = "greater than" if exclusive else "greater than or equal to"
            errors.append(FieldError(path, "Invalid value", f"{path} in body should be {words} {go_repr(low)}", value))
    if "maximum" in schema:
        high, exclusive = schema["maximum"], schema.get("exclusiveMaximum", False)
        if value > high or (exclusive and value == high):
            words = "less than" if exclusive else "less than or equal to"
            errors.append(FieldError(path, "Invalid value", f"{path} in body should be {words} {go_repr(high)}", value))


def _check_string(value: str, schema: Schema, path: str, errors: list[FieldError]) -> None:
    """The first of maxLength, minLength and pattern that fails, as the apiserver reports it."""
    size = len(value.encode("utf-8"))
    if "maxLength" in schema and size > schema["maxLength"]:
        errors.append(FieldError(path, "Too long", f"may not be more than {schema['maxLength']} bytes", shape=True))
    elif "minLength" in schema and size < schema["minLength"]:
        errors.append(FieldError(path, "Invalid value", f"{path} in body should be at least {schema['minLength']} chars long", value))
    elif "pattern" in schema and not _regex(schema["pattern"]).search(value):
        errors.append(FieldError(path, "Invalid value", f"{path} in body should match '{schema['pattern']}'", value))


@lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _check_array(value: list, schema: Schema, path: str, errors: list[FieldError]) -> None:
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        limit = schema["maxItems"]
        errors.append(FieldError(path, "Too many", f"must have at most {limit} item{'' if limit == 1 else 's'}",
                                 len(value), shape=True))
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(FieldError(path, "Invalid value", f"{path} in body should have at least {schema['minItems']} items", len(value)))
    items = schema.get("items")
    if items:
        for index, item in enumerate(value):
            _validate(item, items, f"{path}[{index}]", errors)
    _check_list_uniqueness(value, schema, path, errors)


def _check_list_uniqueness(value: list, schema: Schema, path: str, errors: list[FieldError]) -> None:
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        keys = [json.dumps(item, sort_keys=True) for item in value]
        shown = value
    elif list_type == "map":
        key_names = schema.get("x-kubernetes-list-map-keys", [])
        shown = [{k: item.get(k) for k in key_names} if isinstance(item, dict) else item for item in value]
        keys = [json.dumps(item, sort_keys=True) for item in shown]
    else:
        return
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key in seen:
            errors.append(FieldError(f"{path}[{index}]", "Duplicate value", value=shown[index]))
        seen.add(key)


def _check_object(value: dict, schema: Schema, path: str, errors: list[FieldError]) -> None:
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for name in schema.get("required", []):
        if name not in value:
            errors.append(FieldError(join(path, name), "Required value", shape=True))
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(FieldError(path, "Too many", f"must have at most {schema['maxProperties']} items", len(value), shape=True))
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        errors.append(FieldError(path, "Invalid value", f"{path} in body should have at least {schema['minProperties']} properties", len(value)))
    for key, item in value.items():
        if key in props:
            _validate(item, props[key], join(path, key), errors)
        elif isinstance(extra, dict):
            _validate(item, extra, join(path, key), errors)
        elif not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
            errors.append(FieldError(join(path, key), "Unknown field", _unknown_detail(key, props), shape=True))


def _unknown_detail(key: str, props: dict[str, Any]) -> str:
    hint = [p for p in props if p.lower() == key.lower()] or difflib.get_close_matches(key, list(props), n=1, cutoff=0.85)
    return "field not declared in schema" + (f' (did you mean "{hint[0]}"?)' if hint else "")
