"""Operator settings: environment variables (as the Helm chart sets them), overridable by flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from . import validation

DEFAULT_TRAINER_IMAGE = "ghcr.io/mft-dev/mft-trainer:0.1.0"


@dataclass(frozen=True)
class Settings:
    # Empty: the whole cluster.
    namespaces: tuple[str, ...] = ()
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # Defaults for spec.resources fields the user left out (the CRD has none for these:
    # sensible values depend on the cluster).
    default_gpus_per_node: int = 0
    default_cpu: str = "4"
    default_memory: str = "16Gi"
    default_shm_size: str = "2Gi"
    progress_interval_seconds: float = 10.0
    # Reconciles of different MFTJobs that may run at once (one MFTJob is never reconciled twice at
    # once); they mostly wait on the apiserver, so more than the CPU count pays off.
    max_concurrent_reconciles: int = 16
    metrics_port: int = 9090
    health_port: int = 8080
    log_format: str = "json"
    log_level: str = "INFO"


# Setting -> environment variable.
ENV = {
    "namespaces": "MFT_WATCH_NAMESPACES",
    "trainer_image": "MFT_TRAINER_IMAGE",
    "default_gpus_per_node": "MFT_DEFAULT_GPUS_PER_NODE",
    "default_cpu": "MFT_DEFAULT_CPU",
    "default_memory": "MFT_DEFAULT_MEMORY",
    "default_shm_size": "MFT_DEFAULT_SHM_SIZE",
    "progress_interval_seconds": "MFT_PROGRESS_INTERVAL_SECONDS",
    "max_concurrent_reconciles": "MFT_MAX_CONCURRENT_RECONCILES",
    "metrics_port": "MFT_METRICS_PORT",
    "health_port": "MFT_HEALTH_PORT",
    "log_format": "MFT_LOG_FORMAT",
    "log_level": "MFT_LOG_LEVEL",
}

# The defaults for spec.resources, checked at startup by the CRD's own rules for those fields: a
# value the apiserver would refuse in an MFTJob would make every pod that gets it invalid.
JOB_DEFAULTS = {
    "default_gpus_per_node": "spec.resources.gpusPerNode",
    "default_cpu": "spec.resources.cpu",
    "default_memory": "spec.resources.memory",
    "default_shm_size": "spec.resources.shmSize",
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # the chart's values.schema.json lists the same

# Progress must reach the MFTJob within 30 s of the trainer reporting it.
MAX_PROGRESS_INTERVAL_SECONDS = 15.0


class SettingsError(ValueError):
    pass


def from_env(environ: Mapping[str, str], **overrides: object) -> Settings:
    """Settings from ``environ``; keyword overrides (command-line flags) win when not None."""
    values: dict[str, object] = {}
    for field in dataclasses.fields(Settings):
        raw = environ.get(ENV[field.name])
        if raw not in (None, ""):
            values[field.name] = _parse(field.name, raw)
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    _check(settings)
    return settings


def _parse(name: str, raw: str) -> object:
    kind = type(getattr(Settings(), name))
    try:
        if kind is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{ENV[name]}={raw!r}: expected {kind.__name__}") from exc


def _check(settings: Settings) -> None:
    if not 0 < settings.progress_interval_seconds <= MAX_PROGRESS_INTERVAL_SECONDS:
        raise SettingsError(
            f"progress interval must be in (0, {MAX_PROGRESS_INTERVAL_SECONDS:g}] seconds, "
            f"found {settings.progress_interval_seconds:g}"
        )
    if settings.log_format not in ("json", "text"):
        raise SettingsError(f"log format must be json or text, found {settings.log_format!r}")
    if settings.log_level not in LOG_LEVELS:
        raise SettingsError(f"log level must be one of {', '.join(LOG_LEVELS)}, found {settings.log_level!r}")
    if settings.max_concurrent_reconciles < 1:
        raise SettingsError(f"max concurrent reconciles must be >= 1, found {settings.max_concurrent_reconciles}")
    for name, field in JOB_DEFAULTS.items():
        value = getattr(settings, name)
        errors = validation.validate_field(field, value)
        if errors:
            raise SettingsError(f"{ENV[name]}={value!r} is not a valid {field}: {errors[0].kind}: {errors[0].detail}")
