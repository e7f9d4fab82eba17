"""Operator settings from the environment (as the Helm chart sets it) and flags."""

from __future__ import annotations

import pytest

from mft_operator import cli
from mft_operator.settings import Settings, SettingsError, from_env


def test_defaults():
    assert from_env({}) == Settings()


def test_environment_and_flag_overrides():
    settings = from_env(
        {"MFT_TRAINER_IMAGE": "img:1", "MFT_WATCH_NAMESPACES": "a, b", "MFT_PROGRESS_INTERVAL_SECONDS": "5",
         "MFT_METRICS_PORT": "9100", "MFT_LOG_FORMAT": "text"},
        trainer_image="img:2", metrics_port=None,
    )
    assert settings.trainer_image == "img:2" and settings.namespaces == ("a", "b")
    assert settings.progress_interval_seconds == 5.0 and settings.metrics_port == 9100
    assert settings.log_format == "text"


@pytest.mark.parametrize(("env", "message"), [
    ({"MFT_PROGRESS_INTERVAL_SECONDS": "60"}, "progress interval"),
    ({"MFT_METRICS_PORT": "http"}, "MFT_METRICS_PORT"),
    ({"MFT_LOG_FORMAT": "xml"}, "log format"),
    ({"MFT_LOG_LEVEL": "verbose"}, "log level must be one of DEBUG, INFO, WARNING, ERROR, found 'verbose'"),
    # The job defaults obey the CRD's rules for the fields they fill in.
    ({"MFT_DEFAULT_MEMORY": "16K"}, r"MFT_DEFAULT_MEMORY='16K' is not a valid spec.resources.memory: .* should match"),
    ({"MFT_DEFAULT_SHM_SIZE": "0Gi"}, "MFT_DEFAULT_SHM_SIZE='0Gi' is not a valid spec.resources.shmSize: Invalid value: must be greater than 0"),
    ({"MFT_DEFAULT_CPU": "-2"}, "MFT_DEFAULT_CPU='-2' is not a valid spec.resources.cpu"),
    ({"MFT_DEFAULT_GPUS_PER_NODE": "65"}, "MFT_DEFAULT_GPUS_PER_NODE=65 is not a valid spec.resources.gpusPerNode: .* less than or equal to 64"),
    ({"MFT_DEFAULT_GPUS_PER_NODE": "-1"}, "MFT_DEFAULT_GPUS_PER_NODE=-1 is not a valid spec.resources.gpusPerNode"),
])
def test_bad_settings_are_refused(env, message):
    with pytest.raises(SettingsError, match=message):
        from_env(env)


def test_job_defaults_accept_every_quantity_form():
    settings = from_env({"MFT_DEFAULT_CPU": "500m", "MFT_DEFAULT_MEMORY": "1e9", "MFT_DEFAULT_SHM_SIZE": "512Mi"})
    assert (settings.default_cpu, settings.default_memory, settings.default_shm_size) == ("500m", "1e9", "512Mi")


def test_the_operator_refuses_to_start_with_a_bad_job_default(monkeypatch, capsys):
    monkeypatch.setenv("MFT_DEFAULT_MEMORY", "16K")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["operator", "-A"])
    assert exit_info.value.code == 2
    assert "MFT_DEFAULT_MEMORY='16K' is not a valid spec.resources.memory" in capsys.readouterr().err
