"""Evaluation of a CRD's ``x-kubernetes-validations`` CEL rules, offline, with cel-python.

Values are typed by the schema the way the apiserver types them (``type: number`` is a
double even when written ``2``), rules run at every node where the value is present,
transition rules (those using ``oldSelf``) only when an old object is given, and errors carry
the apiserver's field path (node path + ``fieldPath``) and wording (``reason``, ``message``,
``messageExpression``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes

from .schema import NO_VALUE, FieldError, Schema, join

_REASON_KIND = {
    "FieldValueRequired": "Required value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
}

_ENV = celpy.Environment()


# Kubernetes' CEL has cel-go's strings extension, cel-python 0.5 does not: the functions the CRD
# uses, with cel-go's semantics (indexes count code points; errors where cel-go gives them).


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, (bool, celtypes.BoolType))


def _last_index_of(text: Any, sub: Any, offset: Any = None) -> Any:
    if not (isinstance(text, str) and isinstance(sub, str) and (offset is None or _is_int(offset))):
        raise TypeError("lastIndexOf(string, string[, int])")
    if offset is None:
        if sub == "":
            return celtypes.IntType(len(text))
        if len(text.encode()) < len(sub.encode()):  # cel-go compares byte lengths here
            return celtypes.IntType(-1)
        offset = len(text) - 1
    if sub == "":
        return celtypes.IntType(offset)
    if offset < 0:
        return celpy.CELEvalError(f"index out of range: {offset}")
    if offset >= len(text):
        return celtypes.IntType(-1)
    return celtypes.IntType(text.rfind(sub, 0, min(offset, len(text) - len(sub)) + len(sub)))


def _substring(text: Any, start: Any, end: Any = None) -> Any:
    if not (isinstance(text, str) and _is_int(start) and (end is None or _is_int(end))):
        raise TypeError("substring(string, int[, int])")
    stop = len(text) if end is None else end
    if start > stop and end is not None:
        return celpy.CELEvalError(f"invalid substring range. start: {start}, end: {end}")
    for index in (start, stop):
        if not 0 <= index <= len(text):
            return celpy.CELEvalError(f"index out of range: {index}")
    return celtypes.StringType(text[start:stop])


_FUNCTIONS = {"lastIndexOf": _last_index_of, "substring": _substring}


@lru_cache(maxsize=None)
def _program(expression: str) -> celpy.Runner:
    return _ENV.program(_ENV.compile(expression), functions=_FUNCTIONS)


def check(value: Any, schema: Schema, old: Any = None, path: str = "") -> list[FieldError]:
    """Errors of every CEL rule under ``schema`` for ``value`` (and ``old``, on updates)."""
    errors: list[FieldError] = []
    _walk(value, old, schema, path, errors)
    return errors


def _walk(value: Any, old: Any, schema: Schema, path: str, errors: list[FieldError]) -> None:
    if value is None:
        return
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key) or (extra if isinstance(extra, dict) else None)
            if sub:
                old_item = old.get(key) if isinstance(old, dict) else None
                _walk(item, old_item, sub, join(path, key), errors)
    elif isinstance(value, list) and schema.get("items"):
        old_by_key = _old_items_by_map_key(old, schema)
        for index, item in enumerate(value):
            _walk(item, old_by_key.get(_map_key(item, schema)), schema["items"], f"{path}[{index}]", errors)
    for rule in schema.get("x-kubernetes-validations", []):
        error = _evaluate(rule, value, old, schema, path)
        if error:
            errors.append(error)


def _map_key(item: Any, schema: Schema) -> tuple | None:
    keys = schema.get("x-kubernetes-list-map-keys")
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(item, dict):
        return None
    return tuple(item.get(k) for k in keys)


def _old_items_by_map_key(old: Any, schema: Schema) -> dict[tuple, Any]:
    """Old list items correlate with new ones only through map keys (as in the apiserver)."""
    if not isinstance(old, list):
        return {}
    pairs = ((_map_key(item, schema), item) for item in old)
    return {key: item for key, item in pairs if key is not None}


def _evaluate(rule: dict[str, Any], value: Any, old: Any, schema: Schema, path: str) -> FieldError | None:
    expression = rule["rule"]
    is_transition = "oldSelf" in expression
    if is_transition and old is None:
        return None
    activation = {"self": to_cel(value, schema)}
    if is_transition:
        activation["oldSelf"] = to_cel(old, schema)
    error_path = join(path, rule["fieldPath"].lstrip(".")) if rule.get("fieldPath") else path
    try:
        passed = bool(_program(expression).evaluate(activation))
    except celpy.CELEvalError as exc:
        return FieldError(error_path, "Invalid value", f"rule evaluation error: {exc.args[0] if exc.args else exc}")
    if passed:
        return None
    kind = _REASON_KIND[rule.get("reason", "FieldValueInvalid")]
    # The apiserver prints the value of a scalar that fails a rule, never that of an object or a list.
    shown = value if kind == "Invalid value" and schema.get("type") not in ("object", "array") else NO_VALUE
    return FieldError(error_path, kind, _message(rule, activation), shown)


def _message(rule: dict[str, Any], activation: dict[str, Any]) -> str:
    if "messageExpression" in rule:
        try:
            return str(_program(rule["messageExpression"]).evaluate(activation))
        except celpy.CELEvalError:
            pass  # the apiserver falls back to message as well
    return rule.get("message") or f"failed rule: {rule['rule']}"


def to_cel(value: Any, schema: Schema | None) -> Any:
    """A JSON value as a CEL value typed by its schema (numbers are doubles, as in the apiserver)."""
    if schema is None:
        return celpy.json_to_cel(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return celtypes.MapType({
            celtypes.StringType(k): to_cel(v, props.get(k) or (extra if isinstance(extra, dict) else None))
            for k, v in value.items()
        })
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items")) for v in value])
    if schema.get("type") == "number" and not isinstance(value, bool):
        return celtypes.DoubleType(value)
    return celpy.json_to_cel(value)
