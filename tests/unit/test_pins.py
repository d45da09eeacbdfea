"""Locked dependencies and pinned images: a build today installs what a build next month
installs.

- requirements/dev.lock (the dependencies, the `dev` extra, pip and setuptools),
  requirements/runtime.lock (the image's) and requirements/embedded.lock (the two
  fallback extras of tools/infra): every package at one exact version with its hashes,
  every requirement of pyproject.toml in them at a version its range admits, and the
  three locks agreeing with each other. `make lock` writes them.
- `make venv`, the Dockerfile and GitLab CI install from the locks; the venv the tests
  run in is the lock.
- Every container image (Dockerfile, compose, GitLab CI, the Helm chart's values) names
  an exact release or a digest: no `latest`, no bare major.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.deploy import CI_FILE, DOCKERFILE, dockerfile_instructions, load_yaml
from tests.support.infra import REPO
from tests.support.pins import (
    DEV_LOCK,
    EMBEDDED_LOCK,
    RUNTIME_LOCK,
    applies,
    ci_images,
    compose_images,
    dockerfile_images,
    helm_images,
    pin_problem,
    pyproject,
    read_lock,
    requirements_of,
)

# Each lock and the pyproject.toml groups it must cover.
LOCK_GROUPS = {
    DEV_LOCK: ("dependencies", "dev", "build-system"),
    RUNTIME_LOCK: ("dependencies", "build-system"),
    EMBEDDED_LOCK: ("dependencies", "embedded-kafka", "embedded-postgres"),
}
# Tools that must be exact so that a new release cannot turn CI red on its own.
CHECKERS = ("ruff", "mypy", "import-linter")


def makefile() -> str:
    return (REPO / "Makefile").read_text()


def rule(target: str) -> str:
    """The recipe of one Makefile rule."""
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile(), re.MULTILINE)
    assert match, f"no rule {target}"
    return match.group(1)


@pytest.mark.parametrize("lock", list(LOCK_GROUPS), ids=lambda path: path.name)
def test_every_requirement_is_locked_at_a_version_its_range_admits(lock: Path) -> None:
    pins = read_lock(lock)
    problems = []
    for requirement in requirements_of(*LOCK_GROUPS[lock]):
        if not applies(requirement):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement}: not locked")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement}: locked at {pin.version}")
    assert problems == []


def test_locks_are_exact_and_hashed() -> None:
    """read_lock refuses an entry without `==` or without a sha256 hash."""
    for lock in LOCK_GROUPS:
        pins = read_lock(lock)
        assert pins
        assert all(pin.hashes for pin in pins.values())


@pytest.mark.parametrize(
    "text",
    [
        "ruff>=0.8 \\\n    --hash=sha256:" + "a" * 64 + "\n",
        "ruff==0.17.6\n",
        "ruff==0.17.* \\\n    --hash=sha256:" + "a" * 64 + "\n",
        "ruff==0.17.6 \\\n    --hash=md5:0123\n",
    ],
)
def test_read_lock_refuses_what_require_hashes_would_not_install(text: str, tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(text)
    with pytest.raises(ValueError, match="ruff"):
        read_lock(path)


def test_linters_and_type_checker_are_pinned_in_the_dev_lock() -> None:
    pins = read_lock(DEV_LOCK)
    for name in CHECKERS:
        assert name in pins, name
    assert "uv" in pins  # `make lock` runs the locked uv


def test_runtime_and_embedded_locks_agree_with_the_dev_lock() -> None:
    """The image runs the versions the tests ran; the fallbacks install beside the dev
    lock without moving any of its packages."""
    dev = read_lock(DEV_LOCK)
    for lock in (RUNTIME_LOCK, EMBEDDED_LOCK):
        for name, pin in read_lock(lock).items():
            if name in dev:
                assert pin.version == dev[name].version, f"{lock.name}: {name}"
                assert pin.hashes == dev[name].hashes, f"{lock.name}: {name}"
    runtime = read_lock(RUNTIME_LOCK)
    dev_only = {canonicalize_name(r.name) for r in requirements_of("dev")} - {
        canonicalize_name(r.name) for r in requirements_of("dependencies")
    }
    # nothing of the test and lint tooling reaches the image
    assert dev_only & set(runtime) <= {"psutil"}  # psutil: also a dependency of a dependency
    for name in (*CHECKERS, "pytest", "uv", "hypothesis", "playwright"):
        assert name not in runtime, name


def test_the_venv_the_tests_run_in_is_the_dev_lock() -> None:
    """`make venv` installed every locked package at its locked version (and the
    extras the project asks for came with them)."""
    pins = read_lock(DEV_LOCK)
    installed: dict[str, str] = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
    }
    wrong = {
        name: (str(pin.version), installed.get(name))
        for name, pin in pins.items()
        if installed.get(name) != str(pin.version)
    }
    assert wrong == {}
    # what an extra of a requirement brings (psycopg[binary], uvicorn[standard], ...) is
    # locked too
    missing = []
    for requirement in requirements_of("dependencies", "dev"):
        for extra in requirement.extras:
            dist = importlib.metadata.distribution(requirement.name)
            for line in dist.requires or []:
                needed = Requirement(line)
                brought = needed.marker is not None and applies(needed, extra)
                if brought and canonicalize_name(needed.name) not in pins:
                    missing.append(f"{requirement.name}[{extra}]: {needed.name}")
    assert missing == []


def test_make_venv_installs_the_lock_and_then_the_project_alone() -> None:
    assert re.search(r"^LOCK := requirements/dev\.lock$", makefile(), re.MULTILINE)
    recipe = rule("$(STAMP)")
    install = recipe.index("pip install --quiet --require-hashes -r $(LOCK)")
    project = recipe.index("pip install --quiet --no-deps --no-build-isolation -e .")
    assert install < project
    prerequisites = re.search(r"^\$\(STAMP\):(.*)$", makefile(), re.MULTILINE)
    assert prerequisites
    assert "$(LOCK)" in prerequisites.group(1).split()


def test_make_lock_writes_every_lock_for_the_images_python() -> None:
    recipe = rule("lock")
    for lock in LOCK_GROUPS:
        target = "$(LOCK)" if lock == DEV_LOCK else lock.relative_to(REPO).as_posix()
        assert f"-o {target}" in recipe, lock.name
    flags = re.search(r"^LOCK_FLAGS = (.*)$", makefile(), re.MULTILINE)
    assert flags
    assert "--generate-hashes" in flags.group(1)
    python = re.search(r"--python-version (\d+\.\d+)", flags.group(1))
    assert python
    # the image's Python, the one ruff and mypy check against
    (base,) = dockerfile_images()
    assert re.fullmatch(rf"python:{re.escape(python.group(1))}\.\d+-slim-bookworm", base)
    config = pyproject()
    assert config["tool"]["mypy"]["python_version"] == python.group(1)
    assert config["tool"]["ruff"]["target-version"] == "py" + python.group(1).replace(".", "")
    assert sys.version_info[:2] == tuple(int(part) for part in python.group(1).split("."))


def test_ci_caches_pip_on_the_lock_and_runs_the_images_python() -> None:
    ci = load_yaml(CI_FILE)
    python_jobs = [job for job in ci.values() if isinstance(job, dict) and "cache" in job]
    keys = [
        cache["key"]["files"]
        for job in python_jobs
        for cache in job["cache"]
        if isinstance(cache.get("key"), dict) and cache["key"].get("prefix") == "pip"
    ]
    assert keys
    assert all(files == ["requirements/dev.lock"] for files in keys)
    (base,) = dockerfile_images()
    assert ci[".python"]["image"] == base.replace("-slim-", "-")


def test_dockerfile_installs_the_runtime_lock_with_hashes() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]
    assert any("pip install --require-hashes -r /tmp/runtime.lock" in run for run in runs)
    # the project itself adds nothing: --no-deps, built by the locked setuptools
    assert any(re.search(r"pip install --no-deps --no-build-isolation \.", run) for run in runs)
    assert DOCKERFILE.exists()


@pytest.mark.parametrize(
    ("reference", "pinned"),
    [
        ("python:3.11.16-slim-bookworm", True),
        ("quay.io/keycloak/keycloak:26.7.3", True),
        ("prom/prometheus:v3.5.0", True),
        ("docker:28.5.2-dind", True),
        ("localhost:5000/notifications:0.1.0", True),
        ("postgres@sha256:" + "0" * 64, True),
        ("postgres", False),
        ("postgres:latest", False),
        ("postgres:15.19-bookworm", True),
        ("postgres:15", False),
        ("postgres:15-bookworm", False),
        ("ghcr.io/cloudnative-pg/postgresql:15.14", True),
        ("ghcr.io/cloudnative-pg/postgresql:15", False),
        ("bitnami/kafka:4.1", False),
        ("python:3.11-slim", False),
        ("docker:28-dind", False),
        ("localhost:5000/notifications", False),
        ("notifications:", False),
    ],
)
def test_pin_problem_tells_exact_releases_from_moving_tags(reference: str, pinned: bool) -> None:
    assert (pin_problem(reference) is None) == pinned


def test_every_image_is_pinned_to_an_exact_release() -> None:
    images = {
        "Dockerfile": dockerfile_images(),
        "deploy/docker-compose.yml": compose_images(),
        ".gitlab-ci.yml": ci_images(),
        "deploy/helm": helm_images(),
    }
    assert len(images["Dockerfile"]) == 1
    assert len(images["deploy/docker-compose.yml"]) >= 7
    assert len(images[".gitlab-ci.yml"]) >= 4
    problems = [
        f"{source}: {problem}"
        for source, references in images.items()
        for reference in references
        if (problem := pin_problem(reference))
    ]
    assert problems == []
