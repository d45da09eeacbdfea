"""The admin API over HTTP for the command-line client: one httpx client, clear errors.

The CLI reaches the API as any integration does (`Authorization: Bearer <token>`), never
its database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "NOTIFICATIONS_URL"
TOKEN_ENV = "NOTIFICATIONS_TOKEN"  # noqa: S105 (the name of a variable)
CHUNK = 256 * 1024
# The upload may take a while to be merged once sent: a long read timeout.
TIMEOUT = httpx.Timeout(30.0, read=900.0)
CONTENT_TYPES = {
    ".csv": "text/csv",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
}
# Tests put a stub transport here (httpx.MockTransport) instead of the network.
transport: httpx.BaseTransport | None = None


class CliError(Exception):
    """A failure to tell the user in one line (exit status 1)."""


def content_type(path: Path, given: str | None) -> str:
    if given:
        return CONTENT_TYPES.get(f".{given.lower().lstrip('.')}", given)
    found = CONTENT_TYPES.get(path.suffix.lower())
    if found is None:
        raise CliError(
            f"cannot tell the format of {path.name}: name it .csv, .ndjson or .jsonl, "
            "or pass --format csv|ndjson"
        )
    return found


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise CliError(f"no API token: pass --token or set {TOKEN_ENV}")
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.http.send(request)
        except httpx.ConnectError:
            raise CliError(
                f"cannot reach the API at {self.url}: is it running? (--url or {URL_ENV})"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"the API at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.url} failed: {exc}") from None
        if response.status_code == 401:
            raise CliError(f"the API refused the token (--token or {TOKEN_ENV})")
        if response.status_code >= 400:
            raise CliError(f"{response.status_code}: {_detail(response)}")
        return response

    def import_file(
        self, path: Path, kind: str, mode: str, progress: Callable[[int], None]
    ) -> dict[str, Any]:
        """Upload `path` streamed (never read whole), calling `progress(bytes)` as it goes."""

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as file:
                while chunk := file.read(CHUNK):
                    yield chunk
                    progress(len(chunk))

        request = self.http.build_request(
            "POST",
            "/api/v1/clients/import/",
            params={"mode": mode},
            content=chunks(),
            headers={"Content-Type": kind, "Content-Length": str(path.stat().st_size)},
        )
        body: dict[str, Any] = self._send(request).json()
        return body

    def mailing(self, mailing_id: int) -> dict[str, Any]:
        request = self.http.build_request("GET", f"/api/v1/notifications/{mailing_id}/")
        body: dict[str, Any] = self._send(request).json()
        return body


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(
            f"{item.get('field', '?')}: {item.get('message', item)}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        )
    return str(detail)
