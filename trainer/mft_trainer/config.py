"""Typed trainer configuration.

The trainer reads the snake_case form of the MFTJob's ``spec.model``, ``spec.data``,
``spec.training``, ``spec.lora`` and ``spec.checkpoint`` sections. The CRD
(``crds/mftjob.yaml``) is the source of truth for the user-facing API; a test checks that
every field and default here agrees with it, field by field.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Mode = Literal["sst", "sft", "lora"]
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A storage class name: empty asks for no class (a pre-provisioned volume), as in a PersistentVolumeClaim.
DNS_SUBDOMAIN_OR_EMPTY = f"^({DNS_SUBDOMAIN[1:-1]})?$"
QUANTITY = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"


class ConfigError(ValueError):
    """A config value is missing or has the wrong type; the message names the field path."""


def bounded(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A field with the CRD's limits on its value (the CRD's keywords: minimum, maximum,
    exclusiveMinimum, exclusiveMaximum, minLength, maxLength, minItems, maxItems, pattern, and
    ``items`` for a list's items), checked by ``from_dict``; a test holds them equal to the CRD's."""
    return field(default=default, default_factory=factory, metadata={"bounds": bounds})


@dataclass
class ModelConfig:
    type: Literal["gpt_neox"] = "gpt_neox"
    path: str | None = bounded(None, maxLength=1024)
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: str | None = bounded(None, maxLength=1024)


@dataclass
class DataConfig:
    paths: list[str] = bounded(factory=list, minItems=1, maxItems=64, items={"minLength": 1, "maxLength": 1024, "pattern": "^/"})
    format: Literal["jsonl", "bin"] = "jsonl"
    valid_split: float = bounded(0.05, minimum=0, maximum=1, exclusiveMinimum=True, exclusiveMaximum=True)
    padding_mode: Literal["pack", "padding", "concat"] = "pack"
    on_bad_record: Literal["fail", "skip"] = "fail"
    overlong_policy: Literal["truncate", "drop"] = "truncate"
    task_sampling: Literal["proportional", "uniform", "temperature"] = "proportional"
    sampling_temperature: float = bounded(1.0, minimum=0, exclusiveMinimum=True)
    role_start: str = bounded("<|role_start|>", maxLength=64)
    role_end: str = bounded("<|role_end|>", maxLength=64)
    eos_token: str | None = bounded(None, maxLength=64)
    markers_as_special_tokens: bool = False
    normalize_punctuation: bool = False


@dataclass
class TrainingConfig:
    epochs: int = bounded(1, minimum=1, maximum=10000)
    max_steps: int = bounded(0, minimum=0)
    per_device_train_batch_size: int = bounded(4, minimum=1, maximum=65536)
    per_device_valid_batch_size: int = bounded(4, minimum=1, maximum=65536)
    gradient_accumulation_steps: int = bounded(1, minimum=1, maximum=65536)
    seq_length: int = bounded(4096, minimum=1, maximum=1048576)
    learning_rate: float = bounded(1e-4, minimum=0, exclusiveMinimum=True)
    min_lr: float = bounded(0.0, minimum=0)
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    num_warmup_steps: int = bounded(30, minimum=0)
    weight_decay: float = bounded(0.0, minimum=0)
    max_grad_norm: float = bounded(1.0, minimum=0)
    checkpoint_activations: bool = True
    weighted_loss_mode: Literal["case1", "case2", "case3", "case4"] = "case3"
    tensor_parallel: int = 1
    bf16: bool = True
    seed: int = bounded(42, minimum=0, maximum=4294967295)  # numpy's generators take unsigned 32-bit seeds
    log_interval: int = bounded(10, minimum=1)
    evaluation_strategy: list[Literal["steps", "epoch", "no"]] = bounded(factory=lambda: ["steps", "epoch"], maxItems=3)
    evaluation_steps: int = bounded(500, minimum=1)
    max_valid_batches: int = bounded(0, minimum=0)
    early_stopping_patience: int = bounded(5, minimum=0)


@dataclass
class LoraConfig:
    r: int = bounded(96, minimum=1)
    alpha: int = bounded(32, minimum=1)
    dropout: float = bounded(0.05, minimum=0, maximum=1, exclusiveMaximum=True)
    target_modules: list[str] = bounded(factory=lambda: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
                                        minItems=1, maxItems=32, items={"maxLength": 128})


@dataclass
class CheckpointVolumeRequest:
    size: str = bounded("100Gi", pattern=QUANTITY)
    storage_class_name: str | None = bounded(None, maxLength=253, pattern=DNS_SUBDOMAIN_OR_EMPTY)


@dataclass
class CheckpointConfig:
    claim_name: str | None = bounded(None, maxLength=253, pattern=DNS_SUBDOMAIN)
    create: CheckpointVolumeRequest | None = None
    retain_on_delete: bool = True
    mount_path: str = bounded("/checkpoints", maxLength=1024, pattern="^/")
    save_strategy: Literal["steps", "epoch"] = "steps"
    steps: int = bounded(500, minimum=1)
    save_total_limit: int = bounded(2, minimum=1)
    extra_save_by_epoch: bool = True
    resume: Literal["auto", "never"] = "auto"
    preemption_grace_seconds: int = bounded(120, minimum=0, maximum=3600)
    async_save: bool = True


@dataclass
class TrainerConfig:
    mode: Mode = "sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig | None = None
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.checkpoint.mount_path)

    @property
    def tokenizer_path(self) -> str | None:
        return self.model.tokenizer_path or self.model.path


# Sections of the MFTJob spec that make up the trainer config, in file order.
SECTIONS = ("model", "data", "training", "lora", "checkpoint")


def load_config(path: str | Path) -> TrainerConfig:
    """Read a trainer config YAML file; errors name the file and the field path."""
    text = _read_text(path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _read_text(path: str | Path) -> str:
    """The file's text; a missing, unreadable or non-UTF-8 file is a ConfigError (one line, not a traceback)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: expected UTF-8 text, found byte {exc.object[exc.start]:#04x} at offset {exc.start}") from exc


def from_dict(raw: dict[str, Any]) -> TrainerConfig:
    config = _build(TrainerConfig, raw, "")
    if config.mode == "lora" and config.lora is None:
        config.lora = LoraConfig()
    _check_bounds(config, "")
    _check_rules(config)
    return config


def to_dict(config: TrainerConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _check_rules(c: TrainerConfig) -> None:
    """The cross-field rules of the CRD, repeated for configs that never passed an apiserver."""
    t = c.training
    rules = [
        (c.mode in ("sft", "lora") and not c.model.path, "model.path", "required for mode sft and lora"),
        (c.mode == "sst" and not (c.model.path or c.model.config), "model", "sst needs model.path or model.config"),
        (c.mode == "sst" and not (c.model.path or c.model.tokenizer_path), "model.tokenizer_path",
         "required for mode sst without model.path (the tokenizer is otherwise read from model.path)"),
        (c.lora is not None and c.mode != "lora", "lora", "only allowed with mode lora"),
        (c.data.padding_mode == "concat" and c.mode != "sst", "data.padding_mode", "concat is only allowed with mode sst"),
        (t.tensor_parallel != 1, "training.tensor_parallel", f"must be 1, found {t.tensor_parallel}"),
        (t.min_lr > t.learning_rate, "training.min_lr", f"expected min_lr <= learning_rate, found {t.min_lr}"),
        ("no" in t.evaluation_strategy and len(t.evaluation_strategy) > 1, "training.evaluation_strategy",
         f"'no' cannot be combined with other strategies, found {t.evaluation_strategy}"),
        (c.checkpoint.claim_name is not None and c.checkpoint.create is not None, "checkpoint", "claim_name and create are mutually exclusive"),
    ]
    for broken, path, message in rules:
        if broken:
            raise ConfigError(f"{path}: {message}")


def _check_bounds(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value, where = getattr(obj, f.name), _join(path, f.name)
        if dataclasses.is_dataclass(value):
            _check_bounds(value, where)
        elif value is not None and "bounds" in f.metadata:
            _check_value(value, f.metadata["bounds"], where)


def _check_value(value: Any, bounds: dict[str, Any], path: str) -> None:
    size = len(value) if isinstance(value, (str, list)) else None
    low, high = bounds.get("minimum"), bounds.get("maximum")
    failures = [
        (low is not None and (value <= low if bounds.get("exclusiveMinimum") else value < low),
         f"{'>' if bounds.get('exclusiveMinimum') else '>='} {low}"),
        (high is not None and (value >= high if bounds.get("exclusiveMaximum") else value > high),
         f"{'<' if bounds.get('exclusiveMaximum') else '<='} {high}"),
        ("minLength" in bounds and size < bounds["minLength"], f"at least {bounds.get('minLength')} characters"),
        ("maxLength" in bounds and size > bounds["maxLength"], f"at most {bounds.get('maxLength')} characters"),
        ("minItems" in bounds and size < bounds["minItems"], f"at least {bounds.get('minItems')} items"),
        ("maxItems" in bounds and size > bounds["maxItems"], f"at most {bounds.get('maxItems')} items"),
        ("pattern" in bounds and not re.search(bounds.get("pattern", ""), value), f"to match {bounds.get('pattern')}"),
    ]
    for broken, expected in failures:
        if broken:
            raise ConfigError(f"{path}: expected {expected}, found {value!r}")
    for i, item in enumerate(value if "items" in bounds else []):
        _check_value(item, bounds["items"], f"{path}[{i}]")


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, found {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown field (known: {', '.join(sorted(known))})")
    values = {name: _convert(hints[name], value, _join(path, name)) for name, value in raw.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {', '.join(map(str, args))}, found {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, found {value!r}")
        return [_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, found {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    return _scalar(hint, value, path)


def _scalar(hint: type, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        # YAML 1.1 loaders read "2e-4" (no dot) as a string; accept the number it spells.
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):  # the API has no NaN or infinity either
            return float(number)
    elif hint is str:
        if isinstance(value, str):
            return value
    expected = {bool: "a boolean", int: "an integer", float: "a finite number", str: "a string"}[hint]
    raise ConfigError(f"{path}: expected {expected}, found {value!r}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
