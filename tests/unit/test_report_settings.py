"""The daily report's settings: parsed, validated, and a bad value names its variable."""

from __future__ import annotations

from datetime import time

import pytest

from shared.settings import Settings, SettingsError, load_settings


def test_defaults_leave_the_report_off() -> None:
    settings = Settings(_env_file=None)
    assert settings.report_recipients == []
    assert settings.reports_enabled is False
    assert settings.report_time == time(8, 0)
    assert settings.report_timezone == "UTC"
    assert settings.smtp_tls == "starttls"
    assert settings.smtp_user is None
    assert settings.smtp_password is None


def test_report_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPORT_TIME", "7:05")
    monkeypatch.setenv("REPORT_TIMEZONE", "Europe/Berlin")
    monkeypatch.setenv("REPORT_RECIPIENTS", " ops@example.com, lead@example.org ,ops@example.com,")
    monkeypatch.setenv("REPORT_FROM", "Notifications <reports@example.com>")
    monkeypatch.setenv("REPORT_RETRY_DELAYS_S", "1, 2.5")
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SMTP_PORT", "465")
    monkeypatch.setenv("SMTP_TLS", "tls")
    monkeypatch.setenv("SMTP_USER", "reporter")
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("SMTP_TIMEOUT_S", "12")
    settings = load_settings(_env_file=None)
    assert settings.report_time == time(7, 5)
    assert settings.report_recipients == ["ops@example.com", "lead@example.org"]
    assert settings.reports_enabled is True
    assert settings.report_from == "Notifications <reports@example.com>"
    assert settings.report_retry_delays_s == [1.0, 2.5]
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_tls) == (
        "smtp.example.com",
        465,
        "tls",
    )
    assert settings.smtp_user == "reporter"
    assert settings.smtp_password is not None
    assert settings.smtp_password.get_secret_value() == "s3cret"
    assert settings.smtp_timeout_s == 12.0


def test_empty_login_means_no_login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", "")
    monkeypatch.setenv("SMTP_PASSWORD", "")
    settings = load_settings(_env_file=None)
    assert settings.smtp_user is None
    assert settings.smtp_password is None


@pytest.mark.parametrize(
    ("env", "variable", "says"),
    [
        ({"REPORT_TIME": "25:00"}, "REPORT_TIME", "HH:MM"),
        ({"REPORT_TIME": "08:00:30"}, "REPORT_TIME", "HH:MM"),
        ({"REPORT_TIME": "eight"}, "REPORT_TIME", "HH:MM"),
        ({"REPORT_TIMEZONE": "Europe/Atlantis"}, "REPORT_TIMEZONE", "unknown IANA time zone"),
        (
            {"REPORT_RECIPIENTS": "ops@example.com, not-an-address"},
            "REPORT_RECIPIENTS",
            "'not-an-address'",
        ),
        ({"REPORT_RECIPIENTS": "a@b@example.com"}, "REPORT_RECIPIENTS", "not an email address"),
        ({"REPORT_FROM": "Reports <nowhere>"}, "REPORT_FROM", "not an email address"),
        ({"REPORT_RETRY_DELAYS_S": "5,-1"}, "REPORT_RETRY_DELAYS_S", "greater than 0"),
        ({"SMTP_TLS": "ssl"}, "SMTP_TLS", "'none', 'starttls' or 'tls'"),
        ({"SMTP_PORT": "0"}, "SMTP_PORT", "greater than or equal to 1"),
        ({"SMTP_HOST": "  "}, "SMTP_HOST", "host name"),
        ({"SMTP_USER": "reporter"}, "SMTP_PASSWORD", "required when SMTP_USER is set"),
        ({"SMTP_PASSWORD": "s3cret"}, "SMTP_PASSWORD", "given without SMTP_USER"),
        ({"SMTP_TIMEOUT_S": "0"}, "SMTP_TIMEOUT_S", "greater than 0"),
        (
            {"SMTP_TIMEOUT_S": "60", "REPORT_CLAIM_LEASE_S": "30"},
            "REPORT_CLAIM_LEASE_S",
            "longer than one sending attempt",
        ),
    ],
)
def test_a_bad_value_is_rejected_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str, says: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    line = next(
        (line for line in str(caught.value).splitlines() if line.startswith(f"  {variable}")),
        None,
    )
    assert line is not None, str(caught.value)
    assert says in line


def test_the_smtp_password_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2-very-secret")
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    assert "SMTP_PASSWORD" in str(caught.value)
    assert "hunter2" not in str(caught.value)
