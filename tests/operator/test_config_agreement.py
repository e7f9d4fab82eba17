"""The trainer's typed config and the CRD agree field by field: names (snake_case <->
camelCase) and defaults. The CRD is the source of truth."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing
from typing import Any

import pytest
import yaml

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


BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
              "minItems", "maxItems", "pattern")


def _crd_bounds(sub: dict[str, Any]) -> dict[str, Any]:
    bounds = {key: sub[key] for key in BOUND_KEYS if key in sub}
    items = {key: sub["items"][key] for key in BOUND_KEYS if key in sub.get("items", {})}
    return bounds | ({"items": items} if items else {})


def _check_bounds(cls: type, schema: dict[str, Any], path: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = schema["properties"][_camel(f.name, schema)]
        assert f.metadata.get("bounds", {}) == _crd_bounds(sub), f"{path}.{f.name}"
        nested = _nested_dataclass(hints[f.name])
        if nested is not None:
            _check_bounds(nested, sub, f"{path}.{f.name}")


@pytest.mark.parametrize(("section", "cls", "schema"), list(_pairs()), ids=SECTIONS)
def test_same_limits_on_single_values(section, cls, schema):
    """config.py checks what the CRD checks, for configs that never passed an apiserver."""
    _check_bounds(cls, schema, section)


JOB = {"mode": "sft", "model": {"path": "/m"}, "data": {"paths": ["/d"]}}


@pytest.mark.parametrize(("section", "values", "message"), [
    ("training", {"seed": -1}, "training.seed: expected >= 0, found -1"),
    ("training", {"seed": 2**32}, "training.seed: expected <= 4294967295, found 4294967296"),
    ("training", {"log_interval": 0}, "training.log_interval: expected >= 1, found 0"),
    ("training", {"evaluation_steps": 0}, "training.evaluation_steps: expected >= 1, found 0"),
    ("training", {"learning_rate": 0}, "training.learning_rate: expected > 0, found 0.0"),
    ("training", {"learning_rate": "inf"}, "training.learning_rate: expected a finite number, found 'inf'"),
    ("training", {"evaluation_strategy": ["no", "steps"]},
     "training.evaluation_strategy: 'no' cannot be combined with other strategies, found ['no', 'steps']"),
    ("checkpoint", {"steps": 0}, "checkpoint.steps: expected >= 1, found 0"),
    ("checkpoint", {"mount_path": "ckpt"}, "checkpoint.mount_path: expected to match ^/, found 'ckpt'"),
    ("data", {"paths": [""]}, "data.paths[0]: expected at least 1 characters, found ''"),
    ("data", {"paths": []}, "data.paths: expected at least 1 items, found []"),
    ("data", {"sampling_temperature": -1}, "data.sampling_temperature: expected > 0, found -1.0"),
    ("data", {"valid_split": 1}, "data.valid_split: expected < 1, found 1.0"),
])
def test_the_trainer_refuses_what_the_crd_refuses_naming_the_field(section, values, message):
    raw = {**JOB, section: {**JOB.get(section, {}), **values}}
    with pytest.raises(config.ConfigError, match=f"^{re.escape(message)}$"):
        config.from_dict(raw)


def test_limits_are_inclusive_where_the_crd_says_so():
    for seed in (0, 2**32 - 1):
        assert config.from_dict({**JOB, "training": {"seed": seed}}).training.seed == seed
    assert config.from_dict({**JOB, "training": {"max_grad_norm": 0}}).training.max_grad_norm == 0.0


def test_mft_train_refuses_a_negative_seed_naming_the_field(tmp_path):
    """Exit 1 (not retried) with the field path, before training starts."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"mode": "sft", "model": {"path": str(tmp_path)}, "data": {"paths": [str(tmp_path)]},
                                   "training": {"seed": -1}, "checkpoint": {"mount_path": str(tmp_path / "out")}}))
    proc = subprocess.run([sys.executable, "-m", "mft_trainer", "train", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"mft-train: {cfg}: training.seed: expected >= 0, found -1")


def test_sst_without_model_path_needs_a_tokenizer_path_as_in_the_crd():
    """The tokenizer is read from model.path unless tokenizer_path is set (crds/mftjob.yaml's rule)."""
    scratch = {"mode": "sst", "model": {"config": {"hidden_size": 64}}, "data": {"paths": ["/d"]}}
    with pytest.raises(config.ConfigError, match=r"^model\.tokenizer_path: required for mode sst without model\.path"):
        config.from_dict(scratch)
    with_tokenizer = {**scratch, "model": {**scratch["model"], "tokenizer_path": "/tok"}}
    assert config.from_dict(with_tokenizer).tokenizer_path == "/tok"


def test_storage_class_name_may_be_empty_but_not_malformed():
    create = lambda name: {**JOB, "checkpoint": {"create": {"storage_class_name": name}}}  # noqa: E731
    assert config.from_dict(create("")).checkpoint.create.storage_class_name == ""
    with pytest.raises(config.ConfigError, match=r"^checkpoint\.create\.storage_class_name: expected to match"):
        config.from_dict(create("Fast_SSD"))


def _unreadable(tmp_path, kind: str):
    path = tmp_path / "config.yaml"
    if kind == "a directory":
        path.mkdir()
    elif kind == "not UTF-8":
        path.write_bytes(b"mode: sft\nmodel: {path: /m\xff}\n")
    return path


@pytest.mark.parametrize(("kind", "reason"), [
    ("missing", "No such file or directory"),
    ("a directory", "Is a directory"),
    ("not UTF-8", "expected UTF-8 text, found byte 0xff at offset 26"),
])
def test_a_config_file_that_cannot_be_read_is_a_config_error_naming_it(tmp_path, kind, reason):
    path = _unreadable(tmp_path, kind)
    with pytest.raises(config.ConfigError) as raised:
        config.load_config(path)
    assert str(raised.value) == f"{path}: {reason}"


def test_mft_train_names_a_missing_config_in_one_line(tmp_path):
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run([sys.executable, "-m", "mft_trainer", "train", "--config", str(missing)],
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stderr.strip()) == (1, f"mft-train: {missing}: No such file or directory")


@pytest.mark.parametrize("command", [["tokenize", "--input", "x.jsonl"], ["preprocess", "--output", "out"]])
def test_data_commands_name_a_missing_config_in_one_line(tmp_path, capsys, command):
    from mft_trainer.cli import main

    missing = tmp_path / "missing.yaml"
    assert main([*command, "--config", str(missing)]) == 1
    assert capsys.readouterr().err == f"mft-train {command[0]}: {missing}: No such file or directory\n"
