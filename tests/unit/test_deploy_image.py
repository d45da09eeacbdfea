"""The container image and the GitLab CI pipeline: the Dockerfile installs dependencies
before the code, runs unprivileged and copies only what exists and the build context
lets in; the CI jobs run the Makefile's targets on the compose stack's PostgreSQL and
Kafka images, and push the image to the project's registry.

Nothing is built or run (no Docker engine here). The compose file, Prometheus and
Grafana: tests/unit/test_deploy.py.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.sandbox.settings import SandboxSettings
from tests.support.deploy import (
    CI_FILE,
    COMPOSE_FILE,
    dockerfile_env,
    dockerfile_instructions,
    in_build_context,
    load_yaml,
    python_module,
    runnable,
    setting_names,
)
from tests.support.infra import REPO


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(CI_FILE)
    return loaded


def test_image_is_python_311_slim_and_runs_unprivileged() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", instructions[0][1])
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "no USER: the services would run as root"
    assert users[-1] not in ("root", "0")
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("USER") < keywords.index("CMD")


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    """A change of the code reuses the dependency layer (only the runtime lock before it),
    and the dependencies are the locked ones, checked against their hashes."""
    instructions = dockerfile_instructions()
    first_install = next(
        i for i, (k, a) in enumerate(instructions) if k == "RUN" and "pip install" in a
    )
    copied_before = [a for k, a in instructions[:first_install] if k == "COPY"]
    assert copied_before == ["requirements/runtime.lock /tmp/runtime.lock"]
    assert re.search(
        r"pip install --require-hashes -r /tmp/runtime\.lock(\s|$)",
        instructions[first_install][1],
    )
    project_install = [
        a for k, a in instructions[first_install + 1 :] if k == "RUN" and "pip install" in a
    ]
    assert any(re.search(r"pip install .*--no-deps.* \.(\s|$)", a) for a in project_install)


def test_dockerfile_copies_what_exists_and_the_context_lets_in() -> None:
    sources = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            parts = [p for p in arguments.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert {"shared", "services", "alembic.ini", "pyproject.toml", "requirements/runtime.lock"} <= {
        s.rstrip("/").removeprefix("./") for s in sources
    }
    for source in sources:
        path = REPO / source
        assert path.exists(), source
        assert in_build_context(source), f"{source} is excluded by .dockerignore"
        if path.is_dir():
            for file in path.rglob("*.py"):
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" not in relative:
                    assert in_build_context(relative), relative


@pytest.mark.parametrize(
    "path", [".env", ".git", ".venv/bin/python", ".dev/postgres", "statistic.log"]
)
def test_build_context_leaves_out_secrets_and_local_state(path: str) -> None:
    assert not in_build_context(path)


def test_image_default_command_and_settings() -> None:
    instructions = dockerfile_instructions()
    (cmd,) = [json.loads(a) for k, a in instructions if k == "CMD"]
    module = python_module(cmd)
    assert module is not None
    assert runnable(module)
    env = dockerfile_env()
    # reachable from other containers, not only from inside its own
    assert env["HTTP_HOST"] == "0.0.0.0"
    assert env["SANDBOX_HOST"] == "0.0.0.0"
    settings = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    sandbox = {f"SANDBOX_{name.upper()}" for name in SandboxSettings.model_fields}
    assert settings - setting_names() - sandbox == set()
    # alembic upgrade head runs from the working directory: alembic.ini must be there
    workdir = next(a for k, a in instructions if k == "WORKDIR")
    assert workdir == "/app"
    assert any(k == "COPY" and "alembic.ini" in a.split()[:-1] for k, a in instructions)
    assert any(k == "COPY" and a.split()[-1] in ("./", "/app/") for k, a in instructions)


def script(job: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key in ("before_script", "script"):
        lines += [str(line) for line in job.get(key) or []]
    return lines


def test_pipeline_stages(ci: dict[str, Any]) -> None:
    assert ci["stages"] == ["lint", "test", "build"]
    stages = {
        name: job["stage"] for name, job in ci.items() if isinstance(job, dict) and "stage" in job
    }
    assert stages == {"lint": "lint", "test": "test", "build": "build"}


def test_lint_job_runs_ruff_and_mypy_through_the_makefile(ci: dict[str, Any]) -> None:
    targets = [
        target
        for line in script(ci["lint"])
        if line.startswith("make ")
        for target in line.split()[1:]
    ]
    assert "lint" in targets
    assert "typecheck" in targets
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lint:.*\n\t\$\(BIN\)/ruff check", makefile, re.MULTILINE)
    assert re.search(r"^typecheck:.*\n\t\$\(BIN\)/mypy", makefile, re.MULTILINE)


def test_test_job_runs_the_suite_on_service_containers(
    ci: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    job = ci["test"]
    containers = {entry["alias"]: entry for entry in job["services"]}
    # the same PostgreSQL and Kafka as the compose stack
    assert containers["postgres"]["name"] == services["postgres"]["image"]
    assert containers["kafka"]["name"] == services["kafka"]["image"]
    kafka_env = {k: str(v) for k, v in containers["kafka"]["variables"].items()}
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    advertised = urlsplit(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).netloc

    lines = script(job)
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
    )
    database = urlsplit(exports["DATABASE_URL"])
    assert database.hostname == "postgres"
    assert database.path == "/" + containers["postgres"]["variables"]["POSTGRES_DB"]
    assert exports["KAFKA_BOOTSTRAP"] == advertised
    run = next(i for i, line in enumerate(lines) if line.startswith("make pytest"))
    assert run > max(i for i, line in enumerate(lines) if line.startswith("export "))
    junit = re.search(r"--junitxml=(\S+?)\"?$", lines[run])
    assert junit
    assert job["artifacts"]["reports"]["junit"] == junit.group(1)
    assert job["artifacts"]["when"] == "always"


def test_no_kafka_variable_reaches_the_broker_container_by_accident(ci: dict[str, Any]) -> None:
    """Job variables are passed to service containers, and the Kafka image turns every
    KAFKA_* variable into a broker property: the job itself defines none."""
    for scope in (ci.get("variables") or {}, ci["test"].get("variables") or {}):
        assert [name for name in scope if name.startswith("KAFKA_")] == []


def test_build_job_pushes_the_image_to_the_project_registry(ci: dict[str, Any]) -> None:
    job = ci["build"]
    text = "\n".join(script(job))
    assert "docker build" in text
    assert "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHORT_SHA" in text
    assert 'docker push --all-tags "$CI_REGISTRY_IMAGE"' in text
    assert 'docker login -u "$CI_REGISTRY_USER"' in text
    merge_requests = [
        rule for rule in job["rules"] if "merge_request_event" in str(rule.get("if", ""))
    ]
    assert [rule["variables"]["PUSH"] for rule in merge_requests] == ["false"]
