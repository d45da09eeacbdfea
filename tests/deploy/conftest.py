"""The chart rendered once per run with each set of values the tests read.

Helm is the one on PATH or the cached build of tools/helm.py (built from its Go module
the first time, a few minutes); the operators' CRDs come from tools/crds.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart import PRODUCTION_VALUES, Rendered, render
from tools.crds import load_crds
from tools.helm import find_helm

VENDORED_CRDS = Path(__file__).resolve().parent / "crds"

#: Values that turn on what the defaults leave off: the sandbox, the HPA, the
#: ServiceMonitor, Kafka over TLS with a client certificate.
SANDBOX_SETS = (
    "sandbox.enabled=true",
    "autoscaling.mode=hpa",
    "serviceMonitor.enabled=true",
    "kafka.securityProtocol=SSL",
    "kafka.tls.caSecret.name=kafka-ca",
    "kafka.tls.clientCertSecret.name=kafka-user",
    "oidc.issuer=https://login.example.com/realms/notifications",
)


@pytest.fixture(scope="session")
def helm() -> Path:
    return find_helm()


@pytest.fixture(scope="session")
def default_chart(helm: Path) -> Rendered:
    return render(helm)


@pytest.fixture(scope="session")
def production_chart(helm: Path) -> Rendered:
    return render(helm, PRODUCTION_VALUES)


@pytest.fixture(scope="session")
def sandbox_chart(helm: Path) -> Rendered:
    return render(helm, sets=SANDBOX_SETS)


@pytest.fixture(scope="session", params=["default", "production", "sandbox"])
def chart(request: pytest.FixtureRequest) -> Rendered:
    rendered: Rendered = request.getfixturevalue(f"{request.param}_chart")
    return rendered


@pytest.fixture(scope="session")
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    return load_crds(VENDORED_CRDS)
