"""Which checkpoint settings must match the config that resumes from it (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mft_trainer import resume
from mft_trainer.config import from_dict, to_dict

BASE = {"mode": "sft", "model": {"path": "/models/pythia-1b"}, "data": {"paths": ["/data/a"]}}


def config(**changes) -> dict:
    raw = to_dict(from_dict(BASE))
    for path, value in changes.items():
        section, _, name = path.partition("__")
        if name:
            raw[section] = (raw[section] or {}) | {name: value}
        else:
            raw[section] = value
    return raw


def test_another_mode_model_or_adapter_shape_is_refused_with_every_difference():
    saved = config(mode="lora", lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["dense"]})
    with pytest.raises(resume.ResumeConflict) as refused:
        resume.check(Path("/ckpt/checkpoint-9"), saved, config(model__path="/models/other"))
    message = str(refused.value)
    assert message.startswith("/ckpt/checkpoint-9 was written by another run (mode: 'lora' in the checkpoint, "
                              "'sft' now; model.path: '/models/pythia-1b' in the checkpoint, '/models/other' now)")
    assert "delete the checkpoint-* folders in /ckpt" in message


def test_other_data_or_batches_are_named_but_resume_and_training_settings_change_nothing(caplog):
    saved = config()
    resume.check(Path("/ckpt/checkpoint-9"), saved, config(training__learning_rate=1.0, training__max_steps=100))
    assert not caplog.records
    resume.check(Path("/ckpt/checkpoint-9"), saved, config(data__paths=["/data/a", "/data/b"]))
    assert "(data.paths: ['/data/a'] in the checkpoint, ['/data/a', '/data/b'] now)" in caplog.text


def test_role_markers_are_part_of_the_weights_only_when_they_are_added_tokens(caplog):
    new_marker = {"data__role_start": "<|start|>"}
    with pytest.raises(resume.ResumeConflict) as refused:
        resume.check(Path("/ckpt/checkpoint-9"), config(data__markers_as_special_tokens=True),
                     config(data__markers_as_special_tokens=True, **new_marker))
    assert "(data.role_start: '<|role_start|>' in the checkpoint, '<|start|>' now)" in str(refused.value)
    resume.check(Path("/ckpt/checkpoint-9"), config(), config(**new_marker))
    assert "data.role_start: '<|role_start|>' in the checkpoint, '<|start|>' now" in caplog.text


def test_a_checkpoint_without_a_saved_config_or_field_is_taken_as_it_is():
    resume.check(Path("/ckpt/checkpoint-9"), None, config())
    older = config()
    del older["model"]["tokenizer_path"]
    assert resume.differences(older, config(model__tokenizer_path="/tok"), resume.SAME_WEIGHTS) == []
