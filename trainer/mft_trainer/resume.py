"""Whether a checkpoint found on the volume belongs to this run.

A checkpoint volume outlives its job (``checkpoint.retain_on_delete``), and a new job of the same
name, or one pointed at the same claim, finds its checkpoints and resumes from them. That is the
point when the job is the same one, but a checkpoint of another model or mode would load weights
that do not fit (a crash deep in loading) or, worse, fit and mean something else (a LoRA adapter
trained on another base model). The trainer config is saved in every ``trainer_state.json``;
before loading anything, the settings that decide what the weights are must match it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mft_trainer.config import ConfigError

log = logging.getLogger("mft_trainer")

# What the saved weights are: a checkpoint written under other values cannot continue under these.
SAME_WEIGHTS = (
    "mode", "model.type", "model.path", "model.config", "model.tokenizer_path", "data.markers_as_special_tokens",
    "lora.r", "lora.alpha", "lora.target_modules",
)
# The role markers are tokens of the vocabulary (and rows of the embedding) when added as special tokens.
MARKERS = ("data.role_start", "data.role_end")
# What the saved data position refers to: the run may go on under other values (more training on
# the saved weights), but it is no longer the run the checkpoint was part of.
SAME_DATA_ORDER = (
    "data.paths", "data.format", "data.valid_split", "data.padding_mode", "data.overlong_policy",
    "data.task_sampling", "data.sampling_temperature", "data.eos_token", "data.normalize_punctuation",
    "training.seq_length", "training.per_device_train_batch_size", "training.gradient_accumulation_steps",
    "training.seed",
)

_ABSENT = object()


class ResumeConflict(ConfigError):
    """The checkpoint to resume from was written by a run of another model or mode."""


def check(checkpoint: Path, saved_config: dict[str, Any] | None, config: dict[str, Any]) -> None:
    """Raise ResumeConflict if the weights in ``checkpoint`` cannot continue under ``config``; log a
    warning if its data position refers to other data or batches. Checkpoints from before the
    config was saved in them are taken as they are."""
    if saved_config is None:
        return
    markers_are_tokens = (config.get("data") or {}).get("markers_as_special_tokens")
    conflicts = differences(saved_config, config, SAME_WEIGHTS + (MARKERS if markers_are_tokens else ()))
    if conflicts:
        raise ResumeConflict(
            f"{checkpoint} was written by another run ({'; '.join(conflicts)}), so this run cannot resume from it. "
            f"To start over, give the job another checkpoint volume or delete the checkpoint-* folders in "
            f"{checkpoint.parent}; to resume it, use the settings it was written with.")
    changed = differences(saved_config, config, SAME_DATA_ORDER + (() if markers_are_tokens else MARKERS))
    if changed:
        log.warning("resuming from %s, written with other data or batch settings (%s): training continues from "
                    "its weights and step, but the data order differs from the interrupted run's",
                    checkpoint, "; ".join(changed))


def differences(saved: dict[str, Any], current: dict[str, Any], paths: tuple[str, ...]) -> list[str]:
    """``path: <saved> in the checkpoint, <current> now`` for each path whose values differ."""
    found = []
    for path in paths:
        before, now = _lookup(saved, path), _lookup(current, path)
        if before is not _ABSENT and now is not _ABSENT and before != now:
            found.append(f"{path}: {before!r} in the checkpoint, {now!r} now")
    return found


def _lookup(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted path; absent where a section is missing or null (lora outside mode lora)."""
    value: Any = config
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return _ABSENT
        value = value[name]
    return value


def warn_if_data_changed(checkpoint: Path, saved: dict[str, Any], config: dict[str, Any],
                         shape: dict[str, list[int]]) -> None:
    """Warn when the data has other counts than when ``checkpoint`` (its trainer state ``saved``) was
    written although the settings that shape it did not change: records were added, removed or
    fixed since. The validation split and the epoch order are drawn over the documents' positions,
    so both moved, and valid losses before and after compare different sets."""
    saved_shape = saved.get("data_shape")
    if saved_shape is None or saved_shape == shape:  # a checkpoint from before shapes were saved: unknown
        return
    if differences(saved.get("config") or {}, config, SAME_DATA_ORDER):
        return  # other data settings explain other rows, and ``check`` named them
    changed = sorted(name for name in saved_shape.keys() | shape.keys() if saved_shape.get(name) != shape.get(name))
    log.warning("resuming from %s, written when tasks %s had other document or row counts: their data changed "
                "since, so the validation split and the data order differ from the interrupted run's, and valid "
                "losses from before (best checkpoint, early stopping) were measured on another validation set",
                checkpoint, ", ".join(changed))
