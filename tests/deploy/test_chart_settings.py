"""What each rendered container starts with is what the service accepts: every variable
is a real setting, the settings load from them and pass the service's start-up checks,
the probes ask the service's own port, and the pods outlive the shutdown grace."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sandbox.settings import SandboxSettings
from shared.settings import Settings
from tests.deploy.chart import (
    REPO,
    SERVICES,
    Rendered,
    container,
    environment,
    helm_template,
    pod_spec,
    secret_refs,
)

#: Plausible contents of the Secrets the chart reads (the values are the operator's).
SECRET_STAND_INS = {
    "DATABASE_URL": "postgresql://notifications:pw@notifications-db-rw:5432/notifications",
}


def settings_for(service: str, rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the service's process builds from its rendered environment alone."""
    env = environment(rendered.deployment(service), rendered)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, SECRET_STAND_INS.get(name, value))
    return Settings(_env_file=None)


@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_is_a_real_setting(chart: Rendered, service: str) -> None:
    env = environment(chart.deployment(service), chart)
    fields = {name.upper() for name in Settings.model_fields}
    assert set(env) - fields == set()


@pytest.mark.parametrize("service", SERVICES)
def test_the_settings_accept_the_rendered_values(
    chart: Rendered, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(service, chart, monkeypatch)
    # a service with HTTP actions refuses development credentials outside dev mode
    problems = settings.credential_problems(signs_sessions=service == "api")
    assert problems == []
    assert settings.dev_mode is False
    assert settings.http_host == "0.0.0.0"
    assert settings.log_file is None  # stdout: the root filesystem is read-only
    assert settings.log_format == "json"


def test_every_secret_the_services_need_comes_from_a_secret(
    production_chart: Rendered,
) -> None:
    needs = {
        "api": {
            "DATABASE_URL",
            "KAFKA_SASL_PASSWORD",
            "CONSOLE_SESSION_SECRET",
            "OIDC_CONSOLE_CLIENT_SECRET",
        },
        "scheduler": {"DATABASE_URL", "KAFKA_SASL_PASSWORD"},
        "dispatcher": {"DATABASE_URL", "KAFKA_SASL_PASSWORD", "PROVIDER_TOKEN"},
        "reporter": {"DATABASE_URL", "KAFKA_SASL_PASSWORD", "SMTP_PASSWORD"},
    }
    for service, names in needs.items():
        assert set(secret_refs(production_chart.deployment(service))) == names, service


@pytest.mark.parametrize("service", SERVICES)
def test_probes_ask_the_service_on_its_own_port(
    chart: Rendered, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = container(chart.deployment(service))
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    listens_on = getattr(settings_for(service, chart, monkeypatch), f"{service}_port")
    assert ports == {"http": listens_on}
    for probe, path in (
        ("livenessProbe", "/health"),
        ("readinessProbe", "/ready"),
        ("startupProbe", "/health"),
    ):
        get = spec[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == listens_on
    service_object = chart.named("Service", f"notifications-{service}")
    (service_port,) = service_object["spec"]["ports"]
    assert ports.get(service_port["targetPort"]) == listens_on


def test_the_sandbox_listens_where_its_probes_and_the_dispatchers_look(
    sandbox_chart: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = sandbox_chart.deployment("sandbox")
    spec = container(sandbox)
    fields = {f"SANDBOX_{name.upper()}" for name in SandboxSettings.model_fields}
    env = environment(sandbox, sandbox_chart)
    assert set(env) <= fields
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = SandboxSettings(_env_file=None)
    ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
    assert ports == {"http": settings.port, "control": settings.control_port}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/health", "port": "control"}
    # the dispatchers' token is the sandbox's
    assert (
        secret_refs(sandbox)["SANDBOX_TOKEN"]
        == secret_refs(sandbox_chart.deployment("dispatcher"))["PROVIDER_TOKEN"]
    )


@pytest.mark.parametrize("service", SERVICES)
def test_commands_run_modules_that_exist(chart: Rendered, service: str) -> None:
    command = container(chart.deployment(service))["command"]
    assert command == ["python", "-m", f"services.{service}"]
    assert (REPO / "services" / service / "__main__.py").exists()


@pytest.mark.parametrize("service", SERVICES)
def test_pods_outlive_the_shutdown_grace(
    chart: Rendered, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    grace = settings_for(service, chart, monkeypatch).shutdown_grace_s
    assert pod_spec(chart.deployment(service))["terminationGracePeriodSeconds"] > grace


def test_a_termination_grace_within_the_shutdown_grace_is_refused(helm: Path) -> None:
    result = helm_template(helm, sets=["terminationGracePeriodSeconds=15"], check=False)
    assert result.returncode != 0
    assert "shutdownGraceSeconds" in result.stderr


def test_kafka_tls_files_are_mounted_where_the_settings_point(
    sandbox_chart: Rendered, production_chart: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rendered in (sandbox_chart, production_chart):
        for service in SERVICES:
            settings = settings_for(service, rendered, monkeypatch)
            deployment = rendered.deployment(service)
            volumes = {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}
            mounts = container(deployment)["volumeMounts"]
            files = [
                settings.kafka_ssl_cafile,
                settings.kafka_ssl_certfile,
                settings.kafka_ssl_keyfile,
            ]
            assert settings.kafka_ssl_cafile is not None
            for path in filter(None, files):
                (mount,) = [m for m in mounts if Path(m["mountPath"]) == path.parent]
                items = volumes[mount["name"]]["secret"]["items"]
                assert path.name in {item["path"] for item in items}


def test_production_logs_in_to_kafka_with_sasl_over_tls(
    production_chart: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for("dispatcher", production_chart, monkeypatch)
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_sasl_username == "notifications"
    assert settings.kafka_sasl_password is not None


def test_the_migrations_get_real_settings_they_accept(
    chart: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    (job,) = chart.of_kind("Job")
    env = environment(job, chart)
    assert set(env) <= {name.upper() for name in Settings.model_fields}
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, SECRET_STAND_INS.get(name, value))
    settings = Settings(_env_file=None)
    # shared/migrations/env.py reads the URL from the settings
    assert settings.database_url.startswith("postgresql+psycopg://notifications:")
    assert secret_refs(job)["DATABASE_URL"] == secret_refs(chart.deployment("api"))["DATABASE_URL"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_builds_its_app_from_the_rendered_settings_with_the_probed_routes(
    production_chart: Rendered, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`create_app` runs the service's start-up checks (credentials outside development
    mode) and mounts its routes; nothing connects until the lifespan starts."""
    import importlib

    settings = settings_for(service, production_chart, monkeypatch)
    app = importlib.import_module(f"services.{service}.main").create_app(settings)
    assert {"/health", "/ready", "/metrics"} <= set(app.openapi()["paths"])
