"""What every service process shares: its runtime, lifespan and operational endpoints.

Each service builds its FastAPI app with `create_service_app`, giving its routers and its
wiring: one function (`Wire`) that builds the service's parts on the runtime, registers
its Kafka subscribers and returns the step that starts its background work. The app
serves the operations routes of `shared.operations` (`/health`, `/ready`, `/metrics`,
`/asyncapi`) besides the service's own, and `/docs` (`shared.docs_pages`: no CDN). A
service with Kafka consumers also measures their lag and runs the stall watchdog
(`shared.consumer_lag`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.asyncapi import declare_publishers
from shared.consumer_lag import watch_consumers
from shared.consuming import ConsumerHealth
from shared.db import create_engine, create_session_factory
from shared.docs_pages import install_docs
from shared.kafka import create_broker, ensure_topics, probe_kafka, topics_from
from shared.logging import KAFKA_CLIENT_NOISE, Outage, get_logger
from shared.metrics import BROKER_CONNECTED, HttpMetricsMiddleware
from shared.operations import ASYNCAPI_DOC, OPS_DOC, operations_router
from shared.outbox import OutboxRelay

if TYPE_CHECKING:
    from fastapi import APIRouter
    from faststream.kafka import KafkaBroker
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from shared.asyncapi import Published
    from shared.settings import Settings
    from shared.topics import Topics

log = get_logger(__name__)


@dataclass
class Runtime:
    """The objects a service's handlers and loops work with, built in the lifespan."""

    service: str
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    topics: Topics
    broker: KafkaBroker
    broker_started: asyncio.Event = field(default_factory=asyncio.Event)
    # Failing Kafka handlers (see `shared.consuming`); built in __post_init__.
    consumers: ConsumerHealth = field(init=False)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # More of `/ready`'s checks, by name: each raises when its dependency is unusable.
    probes: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.consumers = ConsumerHealth(
            self.service,
            retry_min_s=self.settings.consumer_retry_min_s,
            retry_max_s=self.settings.consumer_retry_max_s,
        )

    def on_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run `close` at shutdown, after the broker has stopped."""
        self.closers.append(close)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run a background loop for the life of the process; its crash is logged."""
        task = asyncio.create_task(_guarded(coro, name), name=name)
        self.tasks.append(task)

    def outbox_relay(self) -> OutboxRelay:
        """The service's outbox relay: every topic, recreating topics found deleted.

        Not started: the service's `Start` step runs `relay.run(broker_started)`.
        """
        return OutboxRelay(
            self.sessions,
            self.broker,
            topics=self.topics.all(),
            service=self.service,
            recreate_topics=lambda: ensure_topics(self.settings),
        )


async def _guarded(coro: Awaitable[None], name: str) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background_task_crashed", task=name)
        raise


Start = Callable[[FastAPI], Awaitable[None]]
"""A service's second step, once the app holds its runtime: its background work."""
Wire = Callable[[Runtime], Start]
"""A service's wiring, read in one place: builds its parts on the runtime, registers its
Kafka subscribers (before the broker starts) and returns its `Start` step."""
Setup = Callable[[Runtime, FastAPI], Awaitable[None]]
"""A part's own start step, for a `Start` to await (see the reporter's daily report)."""


async def _start_broker(runtime: Runtime) -> None:
    """Start consumers and producer, waiting out a Kafka that is not there yet.

    The process stays up (and `/ready` says 503) until Kafka answers; once started,
    aiokafka reconnects on its own through later outages.
    """
    delay = 0.5
    # The first failure is logged, then one reminder a minute; `kafka_started` says how
    # long it took and how many attempts failed.
    outage = Outage("kafka_start_failed", "kafka_start_still_failing", None)
    while True:
        try:
            # Probe first: a failed broker.start() leaves a half-built producer behind.
            await probe_kafka(runtime.settings)
            await ensure_topics(runtime.settings)
            await _uninterrupted(runtime.broker.start())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outage.failed(exc, retry_in_s=delay)
            with contextlib.suppress(Exception):
                await runtime.broker.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        runtime.broker_started.set()
        BROKER_CONNECTED.labels(runtime.service).set(1)
        log.info("kafka_started", bootstrap=runtime.settings.kafka_bootstrap, **outage.recovered())
        return


async def _uninterrupted(coro: Awaitable[None]) -> None:
    """Let `coro` finish even if we are cancelled meanwhile, then honour the cancel.

    A broker start cut in half leaves a producer nobody closes; finishing it lets the
    shutdown path stop it properly.
    """
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


# The Kafka client counts as recovered once the broker answers a probe and the client has
# not complained for this long (its last retries die down in the first seconds back).
_QUIET_S = 5.0


async def _watch_kafka_client(settings: Settings) -> None:
    """Write `kafka_connection_restored` once the broker is back (see KafkaClientNoise)."""
    while True:
        await asyncio.sleep(1.0)
        if not KAFKA_CLIENT_NOISE.down or KAFKA_CLIENT_NOISE.quiet_for() < _QUIET_S:
            continue
        try:
            await probe_kafka(settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # still away: the probe's own complaints were counted  # noqa: S110
            pass
        else:
            if KAFKA_CLIENT_NOISE.quiet_for() >= _QUIET_S:
                KAFKA_CLIENT_NOISE.restored()


def create_service_app(
    *,
    service: str,
    settings: Settings,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    wire: Wire | None = None,
    publishes: Sequence[Published] = (),
    openapi_tags: list[dict[str, Any]] | None = None,
) -> FastAPI:
    """Build a service's app; nothing connects until the lifespan runs.

    `publishes` names what the service publishes, for its AsyncAPI document (what it
    consumes comes from the subscribers `wire` registers).
    """
    app = FastAPI(
        title=title,
        description=description + ASYNCAPI_DOC,
        version="1.0.0",
        lifespan=functools.partial(
            _lifespan, service=service, settings=settings, wire=wire, publishes=publishes
        ),
        openapi_tags=[*(openapi_tags or []), {"name": "operations", "description": OPS_DOC}],
        docs_url=None,  # /docs and /redoc: install_docs, with assets served locally
        redoc_url=None,
    )
    install_docs(app)
    app.add_middleware(HttpMetricsMiddleware, service=service)
    app.include_router(operations_router(service=service, title=title, description=description))
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    return app


@contextlib.asynccontextmanager
async def _lifespan(
    app: FastAPI,
    *,
    service: str,
    settings: Settings,
    wire: Wire | None,
    publishes: Sequence[Published],
) -> AsyncIterator[None]:
    """The process's life: build the runtime, wire the service, start the broker in the
    background, serve; at shutdown stop the loops, the broker, the parts, the engine."""
    engine = create_engine(settings, application_name=service)
    runtime = Runtime(
        service=service,
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        topics=topics_from(settings),
        broker=create_broker(settings, client_id=service),
    )
    BROKER_CONNECTED.labels(service).set(0)
    start = wire(runtime) if wire is not None else None
    declare_publishers(runtime.broker, runtime.topics, publishes)
    app.state.runtime = runtime
    runtime.spawn(_start_broker(runtime), name="kafka-start")
    runtime.spawn(_watch_kafka_client(settings), name="kafka-client-outage")
    if runtime.broker.subscribers:
        request_exit = getattr(app.state, "request_exit", None)
        runtime.spawn(watch_consumers(runtime, request_exit), name="consumer-lag")
    try:
        # A start step that refuses (see `shared.api_keys.require_a_way_in`) still has
        # what was started before it stopped below.
        if start is not None:
            await start(app)
        log.info("service_started", port=_port(settings, service))
        yield
    finally:
        log.info("service_stopping")
        runtime.consumers.stop()
        for task in reversed(runtime.tasks):
            task.cancel()
        # Each step gets the grace at most: a step waiting on a broker or a database
        # that is gone (killed with the process's infrastructure) must not hold the
        # stop; the step is named in the log and left behind.
        grace = settings.shutdown_grace_s
        await bounded_step("background tasks", _gather(runtime.tasks), grace)
        # The broker's own stop waits up to the grace for the handlers in progress, then
        # commits and closes: a margin for those.
        await bounded_step("kafka clients", runtime.broker.stop(), grace + 5)
        for close in runtime.closers:
            await bounded_step(getattr(close, "__qualname__", "closer"), close(), grace)
        await bounded_step("database connections", engine.dispose(), grace)
        log.info("service_stopped")


async def _gather(tasks: Sequence[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


async def bounded_step(step: str, work: Awaitable[Any], timeout_s: float) -> bool:
    """Run one shutdown step for at most `timeout_s`; True if it finished. A step that
    overruns is cancelled and not waited for (a task that ignores its cancellation
    would hold the stop again); an error is logged, not raised: the next steps run."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        log.error("shutdown_step_timed_out", step=step, seconds=timeout_s)
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("shutdown_step_failed", step=step, error=repr(exc)[:300])
    return True


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Framework errors as JSON, with two corrections:

    - 405 lists every method the path allows (Starlette names only the first route's);
    - a body that cannot be parsed is bad input: 422 naming the body, like invalid JSON.
    """
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Asked route by route, method by method: an included router is one route of the
        # app whose own routes are not listed (it matches FULL for a method one of them has).
        allowed = {
            method
            for method in _METHODS
            if any(
                route.matches({**request.scope, "method": method})[0] == Match.FULL
                for route in request.app.router.routes
            )
        }
        headers["Allow"] = ", ".join(sorted(allowed))
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        return JSONResponse(
            {
                "detail": [
                    {
                        "field": "body",
                        "message": "request body could not be parsed",
                        "type": "body_unparsable",
                    }
                ]
            },
            status_code=422,
        )
    if exc.status_code == 204 or exc.status_code == 304:
        return Response(status_code=exc.status_code, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _port(settings: Settings, service: str) -> int | None:
    port = getattr(settings, f"{service}_port", None)
    return port if isinstance(port, int) else None
