"""CustomResourceDefinitions of the operators the chart's resources are for, from the
operators' own Go modules (KEDA, the Prometheus Operator): `go mod download` once, the
CRD files copied into ``cache_dir()/crds/<module>@<version>/``.

Strimzi and CloudNativePG publish their CRDs in no registry reachable here: their schemas
are vendored in tests/deploy/crds/ (its README says from where).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tools.infra.base import InfraError, cache_dir, fetch_once, log


@dataclass(frozen=True)
class CrdModule:
    module: str
    version: str
    #: CRD files inside the module, relative to its root.
    files: tuple[str, ...]


KEDA = CrdModule(
    "github.com/kedacore/keda/v2",
    "v2.21.0",
    (
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ),
)
PROMETHEUS_OPERATOR = CrdModule(
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
    ("example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",),
)
MODULES = (KEDA, PROMETHEUS_OPERATOR)


def _go() -> str:
    go = shutil.which("go")
    if go is None and Path("/usr/local/go/bin/go").exists():
        go = "/usr/local/go/bin/go"
    if go is None:
        raise InfraError("Go is needed once to download the operators' CRDs (go mod download)")
    return go


def fetch_module_crds(spec: CrdModule) -> Path:
    """The directory holding `spec`'s CRD files (downloaded once)."""
    home = cache_dir() / "crds"
    target = home / f"{spec.module.replace('/', '_')}@{spec.version}"

    def download() -> str:
        log.info("fetching the CRDs of %s@%s (first run only)", spec.module, spec.version)
        result = subprocess.run(
            [_go(), "mod", "download", "-json", f"{spec.module}@{spec.version}"],
            cwd=home,
            env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        try:
            info = json.loads(result.stdout)
        except json.JSONDecodeError:
            info = {}
        if result.returncode != 0 or "Dir" not in info:
            raise InfraError(
                f"go mod download {spec.module}@{spec.version} failed: "
                f"{info.get('Error') or result.stderr[-2000:]}"
            )
        staging = home / f"{target.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in spec.files:
            shutil.copyfile(Path(info["Dir"]) / name, staging / Path(name).name)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return f"{spec.module}@{spec.version} {info.get('Sum', '')}\n"

    return fetch_once(home, target, home / f"{target.name}.complete", download)


def load_crds(vendored: Path | None = None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """openAPIV3Schema of every served version, by (group, version, kind): the modules'
    CRDs (fetched once) and the vendored ones (JSON files in `vendored`)."""
    documents: list[dict[str, Any]] = []
    for spec in MODULES:
        directory = fetch_module_crds(spec)
        for name in spec.files:
            text = (directory / Path(name).name).read_text()
            documents.extend(doc for doc in YAML(typ="safe").load_all(text) if doc)
    if vendored is not None:
        documents.extend(json.loads(path.read_text()) for path in sorted(vendored.glob("*.json")))
    schemas: dict[tuple[str, str, str], dict[str, Any]] = {}
    for crd in documents:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(group, version["name"], kind)] = schema
    return schemas
