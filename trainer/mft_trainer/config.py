"""Typed trainer configuration.

The trainer reads the snake_case form of the MFTJob's ``spec.model``, ``spec.data``,
``spec.training``, ``spec.lora`` and ``spec.checkpoint`` sections. The CRD
(``crds/mftjob.yaml``) is the source of truth for the user-facing API; a test checks that
every field and default here agrees with it, field by field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Mode = Literal["sst", "sft", "lora"]


class ConfigError(ValueError):
    """A config value is missing or has the wrong type; the message names the field path."""


@dataclass
class ModelConfig:
    type: Literal["gpt_neox"] = "gpt_neox"
    path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: str | None = None


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)
    format: Literal["jsonl", "bin"] = "jsonl"
    valid_split: float = 0.05
    padding_mode: Literal["pack", "padding", "concat"] = "pack"
    on_bad_record: Literal["fail", "skip"] = "fail"
    overlong_policy: Literal["truncate", "drop"] = "truncate"
    task_sampling: Literal["proportional", "uniform", "temperature"] = "proportional"
    sampling_temperature: float = 1.0
    role_start: str = "<|role_start|>"
    role_end: str = "<|role_end|>"
    eos_token: str | None = None
    markers_as_special_tokens: bool = False
    normalize_punctuation: bool = False


@dataclass
class TrainingConfig:
    epochs: int = 1
    max_steps: int = 0
    per_device_train_batch_size: int = 4
    per_device_valid_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    seq_length: int = 4096
    learning_rate: float = 1e-4
    min_lr: float = 0.0
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    num_warmup_steps: int = 30
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_activations: bool = True
    weighted_loss_mode: Literal["case1", "case2", "case3", "case4"] = "case3"
    tensor_parallel: int = 1
    bf16: bool = True
    seed: int = 42
    log_interval: int = 10
    evaluation_strategy: list[Literal["steps", "epoch", "no"]] = field(
        default_factory=lambda: ["steps", "epoch"]
    )
    evaluation_steps: int = 500
    max_valid_batches: int = 0
    early_stopping_patience: int = 5


@dataclass
class LoraConfig:
    r: int = 96
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    )


@dataclass
class CheckpointVolumeRequest:
    size: str = "100Gi"
    storage_class_name: str | None = None


@dataclass
class CheckpointConfig:
    claim_name: str | None = None
    create: CheckpointVolumeRequest | None = None
    retain_on_delete: bool = True
    mount_path: str = "/checkpoints"
    save_strategy: Literal["steps", "epoch"] = "steps"
    steps: int = 500
    save_total_limit: int = 2
    extra_save_by_epoch: bool = True
    resume: Literal["auto", "never"] = "auto"
    preemption_grace_seconds: int = 120
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
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def from_dict(raw: dict[str, Any]) -> TrainerConfig:
    config = _build(TrainerConfig, raw, "")
    if config.mode == "lora" and config.lora is None:
        config.lora = LoraConfig()
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
        (c.lora is not None and c.mode != "lora", "lora", "only allowed with mode lora"),
        (c.data.padding_mode == "concat" and c.mode != "sst", "data.padding_mode", "concat is only allowed with mode sst"),
        (not c.data.paths, "data.paths", "at least one task folder is required"),
        (not 0 < c.data.valid_split < 1, "data.valid_split", f"expected 0 < value < 1, found {c.data.valid_split}"),
        (t.tensor_parallel != 1, "training.tensor_parallel", f"must be 1, found {t.tensor_parallel}"),
        (t.learning_rate <= 0, "training.learning_rate", f"must be > 0, found {t.learning_rate}"),
        (not 0 <= t.min_lr <= t.learning_rate, "training.min_lr", f"expected 0 <= min_lr <= learning_rate, found {t.min_lr}"),
        (c.lora is not None and not 0 <= c.lora.dropout < 1, "lora.dropout", "expected 0 <= dropout < 1"),
        (c.checkpoint.claim_name is not None and c.checkpoint.create is not None, "checkpoint", "claim_name and create are mutually exclusive"),
    ]
    for name in ("epochs", "per_device_train_batch_size", "per_device_valid_batch_size",
                 "gradient_accumulation_steps", "seq_length"):
        value = getattr(t, name)
        rules.append((value <= 0, f"training.{name}", f"must be > 0, found {value}"))
    for broken, path, message in rules:
        if broken:
            raise ConfigError(f"{path}: {message}")


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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 loaders read "2e-4" (no dot) as a string; accept the number it spells.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[hint]
    raise ConfigError(f"{path}: expected {expected}, found {value!r}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
