"""Settings: typed, validated at start, and a bad value names its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import time

import pytest

from shared.settings import Settings, SettingsError, load_settings


def test_defaults_are_the_local_stack_without_credentials() -> None:
    settings = Settings(_env_file=None)
    assert settings.api_port == 8000
    assert settings.http_host == "127.0.0.1"
    # No credential by default: development mode and its tokens are asked for.
    assert settings.token_values() == []
    assert settings.dev_mode is False
    assert str(settings.log_file) == "statistic.log"
    assert settings.retry_delays_s == [5.0, 30.0, 120.0, 600.0]


def test_comma_separated_lists_and_plain_postgres_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKENS", " one , two ")
    monkeypatch.setenv("RETRY_DELAYS_S", "1,2.5")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/n")
    monkeypatch.setenv("REPORT_TIME", "07:30")
    settings = load_settings()
    assert settings.token_values() == ["one", "two"]
    assert settings.retry_delays_s == [1.0, 2.5]
    assert settings.database_url == "postgresql+psycopg://u@db:5432/n"
    assert settings.report_time == time(7, 30)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("KAFKA_PARTITIONS", "many", "KAFKA_PARTITIONS"),
        ("KAFKA_PARTITIONS", "0", "KAFKA_PARTITIONS"),
        ("API_PORT", "70000", "API_PORT"),
        ("KAFKA_BOOTSTRAP", "localhost", "KAFKA_BOOTSTRAP"),
        ("KAFKA_BOOTSTRAP", "kafka:\u0669\u0660\u0669\u0662", "KAFKA_BOOTSTRAP"),  # not ASCII
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("REPORT_TIMEZONE", "Mars/Olympus", "REPORT_TIMEZONE"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("API_TOKENS", " , ", "API_TOKENS"),
        ("PROVIDER_URL", "not a url", "PROVIDER_URL"),
    ],
)
def test_malformed_value_is_rejected_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid settings:")
    assert f"  {says}: " in message


def test_secret_values_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKENS", ",")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "API_TOKENS" in str(caught.value)
    assert "','" not in str(caught.value)


def test_a_service_refuses_to_start_with_a_clear_message() -> None:
    env = {**os.environ, "KAFKA_PARTITIONS": "lots", "LOG_FILE": ""}
    result = subprocess.run(
        [sys.executable, "-m", "services.api"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "KAFKA_PARTITIONS" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_lease_shorter_than_a_request_and_its_margin_is_refused() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(provider_timeout_s=10, sending_lease_margin_s=2, sending_lease_s=12)
    assert "SENDING_LEASE_S" in str(error.value)
    settings = load_settings(provider_timeout_s=10, sending_lease_margin_s=2, sending_lease_s=12.5)
    assert settings.sending_lease_s == 12.5
    assert (settings.retry_max_attempts, settings.retry_max_age_s) == (20, 86400.0)
