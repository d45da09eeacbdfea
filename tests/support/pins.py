"""Reading what the project pins: the locks of requirements/ (written by `make lock`)
and every container image that the Dockerfile, the compose stack, GitLab CI and the
Helm chart's values name."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from ruamel.yaml import YAML

from tests.support.deploy import CI_FILE, COMPOSE_FILE, DEPLOY, dockerfile_instructions, load_yaml
from tests.support.infra import REPO

if TYPE_CHECKING:
    from pathlib import Path

REQUIREMENTS = REPO / "requirements"
DEV_LOCK = REQUIREMENTS / "dev.lock"
RUNTIME_LOCK = REQUIREMENTS / "runtime.lock"
EMBEDDED_LOCK = REQUIREMENTS / "embedded.lock"
HELM = DEPLOY / "helm"

# What the locks are resolved for (`make lock`): the images' and CI's Python on Linux.
TARGET_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: frozenset[str]


def read_lock(path: Path) -> dict[str, Pin]:
    """A lock's pins by canonical name. Every entry must be `name==version` followed by
    sha256 hashes (what `pip install --require-hashes` accepts); anything else raises."""
    entries: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            entries.append(pending.strip())
            pending = ""
    if pending:
        entries.append(pending.strip())
    pins: dict[str, Pin] = {}
    for entry in entries:
        head, *hashes = entry.split(" --hash=")
        requirement = Requirement(head)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            raise ValueError(f"{path.name}: {head!r} is not pinned to one exact version")
        bad = [h for h in hashes if not _SHA256.fullmatch(h.strip())]
        if not hashes or bad:
            raise ValueError(f"{path.name}: {head!r} has no sha256 hash (or a malformed one)")
        name = canonicalize_name(requirement.name)
        if name in pins:
            raise ValueError(f"{path.name}: {name} is locked twice")
        pins[name] = Pin(name, Version(specifiers[0].version), frozenset(h.strip() for h in hashes))
    return pins


def pyproject() -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return loaded


def requirements_of(*groups: str) -> list[Requirement]:
    """pyproject.toml's requirements: `dependencies`, `build-system` or an extra's name."""
    config = pyproject()
    found: list[Requirement] = []
    for group in groups:
        if group == "dependencies":
            lines = config["project"]["dependencies"]
        elif group == "build-system":
            lines = config["build-system"]["requires"]
        else:
            lines = config["project"]["optional-dependencies"][group]
        found += [Requirement(line) for line in lines]
    return found


def applies(requirement: Requirement, extra: str = "") -> bool:
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({**TARGET_ENVIRONMENT, "extra": extra})


# --- images -------------------------------------------------------------------------

# An exact release: major.minor.patch (a leading v, and a variant suffix such as
# -slim-bookworm or -dind, allowed), or an image digest.
_EXACT_TAG = re.compile(r"v?\d+\.\d+\.\d+(?:[.+-][A-Za-z0-9._-]+)?")
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")
# Images of PostgreSQL, whose releases have two numbers since 10 (15.19 is a release,
# 15 is every release of the major version): Docker's and CloudNativePG's.
_TWO_NUMBERS = re.compile(r"\d+\.\d+(?:-[A-Za-z0-9._-]+)?")
_TWO_NUMBER_RELEASES = {"postgres", "postgresql"}


def pin_problem(reference: str) -> str | None:
    """Why an image reference is not pinned to an exact version, or None when it is."""
    if _DIGEST.search(reference):
        return None
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{reference}: no tag (the registry's `latest`)"
    image, tag = last.split(":", 1)
    if image in _TWO_NUMBER_RELEASES and _TWO_NUMBERS.fullmatch(tag):
        return None
    if not _EXACT_TAG.fullmatch(tag):
        return f"{reference}: tag {tag!r} is not an exact version (major.minor.patch)"
    return None


_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?])?([^}]*)\}")


def _compose_default(value: str) -> str:
    """The reference compose uses when the variable is unset: `${VAR:-default}`."""
    return _COMPOSE_VARIABLE.sub(lambda match: match.group(2), value)


def dockerfile_images() -> list[str]:
    stages: set[str] = set()
    found: list[str] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword != "FROM":
            continue
        words = [w for w in arguments.split() if not w.startswith("--")]
        if words[0] not in stages:
            found.append(words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
    return found


def compose_images() -> list[str]:
    services: dict[str, dict[str, Any]] = load_yaml(COMPOSE_FILE)["services"]
    return [_compose_default(s["image"]) for s in services.values() if "image" in s]


def _image_name(entry: Any) -> str:
    return str(entry["name"] if isinstance(entry, dict) else entry)


def ci_images() -> list[str]:
    found: list[str] = []
    for job in load_yaml(CI_FILE).values():
        if not isinstance(job, dict):
            continue
        if "image" in job:
            found.append(_image_name(job["image"]))
        found += [_image_name(service) for service in job.get("services") or []]
    return found


def _chart_app_version(values: Path) -> str | None:
    for folder in values.parents:
        chart = folder / "Chart.yaml"
        if chart.exists():
            version = load_yaml(chart).get("appVersion")
            return None if version is None else str(version)
        if folder == HELM:
            break
    return None


def _helm_images(node: Any, app_version: str | None) -> list[str]:
    """`image: ref`, `image: {repository, tag, digest}` (values) and `imageName: ref`
    (CloudNativePG's Cluster), at any depth."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("image", "imageName") and isinstance(value, str):
                found.append(value)
            elif key == "image" and isinstance(value, dict) and "repository" in value:
                repository = str(value["repository"])
                if value.get("registry"):
                    repository = f"{value['registry']}/{repository}"
                if value.get("digest"):
                    found.append(f"{repository}@{value['digest']}")
                else:
                    # Helm's convention: an empty tag means the chart's appVersion.
                    found.append(f"{repository}:{value.get('tag') or app_version or ''}")
            else:
                found += _helm_images(value, app_version)
    elif isinstance(node, list):
        for item in node:
            found += _helm_images(item, app_version)
    return found


def helm_images() -> list[str]:
    """The images of deploy/helm's YAML files, if any: the chart's values, the example
    values and resources (templates/ is Go templates, Chart.yaml names none)."""
    found: list[str] = []
    files = sorted(HELM.rglob("*.yaml")) if HELM.exists() else []
    for path in files:
        if "templates" in path.relative_to(HELM).parts or path.name == "Chart.yaml":
            continue
        app_version = _chart_app_version(path)
        for document in YAML(typ="safe", pure=True).load_all(path.read_text()):
            found += _helm_images(document, app_version)
    return found
