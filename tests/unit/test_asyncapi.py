"""Each Kafka service serves the AsyncAPI document of what it consumes and publishes.

The services run their real lifespan with PostgreSQL and Kafka unreachable: the
documents come from the registered subscribers and declared publishers, so they are
served while Kafka is down too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import unquote

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from services.api.main import create_app as api_app
from services.dispatcher.main import create_app as dispatcher_app
from services.reporter.main import create_app as reporter_app
from services.scheduler.main import create_app as scheduler_app
from shared.events import ClientEvent, MailingEvent, SendMessage, StatusEvent
from shared.kafka import topics_from
from tests.support.service_apps import offline_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI

    from shared.settings import Settings
    from shared.topics import Topics

Channels = set[tuple[str, frozenset[str]]]


def names(model: Any) -> frozenset[str]:
    """Schema names of an event model, or of each member of an event union."""
    if isinstance(model, type):
        return frozenset({model.__name__})
    union = get_args(model)[0]  # Annotated[A | B | C, Field(discriminator=...)]
    return frozenset(member.__name__ for member in get_args(union))


def expected(service: str, topics: Topics) -> tuple[Channels, Channels]:
    """(consumed, published) channels: topic and message schema names."""
    send = names(SendMessage)
    status = names(StatusEvent)
    retries = {(topics.message_send_retry(t), send) for t in range(1, topics.retry_tiers + 1)}
    if service == "api":
        return set(), {
            (topics.mailing_events, names(MailingEvent)),
            (topics.client_events, names(ClientEvent)),
            (topics.message_status, status),  # deleting a client cancels its messages
        }
    if service == "scheduler":
        return {
            (topics.mailing_events, names(MailingEvent)),
            (topics.client_events, names(ClientEvent)),
        }, {(topics.message_send, send), (topics.message_status, status)}
    if service == "dispatcher":
        return {(topics.message_send, send), *retries}, {
            *retries,
            (topics.message_send_dlq, send),
            (topics.message_status, status),
        }
    return {(topics.message_status, status)}, set()


APPS: dict[str, Callable[[Settings], FastAPI]] = {
    "api": api_app,
    "scheduler": scheduler_app,
    "dispatcher": dispatcher_app,
    "reporter": reporter_app,
}


@pytest.fixture
def offline() -> Settings:
    """Settings whose PostgreSQL and Kafka are not there."""
    return offline_settings()


async def fetch(app: FastAPI, *paths: str) -> list[Any]:
    async with (
        LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager,
        AsyncClient(transport=ASGITransport(app=manager.app), base_url="http://service") as http,
    ):
        return [await http.get(path) for path in paths]


def resolve(document: dict[str, Any], reference: str) -> Any:
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[unquote(part)]
    return node


def follow(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(document, node["$ref"])
    return node


def schema_names(document: dict[str, Any], payload: dict[str, Any]) -> frozenset[str]:
    """A payload's schema names: the referenced model, or each model of a `oneOf`."""
    target = follow(document, payload)
    if "oneOf" in target:
        return frozenset(ref["$ref"].rsplit("/", 1)[-1] for ref in target["oneOf"])
    return frozenset({payload["$ref"].rsplit("/", 1)[-1]})


def channels(document: dict[str, Any]) -> tuple[Channels, Channels]:
    found: dict[str, Channels] = {"receive": set(), "send": set()}
    for operation in document["operations"].values():
        channel = follow(document, operation["channel"])
        assert channel["bindings"]["kafka"]["topic"] == channel["address"]
        for message in operation["messages"]:
            payload = follow(document, message)["payload"]
            found[operation["action"]].add((channel["address"], schema_names(document, payload)))
    return found["receive"], found["send"]


def references(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in references(value)]
    return []


@pytest.mark.parametrize("service", list(APPS))
async def test_asyncapi_lists_what_the_service_consumes_and_publishes(
    service: str, offline: Settings
) -> None:
    app = APPS[service](offline)
    response, page = await fetch(app, "/asyncapi.json", "/asyncapi")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == app.title
    assert [server["host"] for server in document["servers"].values()] == [offline.kafka_bootstrap]
    consumed, published = channels(document)
    want_consumed, want_published = expected(service, topics_from(offline))
    assert consumed == want_consumed
    assert published == want_published
    # Every reference resolves (nested models such as MailingData are in the document).
    for reference in references(document):
        assert resolve(document, reference) is not None
    # The page renders that same document.
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f"<title>{app.title} AsyncAPI</title>" in page.text
    assert "AsyncApiStandalone.render" in page.text
    for topic, _ in want_consumed | want_published:
        assert topic in page.text


@pytest.mark.parametrize("service", list(APPS))
async def test_swagger_links_the_asyncapi_docs(service: str, offline: Settings) -> None:
    [openapi] = await fetch(APPS[service](offline), "/openapi.json")
    description = openapi.json()["info"]["description"]
    assert "(/asyncapi)" in description
    assert "(/asyncapi.json)" in description
    # The docs themselves are not API operations.
    assert not {"/asyncapi", "/asyncapi.json"} & set(openapi.json()["paths"])
