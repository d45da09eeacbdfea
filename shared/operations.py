"""The operations routes every service serves, as a router of their own.

`/health` (the process is alive), `/ready` (PostgreSQL and Kafka really answer, the
service's consumers are started and none of them is failing; with an identity provider,
its keys could be read), `/metrics` (Prometheus),
and `/asyncapi` with `/asyncapi.json`: the AsyncAPI document of the topics the service
consumes and publishes (the page renders it with assets the service serves itself:
`shared.docs_pages`). No token: they are for operators and orchestrators.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel

from shared import docs_pages
from shared.asyncapi import specification
from shared.db import ping
from shared.kafka import probe_kafka
from shared.metrics import DEPENDENCY_UP, render_latest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from faststream.specification import Specification

    from shared.service import Runtime

TAG = "operations"
OPS_DOC = "Liveness, readiness and metrics for operators and orchestrators (no token needed)."
ASYNCAPI_DOC = """

Kafka: [AsyncAPI docs](/asyncapi) ([JSON](/asyncapi.json)) of the topics this service
consumes and publishes, with their message schemas.
"""


class Check(BaseModel):
    status: str
    checks: dict[str, str]
    failing: list[str] = []


async def readiness(runtime: Runtime) -> Check:
    settings = runtime.settings

    async def check(name: str, probe: Callable[[], Awaitable[Any]]) -> tuple[str, str]:
        try:
            async with asyncio.timeout(settings.ready_timeout_s):
                await probe()
        except Exception as exc:
            DEPENDENCY_UP.labels(runtime.service, name).set(0)
            reason = str(exc) or type(exc).__name__
            if not reason.startswith(type(exc).__name__):
                reason = f"{type(exc).__name__}: {reason}"
            return name, f"unavailable: {reason}"[:300]
        DEPENDENCY_UP.labels(runtime.service, name).set(1)
        return name, "ok"

    results = dict(
        await asyncio.gather(
            check("postgresql", lambda: ping(runtime.engine)),
            check("kafka", lambda: probe_kafka(settings)),
            *(check(name, probe) for name, probe in runtime.probes.items()),
        )
    )
    if results["kafka"] == "ok" and not runtime.broker_started.is_set():
        results["kafka"] = "unavailable: consumers not started yet"
    results.update(runtime.consumers.checks())
    failing = [name for name, result in results.items() if result != "ok"]
    return Check(status="unavailable" if failing else "ready", checks=results, failing=failing)


def operations_router(*, service: str, title: str, description: str) -> APIRouter:
    """The operations routes of one service's app (its runtime: `app.state.runtime`,
    set by the lifespan). `title` and `description` head its AsyncAPI document."""
    router = APIRouter()

    @router.get("/health", tags=[TAG], summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @router.get(
        "/ready",
        tags=[TAG],
        summary="Readiness: PostgreSQL and Kafka answer, consumers started and not failing",
        response_model=Check,
        responses={503: {"model": Check, "description": "A dependency is unavailable"}},
    )
    async def ready(request: Request) -> Response:
        result = await readiness(request.app.state.runtime)
        code = 200 if not result.failing else 503
        return JSONResponse(result.model_dump(), status_code=code)

    @router.get(
        "/metrics",
        tags=[TAG],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "Exposition format"}},
    )
    async def metrics() -> Response:
        body, content_type = render_latest()
        return Response(body, media_type=content_type)

    documents: list[Specification] = []

    def asyncapi(request: Request) -> Specification | None:
        """The document, built once the lifespan has registered subscribers."""
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is None:
            return None
        if not documents:
            documents.append(specification(runtime.broker, title=title, description=description))
        return documents[0]

    @router.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi_json(request: Request) -> Response:
        document = asyncapi(request)
        if document is None:
            return JSONResponse({"detail": "starting"}, status_code=503)
        return Response(document.to_json(), media_type="application/json")

    @router.get("/asyncapi", include_in_schema=False)
    async def asyncapi_html(request: Request) -> Response:
        document = asyncapi(request)
        if document is None:
            return JSONResponse({"detail": "starting"}, status_code=503)
        if docs_pages.asyncapi_assets_missing():
            return HTMLResponse(docs_pages.asyncapi_unavailable_html(), status_code=503)
        root = request.scope.get("root_path", "")
        return HTMLResponse(docs_pages.asyncapi_html(document.to_json(), document.title, root))

    return router
