"""Faults of the system itself, on a schedule: `kill -9` of each service, a PostgreSQL
restart, a Kafka broker restart and a gateway outage (sandbox faults run all along).

The schedule spreads the events evenly over `[0.08 D, 0.75 D]` of the fault phase; one
runs after the other, at least half a slot apart (a slow restart pushes the rest back).
Every event is logged with its start and end (epoch seconds): the report needs the
dispatcher kills' instants and the end of the last fault.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from services.sandbox.client import SandboxControl
from tools.chaos.stack import SERVICES

if TYPE_CHECKING:
    from collections.abc import Callable

    from tools.chaos.stack import Stack

# Sandbox faults while the soak runs (shares of the valid requests).
SANDBOX_FAULTS: dict[str, Any] = {
    "error_5xx": 0.05,
    "error_429": 0.03,
    "retry_after_s": 1,
    "malformed": 0.02,
    "hang": 0.01,
    "hang_s": 30.0,
    "latency_min_ms": 50.0,
    "latency_max_ms": 400.0,
}


@dataclass(frozen=True)
class FaultPlan:
    kills_per_service: int
    postgres_restarts: int
    kafka_restarts: int
    postgres_down_s: float
    kafka_down_s: float
    outage_s: float

    def events(self) -> list[tuple[str, str]]:
        """(kind, target) in the order they happen."""
        kills = [
            ("kill", name) for _ in range(self.kills_per_service) for name, _module in SERVICES
        ]
        others = (
            ([("outage", "gateway")] if self.outage_s > 0 else [])
            + [("restart", "postgres")] * self.postgres_restarts
            + [("restart", "kafka")] * self.kafka_restarts
        )
        # the outage early (its end must leave time before the first stop time), the
        # infrastructure restarts spread between the kills
        events: list[tuple[str, str]] = []
        if others and others[0][0] == "outage":
            events.append(others.pop(0))
        step = max(1, len(kills) // (len(others) + 1))
        for index, kill in enumerate(kills):
            events.append(kill)
            if others and (index + 1) % step == 0:
                events.append(others.pop(0))
        events.extend(others)
        return events


@dataclass
class FaultEvent:
    kind: str
    target: str
    started_at: float
    ended_at: float
    note: str = ""


class FaultRunner:
    def __init__(self, stack: Stack, plan: FaultPlan, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.plan = plan
        self.say = say
        self.log: list[FaultEvent] = []

    @property
    def last_fault_end(self) -> float | None:
        return max((event.ended_at for event in self.log), default=None)

    def dispatcher_kills(self) -> list[float]:
        return [
            event.started_at
            for event in self.log
            if event.kind == "kill" and event.target.startswith("dispatcher")
        ]

    def gateway_cuts(self) -> list[float]:
        """When the gateway closed its connections (a `refuse` outage began)."""
        return [
            event.started_at
            for event in self.log
            if event.kind == "outage" and event.target == "gateway"
        ]

    def as_json(self) -> list[dict[str, Any]]:
        return [asdict(event) for event in self.log]

    async def run(self, t0_monotonic: float, duration_s: float) -> None:
        events = self.plan.events()
        if not events:
            return
        first, last = 0.08 * duration_s, 0.75 * duration_s
        gap = (last - first) / max(1, len(events) - 1)
        previous_end = 0.0
        for index, (kind, target) in enumerate(events):
            # on its slot, and never right on the heels of the previous fault (a slow
            # restart pushes the rest back): traffic must have resumed for a fault to
            # meet it
            at = max(t0_monotonic + first + index * gap, previous_end + gap / 2)
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._one(kind, target)
            previous_end = time.monotonic()

    async def _one(self, kind: str, target: str) -> None:
        started = time.time()
        note = ""
        if kind == "kill":
            assert self.stack.supervisor is not None
            self.stack.supervisor.kill(target)
            ended = time.time()
        elif kind == "outage":
            async with SandboxControl(self.stack.sandbox.control_url) as control:
                await control.outage("refuse", self.plan.outage_s)
            ended = started + self.plan.outage_s
            note = f"refuse for {self.plan.outage_s:.0f}s"
        elif target == "postgres":
            await asyncio.to_thread(self.stack.postgres.stop)
            await asyncio.sleep(self.plan.postgres_down_s)
            await asyncio.to_thread(self.stack.postgres.start)
            ended = time.time()
            note = f"down {ended - started:.1f}s"
        else:
            await asyncio.to_thread(self.stack.kafka.stop)
            await asyncio.sleep(self.plan.kafka_down_s)
            await asyncio.to_thread(self.stack.kafka.start)
            ended = time.time()
            note = f"down {ended - started:.1f}s"
        self.log.append(FaultEvent(kind, target, started, ended, note))
        self.say(f"fault: {kind} {target} {note}".rstrip())
