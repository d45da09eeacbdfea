"""`SandboxControl`: a typed async client of the sandbox's control and ledger endpoints.

    async with SandboxControl(sandbox.control_url) as control:
        await control.set_faults(error_5xx=0.3, seed=1)
        ...
        summary = await control.summary()
        assert summary["duplicates"] == []

Any port of the sandbox serves these endpoints; use the control port (`control_url`)
when a `refuse` outage may be on, since the sends port is closed then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import httpx

if TYPE_CHECKING:
    from types import TracebackType

AnswerKind = Literal[
    "ok", "5xx", "429", "malformed", "hang", "bad_request", "unauthorized", "outage"
]


class LedgerSummary(TypedDict):
    requests: int
    accepted: int
    unique_accepted: int
    duplicates: list[int]
    duplicate_count: int
    duplicate_deliveries: int
    by_answer: dict[str, int]
    by_status: dict[str, int]
    first_at: str | None
    last_at: str | None
    first_at_epoch: float | None
    last_at_epoch: float | None
    first_accepted_at: str | None
    last_accepted_at: str | None
    ledger_text: bool


class LedgerEntry(TypedDict):
    seq: int
    msg_id: int | None
    phone: int | None
    text: str | None
    at: str
    at_epoch: float
    status: int
    answer: AnswerKind
    accepted: bool


class Outage(TypedDict):
    mode: Literal["refuse", "503"] | None
    since: str | None
    until: str | None
    remaining_s: float | None
    listening: bool


class SandboxControl:
    def __init__(self, base_url: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def __aenter__(self) -> SandboxControl:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    async def health(self) -> bool:
        try:
            response = await self._http.get("/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    # --- ledger -------------------------------------------------------------------------

    async def summary(self) -> LedgerSummary:
        return cast("LedgerSummary", await self._call("GET", "/ledger/summary"))

    async def accepted(self) -> list[tuple[int, float]]:
        """(msgId, arrival epoch seconds) of every accepted send, in arrival order."""
        pairs = await self._call("GET", "/ledger/accepted")
        return [(int(msg_id), float(at)) for msg_id, at in pairs]

    async def entries(
        self,
        msg_id: int | None = None,
        *,
        accepted: bool | None = None,
        answer: AnswerKind | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[LedgerEntry]:
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if msg_id is not None:
            params["msg_id"] = msg_id
        if accepted is not None:
            params["accepted"] = "true" if accepted else "false"
        if answer is not None:
            params["answer"] = answer
        return cast("list[LedgerEntry]", await self._call("GET", "/ledger", params=params))

    async def reset(self) -> int:
        """Empty the ledger; return how many entries it had."""
        result = await self._call("POST", "/ledger/reset")
        return int(result["cleared"])

    # --- faults and outages -------------------------------------------------------------

    async def faults(self) -> dict[str, Any]:
        return cast("dict[str, Any]", await self._call("GET", "/control/faults"))

    async def set_faults(self, *, replace: bool = False, **faults: Any) -> dict[str, Any]:
        """Change the given fault settings (PATCH); `replace=True` resets the rest (PUT)."""
        method = "PUT" if replace else "PATCH"
        return cast("dict[str, Any]", await self._call(method, "/control/faults", json=faults))

    async def state(self) -> dict[str, Any]:
        return cast("dict[str, Any]", await self._call("GET", "/control/state"))

    async def outage(self, mode: Literal["refuse", "503"], seconds: float | None = None) -> Outage:
        """Start an outage for `seconds` (None: until `clear_outage`)."""
        body = {"mode": mode, "seconds": seconds}
        return cast("Outage", await self._call("POST", "/control/outage", json=body))

    async def current_outage(self) -> Outage:
        return cast("Outage", await self._call("GET", "/control/outage"))

    async def clear_outage(self) -> Outage:
        return cast("Outage", await self._call("DELETE", "/control/outage"))
