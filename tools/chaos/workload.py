"""The soak's workload: clients, four mailings and one edit, and what each client expects.

Everything a client should receive is worked out here from what the soak itself
created (clients, zones, tags, the mailings' filters, windows and stop times), with
`shared/windows.py`, never from the service's tables.

Time zones (no DST): the windowed mailings' windows are set so that `Europe/Moscow`'s
window opens during the run (at `opens_at`), `Asia/Dubai`'s (an hour ahead) is open
the whole run, and the others' (`Africa/Johannesburg`, `UTC`, `Asia/Tokyo`,
`America/New_York`) open only after the stop time: those clients expect nothing and
their messages expire at once.

The mailings (`D` is the duration of the fault phase, `t0` its start):

* `plain`    tag `a`, no window, stop a day later: every tagged client expects one.
* `stopping` tag `b`, window opening for Moscow at `t0 + 0.15 D` (rounded up to the
  minute), stop time `0.4 D` after that opening, and at least one and a half sending
  leases plus 30 s after the fault phase (`0.75 D`): a dispatcher killed at the last
  fault holds its claimed messages for a lease, the recovery fires them again half a
  lease later, and that alone must not make them miss the stop.
* `edited`   tag `c`, window opening for Moscow at `0.2 D` after the edit (rounded up),
  stop `0.35 D` after that opening (and `0.05 D` after the stopping one's bound). At
  `t0 + 0.25 D` a PUT changes its text and its filter to tag `ckeep`: every `c` client
  whose window is open before the edit also has `ckeep` (it may have been sent
  already, and it stays in), and half of the others have it. The other half are
  excluded by the edit *before their window opens*, so they cannot have been sent
  anything: they expect nothing.
* `late`     tag `d` and operator codes 900-949, no window, start at `t0 + 0.5 D`: a
  second wave of sending while the faults go on.

Rule: a client expects mailing M iff it matches M's final filter and
`next_allowed(start, window, zone) < stop` (some allowed instant before the stop time).
The one exception is named `ambiguous`: a client excluded by the edit whose window
opened before the PUT actually landed (only when the PUT was held up, e.g. by an API
kill); one delivery or none is right for it.
"""

from __future__ import annotations

import asyncio
import functools
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import httpx

from shared.settings import Settings
from shared.windows import Window, next_allowed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

BASE_ZONE = "Europe/Moscow"
ZONES: tuple[tuple[str, float], ...] = (
    ("Europe/Moscow", 0.35),
    ("Asia/Dubai", 0.25),
    ("Africa/Johannesburg", 0.10),
    ("UTC", 0.10),
    ("Asia/Tokyo", 0.10),
    ("America/New_York", 0.10),
)
WINDOW_LENGTH = timedelta(hours=3)
LEASE_S = float(Settings.model_fields["sending_lease_s"].default)
STOP_MARGIN_S = 30.0
CONCURRENCY = 8


def fmt(moment: datetime) -> str:
    """The API's datetime format (UTC, seconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ceil_minute(moment: datetime) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


def window_opening_at(opens_at: datetime) -> Window:
    """A window whose `BASE_ZONE` opening is `opens_at` (a whole minute), 3 hours long."""
    local = opens_at.astimezone(ZoneInfo(BASE_ZONE))
    start = time(local.hour, local.minute)
    end_dt = datetime.combine(local.date(), start) + WINDOW_LENGTH
    return Window(start, time(end_dt.hour, end_dt.minute))


@dataclass
class ClientSpec:
    index: int
    phone: str
    zone: str
    tags: list[str]
    id: int | None = None

    @property
    def code(self) -> int:
        return int(self.phone[1:4])


@dataclass
class MailingSpec:
    key: str
    text: str
    start: datetime
    stop: datetime
    tags: list[str]
    codes: list[int] = field(default_factory=list)
    window: Window | None = None
    id: int | None = None
    # the edit: new text and tags, when it is planned, when it landed
    edit_text: str | None = None
    edit_tags: list[str] | None = None
    edit_at: datetime | None = None
    edited_at: datetime | None = None

    def body(self, *, edited: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "date_time_start": fmt(self.start),
            "date_time_stop": fmt(self.stop),
            "text": self.edit_text if edited else self.text,
            "tag": self.edit_tags if edited else self.tags,
            "mobile_code": self.codes,
        }
        if self.window is not None:
            body["time_interval_start"] = self.window.start.strftime("%H:%M")
            body["time_interval_end"] = self.window.end.strftime("%H:%M")
        return body

    def matches(self, client: ClientSpec, *, edited: bool) -> bool:
        tags = self.edit_tags if edited and self.edit_tags is not None else self.tags
        if tags and not set(tags) & set(client.tags):
            return False
        return not self.codes or client.code in self.codes

    def opens_for(self, client: ClientSpec) -> datetime:
        """The first instant at or after the start at which the client may be sent to."""
        return next_allowed(self.start, self.window, ZoneInfo(client.zone))

    @property
    def texts(self) -> list[str]:
        return [self.text] if self.edit_text is None else [self.text, self.edit_text]


@dataclass
class Workload:
    clients: list[ClientSpec]
    mailings: list[MailingSpec]
    t0: datetime
    duration_s: float
    seed: int

    def restart_clock(self) -> None:
        """Lay the mailings out from now (call right before creating them)."""
        self.t0 = datetime.now(UTC).replace(microsecond=0)
        self.mailings = plan_mailings(self.duration_s, self.seed, self.t0)

    @property
    def edited(self) -> MailingSpec:
        return next(m for m in self.mailings if m.edit_text is not None)

    @property
    def end(self) -> datetime:
        """When every mailing's last message is due or expired (the run's end)."""
        return max(
            [self.t0 + timedelta(seconds=self.duration_s)]
            + [m.stop for m in self.mailings if m.stop < self.t0 + timedelta(hours=1)]
        )

    def expectations(self) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        """(expected, ambiguous) sets of (mailing id, client id); see the module's rule."""
        expected: set[tuple[int, int]] = set()
        ambiguous: set[tuple[int, int]] = set()
        for mailing in self.mailings:
            assert mailing.id is not None
            edited = mailing.edit_text is not None
            for client in self.clients:
                assert client.id is not None
                pair = (mailing.id, client.id)
                opens = mailing.opens_for(client)
                if opens >= mailing.stop:
                    continue
                if mailing.matches(client, edited=edited):
                    expected.add(pair)
                elif edited and mailing.matches(client, edited=False):
                    landed = mailing.edited_at or mailing.edit_at
                    assert landed is not None
                    if opens <= landed:
                        ambiguous.add(pair)
        return expected, ambiguous


def plan_mailings(duration_s: float, seed: int, t0: datetime) -> list[MailingSpec]:
    """The four mailings of a fault phase of `duration_s` starting at `t0`."""
    t0 = t0.replace(microsecond=0)

    def part(share: float) -> timedelta:
        return timedelta(seconds=round(share * duration_s))

    opens_stopping = ceil_minute(t0 + part(0.15))
    edit_at = t0 + part(0.25)
    opens_edited = ceil_minute(edit_at + part(0.2))
    far = t0 + timedelta(days=1)
    # A message claimed by a dispatcher killed at the last fault is recovered after the
    # lease and fired again half a lease later (a slow dispatcher's outcome may still
    # come): the stop times leave that long, and more, after the fault phase.
    after_faults = t0 + part(0.75) + timedelta(seconds=1.5 * LEASE_S + STOP_MARGIN_S)
    return [
        MailingSpec("plain", f"chaos {seed} plain", t0, far, ["a"]),
        MailingSpec(
            "stopping",
            f"chaos {seed} stopping",
            t0,
            max(opens_stopping + part(0.4), after_faults),
            ["b"],
            window=window_opening_at(opens_stopping),
        ),
        MailingSpec(
            "edited",
            f"chaos {seed} edited v1",
            t0,
            max(opens_edited + part(0.35), after_faults + part(0.05)),
            ["c"],
            window=window_opening_at(opens_edited),
            edit_text=f"chaos {seed} edited v2",
            edit_tags=["ckeep"],
            edit_at=edit_at,
        ),
        MailingSpec(
            "late",
            f"chaos {seed} late",
            t0 + part(0.5),
            far,
            ["d"],
            codes=list(range(900, 950)),
        ),
    ]


def plan(clients: int, duration_s: float, seed: int) -> Workload:
    """Clients now; mailings again by `Workload.restart_clock` once the clients are in.

    A client of the edited mailing keeps its place (tag `ckeep`) when its zone's window
    is open before the edit; that depends on the zone only (the windows are laid out
    relative to the start), so a provisional layout from now decides it.
    """
    rng = random.Random(seed)
    t0 = datetime.now(UTC)
    mailings = plan_mailings(duration_s, seed, t0)
    edited = mailings[2]
    assert edited.edit_at is not None
    zones = [zone for zone, _ in ZONES]
    weights = [weight for _, weight in ZONES]
    phones: set[str] = set()
    specs = []
    for index in range(clients):
        while True:
            phone = f"7{rng.randrange(900, 1000)}{rng.randrange(10**7):07d}"
            if phone not in phones:
                phones.add(phone)
                break
        zone = rng.choices(zones, weights)[0]
        tags = [
            tag
            for tag, share in (("a", 0.45), ("b", 0.30), ("c", 0.30), ("d", 0.60))
            if rng.random() < share
        ]
        client = ClientSpec(index, phone, zone, tags)
        if "c" in tags and (edited.opens_for(client) <= edited.edit_at or rng.random() < 0.5):
            client.tags.append("ckeep")
        specs.append(client)
    return Workload(specs, mailings, t0, duration_s, seed)


async def retrying(
    call: Callable[[], Awaitable[httpx.Response]], what: str, *, deadline_s: float = 300.0
) -> httpx.Response:
    """Repeat `call` while the API is down (killed and being restarted)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    delay = 0.2
    while True:
        try:
            response = await call()
            if response.status_code < 500:
                return response
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if loop.time() > until:
            raise RuntimeError(f"{what}: the API did not answer in {deadline_s:.0f}s ({problem})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def load_clients(api: httpx.AsyncClient, workload: Workload) -> None:
    """POST every client (the API is not faulted yet: a 4xx here is a bug of the soak)."""
    queue: asyncio.Queue[ClientSpec] = asyncio.Queue()
    for client in workload.clients:
        queue.put_nowait(client)

    async def worker() -> None:
        while not queue.empty():
            client = queue.get_nowait()
            body = {"telephone": client.phone, "tag": client.tags, "timezone": client.zone}
            response = await retrying(
                functools.partial(api.post, "/api/v1/clients/", json=body), "POST client"
            )
            if response.status_code != 201:
                raise RuntimeError(f"POST client: {response.status_code} {response.text[:300]}")
            client.id = int(response.json()["id"])

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def create_mailings(api: httpx.AsyncClient, workload: Workload) -> None:
    for mailing in workload.mailings:
        response = await retrying(
            functools.partial(api.post, "/api/v1/notifications/", json=mailing.body()),
            "POST mailing",
        )
        if response.status_code != 201:
            raise RuntimeError(f"POST mailing: {response.status_code} {response.text[:300]}")
        mailing.id = int(response.json()["id"])


async def apply_edit(api: httpx.AsyncClient, mailing: MailingSpec) -> None:
    """The PUT of the edited mailing, retried through API kills; records when it landed."""
    response = await retrying(
        functools.partial(
            api.put, f"/api/v1/notifications/{mailing.id}/", json=mailing.body(edited=True)
        ),
        "PUT mailing",
    )
    if response.status_code != 200:
        raise RuntimeError(f"PUT mailing: {response.status_code} {response.text[:300]}")
    mailing.edited_at = datetime.now(UTC)
