"""The sandbox's mutable state: token, fault plan, ledger and the current outage."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from services.sandbox.faults import FaultPlan, Faults
from services.sandbox.ledger import Clock, Ledger, iso
from shared.logging import get_logger

if TYPE_CHECKING:
    from services.sandbox.faults import OutageMode

log = get_logger(__name__)

_RESUME_RETRY_S = 0.5


class Listener(Protocol):
    """The sends listener of the running server, for `refuse` outages."""

    def stop_accepting(self) -> None:
        """Close the listening socket: new connections are refused."""

    def drop_connections(self) -> int:
        """Close the open connections of the sends listener; return how many."""

    async def resume_accepting(self) -> None:
        """Bind and listen again on the same address (raises OSError if it cannot)."""


class SandboxState:
    def __init__(
        self,
        *,
        token: str,
        faults: Faults,
        store_text: bool = True,
        listener: Listener | None = None,
    ) -> None:
        self.token = token
        self.any_token = token == "*"  # noqa: S105 - the wildcard, not a secret
        self.auth_header = b"Bearer " + token.encode()
        self._token_bytes = token.encode()
        self.plan = FaultPlan(faults)
        self.clock = Clock()
        self.ledger = Ledger(store_text=store_text)
        self.listener = listener
        # None, "refuse" or "503"; read on every send.
        self.outage_mode: OutageMode | None = None
        self._outage_started: float | None = None
        self._outage_ends: float | None = None
        self._outage_timer: asyncio.Task[None] | None = None
        self._resume_task: asyncio.Task[None] | None = None

    # --- token ------------------------------------------------------------------------

    def token_ok(self, header: bytes | None) -> bool:
        """The slow check, after the exact `Bearer <token>` comparison failed."""
        if header is None or header[:7].lower() != b"bearer ":
            return False
        given = header[7:].strip()
        if self.any_token:
            return bool(given)
        return given == self._token_bytes

    # --- faults -----------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.plan.faults

    def replace_faults(self, faults: Faults) -> Faults:
        """PUT: the new settings, draws restarted from their seed (random if none)."""
        old = self.plan.faults
        self.plan = FaultPlan(faults)
        log.info("faults_replaced", old=_changed(old, faults), faults=_nondefault(faults))
        return faults

    def patch_faults(self, changes: dict[str, Any]) -> Faults:
        """PATCH: merge `changes`; the draws go on unless a seed is among them.

        Raises pydantic.ValidationError when the merged settings are invalid.
        """
        old = self.plan.faults
        faults = Faults.model_validate({**old.model_dump(), **changes})
        self.plan = FaultPlan(faults, previous=None if "seed" in changes else self.plan)
        log.info("faults_changed", old=_changed(old, faults), faults=_nondefault(faults))
        return faults

    def describe(self) -> dict[str, Any]:
        return {
            "faults": self.plan.faults.model_dump(),
            "seed_in_use": self.plan.seed,
            "effective_shares": self.plan.faults.effective_shares(),
            "outage": self.outage_info(),
            "ledger_entries": len(self.ledger),
            "ledger_text": self.ledger.store_text,
            "refuse_supported": self.listener is not None,
        }

    def reset_ledger(self) -> int:
        """Empty the ledger; with a fixed seed the draws restart too."""
        cleared = self.ledger.reset()
        if self.plan.faults.seed is not None:
            self.plan.reseed(self.plan.faults.seed)
        log.info("ledger_reset", cleared=cleared)
        return cleared

    # --- outages ----------------------------------------------------------------------

    def outage_info(self) -> dict[str, Any]:
        remaining = None
        if self.outage_mode is not None and self._outage_ends is not None:
            remaining = max(0.0, self._outage_ends - self.clock.now())
        return {
            "mode": self.outage_mode,
            "since": None if self._outage_started is None else iso(self._outage_started),
            "until": None if self._outage_ends is None else iso(self._outage_ends),
            "remaining_s": remaining,
            "listening": self.outage_mode != "refuse",
        }

    async def start_outage(self, mode: OutageMode, seconds: float | None) -> dict[str, Any]:
        """Begin (or replace) an outage; it ends after `seconds`, or when cleared."""
        self._cancel_timer()
        previous = self.outage_mode
        if mode == "refuse" and previous != "refuse" and self.listener is not None:
            self._cancel_resume()
            self.listener.stop_accepting()
        elif mode != "refuse" and previous == "refuse":
            await self._resume()
        now = self.clock.now()
        self.outage_mode = mode
        self._outage_started = now
        self._outage_ends = None if seconds is None else now + seconds
        if seconds is not None:
            self._outage_timer = asyncio.create_task(self._expire(seconds), name="outage-timer")
        log.warning(
            "outage_started",
            mode=mode,
            seconds=seconds,
            replaced=previous,
            refuse_supported=self.listener is not None,
        )
        return self.outage_info()

    async def drop_connections(self) -> None:
        """Run after the control answer is sent: close the sends connections still open.

        A coroutine so that Starlette runs it on the event loop (not in a thread), right
        after the answer is written and before any other request is read.
        """
        if self.outage_mode == "refuse" and self.listener is not None:
            dropped = self.listener.drop_connections()
            log.info("outage_connections_dropped", connections=dropped)

    async def clear_outage(self, reason: str = "cleared") -> dict[str, Any]:
        self._cancel_timer()
        mode = self.outage_mode
        if mode is None:
            return self.outage_info()
        if mode == "refuse":
            await self._resume()
        started = self._outage_started
        self.outage_mode = None
        self._outage_started = self._outage_ends = None
        lasted = None if started is None else round(self.clock.now() - started, 3)
        log.warning("outage_ended", mode=mode, reason=reason, lasted_s=lasted)
        return self.outage_info()

    async def close(self) -> None:
        self._cancel_timer()
        self._cancel_resume()

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._outage_timer = None  # so that clear_outage does not cancel this task
        await self.clear_outage(reason="expired")

    def _cancel_timer(self) -> None:
        timer, self._outage_timer = self._outage_timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    def _cancel_resume(self) -> None:
        task, self._resume_task = self._resume_task, None
        if task is not None:
            task.cancel()

    async def _resume(self) -> None:
        if self.listener is None:
            return
        try:
            await self.listener.resume_accepting()
        except OSError as exc:
            log.error("listener_resume_failed", error=repr(exc), retry_in_s=_RESUME_RETRY_S)
            self._cancel_resume()
            self._resume_task = asyncio.create_task(self._keep_resuming(), name="resume")

    async def _keep_resuming(self) -> None:
        assert self.listener is not None
        while True:
            await asyncio.sleep(_RESUME_RETRY_S)
            with contextlib.suppress(OSError):
                await self.listener.resume_accepting()
                log.info("listener_resumed")
                return


def _nondefault(faults: Faults) -> dict[str, Any]:
    return faults.model_dump(exclude_defaults=True)


def _changed(old: Faults, new: Faults) -> dict[str, Any]:
    before = old.model_dump()
    after = new.model_dump()
    return {key: value for key, value in before.items() if after[key] != value}
