"""Operator settings from the environment (as the Helm chart sets it) and flags."""

from __future__ import annotations

import pytest

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
])
def test_bad_settings_are_refused(env, message):
    with pytest.raises(SettingsError, match=message):
        from_env(env)
