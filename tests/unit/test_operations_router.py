"""The operations routes as a router of their own, without PostgreSQL or Kafka: what
answers before the lifespan has built a runtime."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from services.api.main import create_app
from shared.operations import operations_router
from shared.settings import Settings


@pytest.fixture(scope="module")
def client() -> TestClient:
    # No `with`: the lifespan does not run, nothing connects.
    return TestClient(create_app(Settings(api_tokens="unit-token", dev_mode=True)))


def test_health_answers_without_dependencies(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "api"}


def test_asyncapi_is_503_until_the_runtime_exists(client: TestClient) -> None:
    assert client.get("/asyncapi.json").status_code == 503
    assert client.get("/asyncapi").status_code == 503


def test_metrics_in_exposition_format(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/health", "GET"),
        ("DELETE", "/ready", "GET"),
        ("PUT", "/api/v1/clients/", "GET, POST"),
    ],
)
def test_405_names_the_allowed_methods(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_operations_routes_are_documented_under_their_tag(client: TestClient) -> None:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    for path in ("/health", "/ready", "/metrics"):
        assert paths[path]["get"]["tags"] == ["operations"]
    assert "/asyncapi" not in paths


def test_the_router_stands_alone() -> None:
    router = operations_router(service="x", title="X", description="x")
    paths = {getattr(route, "path", None) for route in router.routes}
    assert paths == {"/health", "/ready", "/metrics", "/asyncapi.json", "/asyncapi"}
