"""The suite's fixtures and hooks; the helpers live in tests/support.

Each test is marked by its folder: `unit` (tests/unit: no PostgreSQL, no Kafka; `make
test-fast`), `integration` (tests/integration: one component on the real PostgreSQL
and/or Kafka), `e2e` (tests/e2e: the services as processes, the chaos soak), `deploy`
(tests/deploy: the Helm chart rendered and validated offline; `make helm-check`).

Session infrastructure: the real PostgreSQL and the real Kafka broker. `make test`
starts both (tools/infra) and passes DATABASE_URL / KAFKA_BOOTSTRAP; a bare `pytest`
starts them itself. Tests that need them fail loudly when they are missing: nothing
here skips. Keycloak (the `keycloak` fixture, tests/support/keycloak.py) is started the
first time a test asks for it, once per run, or taken from KEYCLOAK_URL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shared.db import create_engine, create_session_factory
from shared.settings import Settings
from tests.support.api_helpers import ApiClient
from tests.support.infra import Infra, make_settings
from tools.infra import KafkaServer, PostgresServer, free_port, run_migrations

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from tests.support.report_helpers import SmtpServer


# The browser harness: the `browser` and `offline_page` fixtures (Playwright, Chromium);
# the `keycloak` fixture: the OpenID Connect provider, started on first use.
pytest_plugins = ["tests.support.browser", "tests.support.keycloak"]

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "e2e", "deploy")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder; a unit test asking for PostgreSQL/Kafka is an error."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        kind = parts[0] if len(parts) > 1 else None
        if kind not in KINDS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(KINDS)}}}/")
        item.add_marker(getattr(pytest.mark, kind))
        fixtures = getattr(item, "fixturenames", ())
        if kind == "unit" and ("infra" in fixtures or "keycloak" in fixtures):
            raise pytest.UsageError(
                f"{item.nodeid}: needs PostgreSQL/Kafka/Keycloak (infra or keycloak "
                "fixture): it belongs in tests/integration or tests/e2e"
            )


def pytest_report_header() -> list[str]:
    lines = []
    if version := os.environ.get("INFRA_KAFKA_VERSION"):
        lines.append(f"kafka: {version} at {os.environ.get('KAFKA_BOOTSTRAP')}")
    if version := os.environ.get("INFRA_POSTGRES_VERSION"):
        lines.append(f"postgresql: {version}")
    if url := os.environ.get("KEYCLOAK_URL"):
        lines.append(f"keycloak: {os.environ.get('INFRA_KEYCLOAK_VERSION', 'external')} at {url}")
    return lines


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    database_url = os.environ.get("DATABASE_URL")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    started: list[KafkaServer | PostgresServer] = []
    try:
        if not database_url:
            pg = PostgresServer(tmp_path_factory.mktemp("pg"))
            pg.start()
            started.append(pg)
            database_url = pg.url
            run_migrations(database_url)
            os.environ["INFRA_POSTGRES_VERSION"] = pg.description
        if not bootstrap:
            kafka = KafkaServer(tmp_path_factory.mktemp("kafka"))
            kafka.start()
            started.append(kafka)
            bootstrap = kafka.bootstrap
            os.environ["INFRA_KAFKA_VERSION"] = kafka.description
        yield Infra(
            database_url=database_url,
            kafka_bootstrap=bootstrap,
            kafka_version=os.environ.get("INFRA_KAFKA_VERSION", "external"),
            postgres_version=os.environ.get("INFRA_POSTGRES_VERSION", "external"),
        )
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def settings(infra: Infra) -> Settings:
    return make_settings(infra)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings, application_name="tests")
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_session_factory(engine)


@pytest.fixture
async def api(infra: Infra) -> AsyncIterator[ApiClient]:
    """The admin API in-process (real PostgreSQL, real Kafka), with a valid token."""
    from asgi_lifespan import LifespanManager
    from httpx import ASGITransport, AsyncClient

    from services.api.main import create_app

    settings = make_settings(infra, api_tokens="test-token,second-token")
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30) as manager,
        AsyncClient(
            transport=ASGITransport(app=manager.app),
            base_url="http://testserver",
            headers={"Authorization": "Bearer test-token"},
        ) as client,
    ):
        yield ApiClient(client, settings, app)


@pytest.fixture
async def no_report_days(sessions: async_sessionmaker[AsyncSession]) -> None:
    """The daily-report tests' days (year 9999) forgotten, so each test starts afresh."""
    from tests.support.report_helpers import clear_report_days

    await clear_report_days(sessions)


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it receives."""
    from tests.support.report_helpers import SmtpServer

    server = await SmtpServer(free_port()).start()
    yield server
    await server.stop()
