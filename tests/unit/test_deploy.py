"""The container deployment: Dockerfile, docker-compose, Prometheus, Grafana, GitLab CI.

There is no Docker engine here, so nothing is started: the compose file and the GitLab
CI file are validated against their published schemas (check-jsonschema's vendored
copies, offline), and every file is checked against the project itself: the settings a
container gets are real settings with acceptable values, the services point at each
other correctly, the start order waits for migrations and healthy infrastructure, the
commands run modules that exist, and the paths mounted exist.

The Dockerfile and the GitLab CI jobs themselves: tests/unit/test_deploy_image.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.sandbox.settings import SandboxSettings, load_sandbox_settings
from shared.settings import Settings, load_settings
from tests.support.deploy import (
    APP_SERVICES,
    CI_FILE,
    COMPOSE_FILE,
    DEPLOY,
    DOCKERFILE,
    dockerfile_env,
    load_yaml,
    python_module,
    runnable,
    setting_names,
)
from tests.support.infra import REPO

# ------------------------------------------------------------------------- helpers


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# The secrets compose requires (`${VAR:?message}`): no default credential. The tests
# read the file as an operator's `deploy/.env` with these set would.
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "CONSOLE_SESSION_SECRET": "session-secret",
    "GRAFANA_ADMIN_PASSWORD": "grafana-secret",
    "KEYCLOAK_ADMIN_PASSWORD": "keycloak-secret",
}


def interpolate(value: object, env: dict[str, str] | None = None) -> str:
    """Compose's variable substitution: `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?message}` (required)."""
    env = REQUIRED_SECRETS if env is None else env

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        value = env.get(name)
        if (operator == ":-" and not value) or (operator == "-" and value is None):
            return argument
        if operator in (":?", "?") and not value:
            raise ValueError(f"${{{name}}} is required: {argument}")
        return value or ""

    return _VARIABLE.sub(substitute, str(value))


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as its container gets it with no variable set by the user."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {name: interpolate("" if value is None else value) for name, value in raw.items()}


def port_setting(service: str, env: dict[str, str]) -> int:
    """The HTTP port a project service listens on: its *_PORT setting or the default."""
    if service == "sandbox":
        return int(env.get("SANDBOX_PORT", SandboxSettings.model_fields["port"].default))
    field = f"{service}_port"
    return int(env.get(field.upper(), Settings.model_fields[field].default))


def published_host_ports(service: dict[str, Any]) -> list[str]:
    """Host ports fixed by a service's `ports` (a port given alone is picked by Docker)."""
    fixed = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published"):
                fixed.append(str(entry["published"]))
            continue
        parts = interpolate(entry).split("/")[0].split(":")
        if len(parts) > 1:
            fixed.append(parts[-2])
    return fixed


def healthcheck_url(service: dict[str, Any]) -> tuple[int, str]:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", test)
    assert match, f"no local HTTP probe in {test!r}"
    return int(match.group(1)), match.group(2)


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume: a host path (starts with . or /) or a volume name."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append((str(entry.get("source", "")), str(entry["target"])))
        else:
            source, target = interpolate(entry).split(":")[:2]
            mounts.append((source, target))
    return mounts


# ------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def project_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The containers built from the project's Dockerfile."""
    return {name: service for name, service in services.items() if "build" in service}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No setting inherited from the environment this test runs in, nor from a `.env`."""
    sandbox_names = {f"SANDBOX_{name.upper()}" for name in SandboxSettings.model_fields}
    for name in setting_names() | sandbox_names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


# ------------------------------------------------------------------------- schemas


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("schema", "path"),
    [("vendor.compose-spec", COMPOSE_FILE), ("vendor.gitlab-ci", CI_FILE)],
    ids=["compose", "gitlab-ci"],
)
def test_file_is_valid_against_its_published_schema(schema: str, path: Path) -> None:
    result = check_jsonschema(schema, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize(
    ("schema", "path", "old", "new"),
    [
        (
            "vendor.compose-spec",
            COMPOSE_FILE,
            "condition: service_completed_successfully",
            "condition: service_finished",
        ),
        ("vendor.gitlab-ci", CI_FILE, "when: always", "when: sometimes"),
    ],
    ids=["compose", "gitlab-ci"],
)
def test_schema_check_rejects_a_broken_file(
    tmp_path: Path, schema: str, path: Path, old: str, new: str
) -> None:
    text = path.read_text()
    assert old in text
    broken = tmp_path / path.name
    broken.write_text(text.replace(old, new, 1))
    result = check_jsonschema(schema, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors were encountered" in result.stdout


# ------------------------------------------------------------------------- compose


def test_every_variable_has_a_default_except_the_secrets() -> None:
    """`docker compose up -d` needs only the secrets (each named when missing); every
    other ${VAR} has a default, and no secret has one."""
    text = COMPOSE_FILE.read_text()
    references = re.findall(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", text)
    assert references
    assert len(references) == text.count("${")
    required = {name for name, operator, _ in references if operator == ":?"}
    assert required == set(REQUIRED_SECRETS)
    assert all(said.startswith(f"set {name}") for name, op, said in references if op == ":?")
    assert not [name for name, op, _ in references if op == ":-" and name in REQUIRED_SECRETS]
    with pytest.raises(ValueError, match="CONSOLE_SESSION_SECRET"):
        interpolate("${CONSOLE_SESSION_SECRET:?set CONSOLE_SESSION_SECRET}", {})


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    one_shot = {
        name
        for service in services.values()
        for name, dependency in (service.get("depends_on") or {}).items()
        if dependency.get("condition") == "service_completed_successfully"
    }
    assert one_shot == {"migrate"}
    for name, service in services.items():
        if name in one_shot:
            assert service.get("restart") == "no", name
            assert "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_migrations_run_once_before_the_services(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert "build" in migrate
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert set(environment(migrate)) == {"DATABASE_URL"}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_waits_for_migrations_and_healthy_infrastructure(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["migrate"] == {"condition": "service_completed_successfully"}
    assert depends_on["postgres"] == {"condition": "service_healthy"}
    assert depends_on["kafka"] == {"condition": "service_healthy"}


def test_every_dependency_exists_and_can_become_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"


def test_dispatcher_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    dispatcher = services["dispatcher"]
    assert "container_name" not in dispatcher
    assert "hostname" not in dispatcher
    assert published_host_ports(dispatcher) == []
    assert dispatcher["depends_on"]["sandbox"] == {"condition": "service_healthy"}


def test_no_two_services_publish_the_same_host_port(
    services: dict[str, dict[str, Any]],
) -> None:
    published = [port for service in services.values() for port in published_host_ports(service)]
    assert len(published) == len(set(published)), published


def test_every_project_service_runs_the_image_built_from_the_dockerfile(
    project_services: dict[str, dict[str, Any]],
) -> None:
    assert set(project_services) == {*APP_SERVICES, "migrate", "sandbox"}
    # tagged with the project's version: never `latest`
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, service in project_services.items():
        build = service["build"]
        assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).resolve() == (
            DOCKERFILE
        ), name
        # every container of the stack runs the same image, built once
        assert interpolate(service["image"]) == f"notifications:{version}", name


def test_project_commands_run_modules_that_exist(
    project_services: dict[str, dict[str, Any]],
) -> None:
    for name, service in project_services.items():
        if name == "migrate":
            continue
        assert python_module(service["command"]) == f"services.{name}", name
        assert runnable(f"services.{name}"), name


def test_environment_names_are_real_settings(
    project_services: dict[str, dict[str, Any]],
) -> None:
    known = setting_names()
    sandbox_known = known | {f"SANDBOX_{name.upper()}" for name in SandboxSettings.model_fields}
    for name, service in project_services.items():
        names = set(environment(service))
        unknown = names - (sandbox_known if name == "sandbox" else known)
        assert unknown == set(), f"{name}: not settings: {sorted(unknown)}"


@pytest.mark.parametrize("name", [*APP_SERVICES, "migrate", "sandbox"])
def test_environment_values_are_accepted_by_the_settings(
    clean_environment: pytest.MonkeyPatch,
    project_services: dict[str, dict[str, Any]],
    name: str,
) -> None:
    for variable, value in environment(project_services[name]).items():
        clean_environment.setenv(variable, value)
    settings = load_settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    # Not development mode, and nothing that would make a service refuse to start.
    assert not settings.dev_mode
    assert settings.credential_problems(signs_sessions=name == "api") == []
    if name in ("api", "reporter"):
        assert settings.oidc_enabled
    if name == "sandbox":
        sandbox = load_sandbox_settings([])
        assert sandbox.control_port != sandbox.port


def test_services_reach_postgresql_and_kafka(
    services: dict[str, dict[str, Any]],
    project_services: dict[str, dict[str, Any]],
) -> None:
    postgres = environment(services["postgres"])
    kafka = environment(services["kafka"])
    advertised = [
        urlsplit(listener).netloc for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    ]
    for name, service in project_services.items():
        env = environment(service)
        if "DATABASE_URL" in env:
            url = urlsplit(env["DATABASE_URL"])
            assert url.hostname == "postgres", name
            assert (url.port or 5432) == 5432, name
            assert url.path == "/" + postgres["POSTGRES_DB"], name
            assert url.username == postgres["POSTGRES_USER"], name
            assert url.password == postgres["POSTGRES_PASSWORD"], name
        elif name != "sandbox":
            raise AssertionError(f"{name} has no DATABASE_URL")
        if name in APP_SERVICES:
            assert env["KAFKA_BOOTSTRAP"] in advertised, name


def test_kafka_runs_in_kraft_mode_on_one_node(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["CLUSTER_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{env['KAFKA_NODE_ID']}@localhost:9093"]
    # a single broker cannot hold three replicas of the internal topics
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    data = dict(volume_mounts(kafka))
    assert data["kafka-data"] == env["KAFKA_LOG_DIRS"]


def test_dispatcher_sends_to_the_sandbox_with_its_token(
    services: dict[str, dict[str, Any]],
) -> None:
    dispatcher = environment(services["dispatcher"])
    sandbox = environment(services["sandbox"])
    assert dispatcher["PROVIDER_URL"] == f"http://sandbox:{port_setting('sandbox', sandbox)}/v1"
    assert dispatcher["PROVIDER_TOKEN"] == sandbox["SANDBOX_TOKEN"]


def test_reporter_mails_the_mail_catcher(services: dict[str, dict[str, Any]]) -> None:
    reporter = environment(services["reporter"])
    assert reporter["SMTP_HOST"] == "mailpit"
    assert reporter["SMTP_PORT"] == "1025"  # mailpit's SMTP port
    assert "@" in reporter["REPORT_RECIPIENTS"]
    assert "@" in reporter["REPORT_FROM"]
    assert services["mailpit"]["healthcheck"]["test"] == ["CMD", "/mailpit", "readyz"]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_healthcheck_asks_the_service_whether_it_is_ready(
    project_services: dict[str, dict[str, Any]], name: str
) -> None:
    service = project_services[name]
    port, path = healthcheck_url(service)
    assert path == "/ready"
    assert port == port_setting(name, environment(service))


def test_sandbox_healthcheck_uses_the_port_an_outage_never_closes(
    project_services: dict[str, dict[str, Any]],
) -> None:
    sandbox = project_services["sandbox"]
    port, path = healthcheck_url(sandbox)
    assert path == "/health"
    env = environment(sandbox)
    assert port == int(env["SANDBOX_CONTROL_PORT"])


def test_mounted_host_paths_exist_and_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, _target in volume_mounts(service):
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source}"
                assert (COMPOSE_FILE.parent / source).resolve().is_relative_to(REPO), source
            else:
                assert source in declared, f"{name}: undeclared volume {source}"


def test_logs_of_every_service_land_in_one_volume(
    project_services: dict[str, dict[str, Any]],
) -> None:
    log_file = dockerfile_env()["LOG_FILE"]
    for name, service in project_services.items():
        assert ("logs", str(Path(log_file).parent)) in volume_mounts(service), name


# ---------------------------------------------------------------------- prometheus


def test_prometheus_scrapes_every_service(
    services: dict[str, dict[str, Any]], project_services: dict[str, dict[str, Any]]
) -> None:
    prometheus = services["prometheus"]
    config_path = next(
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    )
    mounted = {target: source for source, target in volume_mounts(prometheus)}
    config_file = COMPOSE_FILE.parent / mounted[config_path]
    config = load_yaml(config_file)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(APP_SERVICES) <= set(jobs)
    for name in ("api", "scheduler", "reporter"):
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for group in job["static_configs"] for t in group["targets"]]
        port = port_setting(name, environment(project_services[name]))
        assert targets == [f"{name}:{port}"]
    dispatcher = jobs["dispatcher"]
    assert "static_configs" not in dispatcher
    (discovery,) = dispatcher["dns_sd_configs"]
    assert discovery["names"] == ["dispatcher"]
    assert discovery["type"] == "A"
    assert discovery["port"] == port_setting("dispatcher", environment(services["dispatcher"]))


# ------------------------------------------------------------------------- grafana


def test_grafana_provisions_prometheus_and_the_dashboards(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    mounted = {target: source for source, target in volume_mounts(grafana)}
    provisioning = COMPOSE_FILE.parent / mounted["/etc/grafana/provisioning"]

    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    (prometheus,) = [source for source in datasources if source["uid"] == "prometheus"]
    assert prometheus["type"] == "prometheus"
    url = urlsplit(prometheus["url"])
    assert url.hostname in services
    assert url.hostname == "prometheus"
    assert url.port == 9090

    (provider,) = load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "Notifications"
    dashboards_dir = provider["options"]["path"]
    assert dashboards_dir == "/var/lib/grafana/dashboards"
    source = COMPOSE_FILE.parent / mounted[dashboards_dir]
    assert source.resolve() == (DEPLOY / "grafana" / "dashboards").resolve()
    for dashboard in source.glob("*.json"):
        json.loads(dashboard.read_text())
