"""The SMS gateway client, behind one small interface.

`POST {PROVIDER_URL}/send/{msgId}` with `{"id", "phone", "text"}` and the bearer token.
Success is a 200 whose body is exactly `{"code": 0, ...}`; anything else is classified:
permanent (4xx other than 401/403/404/405/408/429), auth (401/403: a configuration
fault, not the message's), config (404/405: no such endpoint, a wrong `PROVIDER_URL`),
or transient (timeouts, connection errors, 5xx, 408, 429, malformed answers).
A `Retry-After` is read as seconds or an HTTP date and clamped to
`MAX_RETRY_AFTER_S`; a value that is neither is ignored.

httpx runs on `Http1Transport` (`http1.py`): keep-alive HTTP/1.1 connections parsed by
httptools. httpx's own pool manages a few hundred requests per second here, the aiohttp
transport well over a thousand, and this one about twice as many for half the CPU
(`make bench-gateway`; docs/benchmarks.md): the gateway client is on the hot path.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Protocol

import aiohttp
import httpx
import orjson

from services.dispatcher.http1 import Http1Transport

if TYPE_CHECKING:
    from shared.settings import Settings


class Outcome(enum.StrEnum):
    OK = "ok"
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    AUTH = "auth"
    CONFIG = "config"


# The longest wait a gateway's Retry-After can impose on a message (one hour).
MAX_RETRY_AFTER_S = 3600.0


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    # True when the gateway may have acted on the request (sent, then no clear answer).
    ambiguous: bool = False


def classify(status: int, body: bytes, retry_after: str | None = None) -> Result:
    """Turn an HTTP answer into an outcome. Pure: unit-tested on its own."""
    if status == 200:
        try:
            parsed = json.loads(body)
        except ValueError:
            return Result(Outcome.TRANSIENT, status, "malformed 200: not JSON", ambiguous=True)
        if isinstance(parsed, dict) and parsed.get("code") == 0 and type(parsed["code"]) is int:
            return Result(Outcome.OK, status)
        return Result(Outcome.TRANSIENT, status, f"malformed 200: {body[:80]!r}", ambiguous=True)
    if status in (401, 403):
        return Result(Outcome.AUTH, status, f"gateway refused the token ({status})")
    if status in (404, 405):
        return Result(Outcome.CONFIG, status, f"gateway has no such endpoint ({status})")
    if status == 429:
        return Result(Outcome.TRANSIENT, status, "rate limited (429)", _seconds(retry_after))
    if status == 408:
        return Result(Outcome.TRANSIENT, status, "gateway timeout (408)", ambiguous=True)
    if 400 <= status < 500:
        return Result(Outcome.PERMANENT, status, f"rejected ({status}): {body[:120]!r}")
    return Result(Outcome.TRANSIENT, status, f"gateway error ({status})", ambiguous=True)


def _seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds in 0..MAX_RETRY_AFTER_S: delay-seconds or an HTTP date
    (RFC 9110); anything else (garbage, nan) is ignored, like a missing header."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


class Gateway(Protocol):
    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result: ...

    async def close(self) -> None: ...


class HttpGateway:
    """httpx requests sent straight through the transport.

    `AsyncClient.send` wraps each request in machinery this client never uses (auth
    flows, redirects, a cookie jar, base-URL merging): about a fifth of the
    dispatcher's CPU per message in a profile. The requests and responses are still
    httpx's, on the same transport and connection pool; the total deadline is ours.
    """

    def __init__(self, settings: Settings) -> None:
        self.base = str(settings.provider_url).rstrip("/")
        self.transport = Http1Transport(max_connections=settings.provider_concurrency)
        self.headers = httpx.Headers(
            {
                "Authorization": f"Bearer {settings.provider_token.get_secret_value()}",
                "Content-Type": "application/json",
            }
        )
        self.timeout = httpx.Timeout(settings.provider_timeout_s).as_dict()

    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result:
        body = orjson.dumps({"id": message_id, "phone": int(phone), "text": text})
        sent = False
        try:
            # A total deadline: per-phase timeouts let a slow drip run on.
            async with asyncio.timeout(deadline_s):
                request = httpx.Request(
                    "POST",
                    f"{self.base}/send/{message_id}",
                    headers=self.headers,
                    content=body,
                    extensions={"timeout": self.timeout},
                )
                sent = True
                response = await self.transport.handle_async_request(request)
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            return Result(
                Outcome.TRANSIENT, None, f"no answer within {deadline_s:.1f} s", ambiguous=sent
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # No connection, so no request: safe to retry whether the gateway
            # de-duplicates or not (the aiohttp transport reports a refused connection
            # as a ConnectTimeout).
            return Result(Outcome.TRANSIENT, None, f"connection failed: {exc!s:.120}")
        except httpx.HTTPError as exc:
            return Result(Outcome.TRANSIENT, None, f"transport error: {exc!r:.120}", ambiguous=True)
        return classify(response.status_code, content, response.headers.get("retry-after"))

    async def close(self) -> None:
        await self.transport.aclose()


class AiohttpGateway:
    """The same calls on aiohttp alone (`PROVIDER_CLIENT=aiohttp`): less per-request work
    than httpx's request model on top of the same transport; measured by `make bench`."""

    def __init__(self, settings: Settings) -> None:
        self.base = str(settings.provider_url).rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {settings.provider_token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        self.limit = settings.provider_concurrency
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit),
                headers=self.headers,
            )
        return self._session

    async def send(self, message_id: int, phone: str, text: str, deadline_s: float) -> Result:
        body = json.dumps({"id": message_id, "phone": int(phone), "text": text})
        sent = False
        try:
            async with asyncio.timeout(deadline_s):
                sent = True
                async with self.session.post(
                    f"{self.base}/send/{message_id}", data=body
                ) as response:
                    content = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return Result(
                Outcome.TRANSIENT, None, f"no answer within {deadline_s:.1f} s", ambiguous=sent
            )
        except aiohttp.ClientConnectorError as exc:
            return Result(Outcome.TRANSIENT, None, f"connection failed: {exc!s:.120}")
        except aiohttp.ClientError as exc:
            return Result(Outcome.TRANSIENT, None, f"transport error: {exc!r:.120}", ambiguous=True)
        return classify(status, content, retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def create_gateway(settings: Settings) -> Gateway:
    if settings.provider_client == "aiohttp":
        return AiohttpGateway(settings)
    return HttpGateway(settings)
