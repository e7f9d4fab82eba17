"""The trainer's typed config and the CRD agree field by field: names (snake_case <->
camelCase) and defaults. The CRD is the source of truth."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from mft_operator.crd import mftjob_schema
from mft_operator.render import SECTIONS, snake_case
from mft_trainer import config


def _spec(section: str) -> dict[str, Any]:
    return mftjob_schema()["properties"]["spec"]["properties"][section]


def _dataclass_of(section: str) -> type:
    return typing.get_type_hints(config.TrainerConfig)[section] if section != "lora" else config.LoraConfig


def _nested_dataclass(hint: Any) -> type | None:
    candidates = [hint, *typing.get_args(hint)]
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _pairs():
    for section in SECTIONS:
        yield section, _dataclass_of(section), _spec(section)


@pytest.mark.parametrize(("section", "cls", "schema"), list(_pairs()), ids=SECTIONS)
def test_same_field_names(section, cls, schema):
    _check_names(cls, schema, section)


def _check_names(cls: type, schema: dict[str, Any], path: str) -> None:
    trainer = {f.name for f in dataclasses.fields(cls)}
    crd = {snake_case(name) for name in schema["properties"]}
    assert trainer == crd, f"{path}: only in config.py: {sorted(trainer - crd)}, only in the CRD: {sorted(crd - trainer)}"
    hints = typing.get_type_hints(cls)
    for name, sub in schema["properties"].items():
        nested = _nested_dataclass(hints[snake_case(name)])
        if nested is not None:
            _check_names(nested, sub, f"{path}.{name}")


@pytest.mark.parametrize(("section", "cls", "schema"), list(_pairs()), ids=SECTIONS)
def test_same_defaults(section, cls, schema):
    _check_defaults(cls, schema, section)


def _check_defaults(cls: type, schema: dict[str, Any], path: str) -> None:
    """A CRD default equals the dataclass default; a field without one in the CRD (absent
    until set) is None or empty in the dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = schema["properties"][_camel(f.name, schema)]
        default = _default(f)
        if "default" in sub:
            assert default == sub["default"] and type(default) is _python_type(sub), f"{path}.{f.name}"
        else:
            assert default in (None, {}, []), f"{path}.{f.name}: the CRD has no default, config.py has {default!r}"
        nested = _nested_dataclass(hints[f.name])
        if nested is not None:
            _check_defaults(nested, sub, f"{path}.{f.name}")


def _camel(snake: str, schema: dict[str, Any]) -> str:
    return next(name for name in schema["properties"] if snake_case(name) == snake)


def _python_type(sub: dict[str, Any]) -> type:
    return {"integer": int, "number": float, "string": str, "boolean": bool, "array": list, "object": dict}[sub["type"]]


def test_enums_match_literal_types():
    for section, cls, schema in _pairs():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            sub = schema["properties"][_camel(f.name, schema)]
            enum = sub.get("enum") or sub.get("items", {}).get("enum")
            literal = _literal(hints[f.name])
            assert (enum is None) == (literal is None), f"{section}.{f.name}"
            if enum and literal:
                assert set(enum) == set(literal), f"{section}.{f.name}"


def _literal(hint: Any) -> tuple | None:
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        found = _literal(arg)
        if found:
            return found
    return None


def test_mode_enum_matches():
    assert set(mftjob_schema()["properties"]["spec"]["properties"]["mode"]["enum"]) == set(typing.get_args(config.Mode))


def test_same_sections_in_the_same_order():
    assert SECTIONS == config.SECTIONS
