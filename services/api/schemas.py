"""Request and response bodies, to the letter of the REST contract.

Field names follow the service this one replaces (`telephone`, `mobile_code`, `tag`,
`date_time_start`, ...); unknown fields in a request body are rejected.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from services.api.buckets import BUCKETS, Bucket
from shared.windows import NO_ALLOWED_TIME_BEFORE_STOP

if TYPE_CHECKING:
    from collections.abc import Callable

# [0-9], never \d: Python's \d matches every Unicode digit (Arabic-Indic, fullwidth...),
# which the database's check then refuses.
PHONE = re.compile(r"7[0-9]{10}")
TAG_MAX = 64
TEXT_MAX = 2000
FILTER_MAX = 100


@lru_cache(maxsize=1)
def known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _telephone(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("telephone must be 7 followed by 10 digits")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not PHONE.fullmatch(value):
        raise ValueError("telephone must be 7 followed by 10 digits, e.g. 79111234567")
    return value


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str | int) and not isinstance(value, bool) else value


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _storable(value: str, *, what: str, multiline: bool) -> str:
    """Text PostgreSQL can store and a phone can show: valid Unicode, no control codes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None
    if _CONTROL.search(value) or (not multiline and re.search(r"[\r\n\t]", value)):
        raise ValueError(f"{what} must not contain control characters")
    return value


def _tag_name(value: str) -> str:
    name = _storable(value, what="a tag name", multiline=False).strip()
    if not name:
        raise ValueError("tag names must not be empty")
    return name


def _message_text(value: str) -> str:
    return _storable(value, what="text", multiline=True)


def _unique(values: list[Any]) -> list[Any]:
    return sorted(set(values))


def _zone(value: str) -> str:
    if value not in known_zones():
        raise ValueError(f"unknown IANA time zone {value!r}, e.g. Europe/Moscow")
    return value


def _utc(value: datetime) -> datetime:
    """Naive datetimes are UTC (the contract's "YYYY-MM-DD HH:MM:SS"); others convert."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


DATETIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?"
    r"(Z|z|[+-][0-9]{2}:[0-9]{2})?$"
)
TIME_PATTERN = r"^[0-9]{2}:[0-9]{2}$"


def _matching(pattern: str, example: str) -> Callable[[object], object]:
    """Strings of one shape only: a bare number would be read as seconds, silently, and
    what the OpenAPI schema says is exactly what is accepted."""
    compiled = re.compile(pattern)

    def check(value: object) -> object:
        if not isinstance(value, str) or not compiled.match(value):
            raise ValueError(f"expected a string like {example!r}")
        return value

    return check


def _sane_year(value: datetime) -> datetime:
    if not 2000 <= value.year <= 9998:
        raise ValueError("year must be between 2000 and 9998")
    return value


def _minutes(value: time) -> time:
    if value.second or value.microsecond:
        raise ValueError("use HH:MM (whole minutes)")
    if value.tzinfo is not None:
        raise ValueError("use a local wall time HH:MM without an offset")
    return value


Telephone = Annotated[
    str,
    BeforeValidator(_telephone),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": "^7[0-9]{10}$"},
                {"type": "integer", "minimum": 70000000000, "maximum": 79999999999},
            ],
            "description": "`7` and 10 digits (a string or an integer)",
            "examples": ["79111234567"],
        }
    ),
]
TagName = Annotated[str, Field(min_length=1, max_length=TAG_MAX), AfterValidator(_tag_name)]
TagList = Annotated[
    list[TagName],
    Field(max_length=FILTER_MAX),
    BeforeValidator(_one_or_many),
    AfterValidator(_unique),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "array",
                    "maxItems": FILTER_MAX,
                    "items": {"type": "string", "minLength": 1, "maxLength": TAG_MAX},
                },
                {"type": "string", "minLength": 1, "maxLength": TAG_MAX},
            ],
            "description": "Tag names (a single name is one tag)",
            "examples": [["urgent", "simple"]],
        }
    ),
]
Zone = Annotated[str, AfterValidator(_zone), Field(examples=["Asia/Singapore"])]


def format_utc(value: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS` in UTC, the contract's datetime format."""
    return value.astimezone(UTC).isoformat(sep=" ", timespec="seconds")[:19]


_UTC_DOC = 'UTC as "YYYY-MM-DD HH:MM:SS"'
UtcDatetime = Annotated[
    datetime,
    PlainSerializer(format_utc, return_type=str),
    Field(description=_UTC_DOC, examples=["2031-01-02 09:00:00"]),
]
UtcDatetimeIn = Annotated[
    datetime,
    BeforeValidator(_matching(DATETIME_PATTERN, "2031-01-02 09:00:00")),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DATETIME_PATTERN,
            "description": _UTC_DOC + "; ISO 8601 with an offset or Z is accepted",
            "examples": ["2031-01-02 09:00:00"],
        }
    ),
    AfterValidator(_utc),
    AfterValidator(_sane_year),
    PlainSerializer(format_utc, return_type=str),
    Field(
        description=_UTC_DOC + "; ISO 8601 with an offset or Z is accepted",
        examples=["2031-01-02 09:00:00"],
    ),
]
LocalTime = Annotated[
    time,
    PlainSerializer(lambda v: v.strftime("%H:%M"), return_type=str),
    Field(description="client-local wall time HH:MM", examples=["09:00"]),
]
LocalTimeIn = Annotated[
    time,
    BeforeValidator(_matching(TIME_PATTERN, "09:00")),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": TIME_PATTERN,
            "description": "client-local wall time HH:MM",
            "examples": ["09:00"],
        }
    ),
    AfterValidator(_minutes),
    PlainSerializer(lambda v: v.strftime("%H:%M"), return_type=str),
    Field(description="client-local wall time HH:MM", examples=["09:00"]),
]
OperatorCode = Annotated[int, Field(ge=0, le=999)]
CodeList = Annotated[
    list[OperatorCode],
    Field(max_length=FILTER_MAX),
    BeforeValidator(_one_or_many),
    AfterValidator(_unique),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "array",
                    "maxItems": FILTER_MAX,
                    "items": {"type": "integer", "minimum": 0, "maximum": 999},
                },
                {"type": "integer", "minimum": 0, "maximum": 999},
            ],
            "description": "Operator codes (a single code is one code)",
            "examples": [[911]],
        }
    ),
]


class FieldError(ValueError):
    """A rule across fields, blamed on the field a user should change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- clients -------------------------------------------------------------------------


class ClientIn(Strict):
    """The body of POST and PUT: the whole client."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "telephone": "79111234567",
                    "tag": ["urgent", "simple"],
                    "timezone": "Asia/Singapore",
                }
            ]
        },
    )

    telephone: Telephone
    tag: TagList = []
    timezone: Zone = "UTC"
    mobile_code: OperatorCode | None = Field(
        default=None,
        description="Read-only, derived from the telephone; accepted only when it matches",
    )

    @model_validator(mode="after")
    def _code_matches(self) -> ClientIn:
        if self.mobile_code is not None and self.mobile_code != int(self.telephone[1:4]):
            raise FieldError(
                "mobile_code", "mobile_code is derived from the telephone (digits 2-4)"
            )
        return self


class RejectedRow(BaseModel):
    line: int = Field(description="Line number in the file, from 1 (the CSV header is 1)")
    field: str = Field(description="The field at fault (`line` for the line as a whole)")
    message: str


class ImportOut(BaseModel):
    """What a bulk import did. Good rows are written even when others are rejected."""

    created: int
    updated: int = Field(description="Existing clients changed (mode=upsert)")
    unchanged: int = Field(description="Existing clients already so (mode=upsert)")
    rejected: list[RejectedRow] = Field(description="The rejected rows (the first 1,000)")
    rejected_count: int = Field(description="All rejected rows, listed or not")


class ClientPatch(Strict):
    """The body of PATCH: any subset of the client's fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"tag": ["vip"]}]})

    # Optional but never null: an absent field is None (defaults are not validated),
    # an explicit null fails the field's own type, with the field named.
    telephone: Telephone = Field(default=None)  # type: ignore[assignment]
    tag: TagList = Field(default=None)  # type: ignore[arg-type]
    timezone: Zone = Field(default=None)  # type: ignore[assignment]


class TagOut(BaseModel):
    name: str


class ClientOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "telephone": "79111234567",
                    "mobile_code": 911,
                    "tag": [{"name": "simple"}, {"name": "urgent"}],
                    "timezone": "Asia/Singapore",
                }
            ]
        }
    )

    id: int
    telephone: str
    mobile_code: int = Field(description="Operator code: digits 2-4 of the telephone")
    tag: list[TagOut] = Field(description="Sorted by name")
    timezone: str


# --- mailings ------------------------------------------------------------------------


class MailingIn(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "date_time_start": "2031-01-02 09:00:00",
                    "text": "Spring sale starts today",
                    "date_time_stop": "2031-01-03 21:00:00",
                    "tag": ["urgent"],
                    "mobile_code": [911],
                    "time_interval_start": "09:00",
                    "time_interval_end": "21:00",
                }
            ]
        },
    )

    date_time_start: UtcDatetimeIn
    text: Annotated[str, Field(min_length=1, max_length=TEXT_MAX), AfterValidator(_message_text)]
    date_time_stop: UtcDatetimeIn
    tag: TagList = []
    mobile_code: CodeList = []
    time_interval_start: LocalTimeIn | None = None
    time_interval_end: LocalTimeIn | None = None

    @model_validator(mode="after")
    def _rules(self) -> MailingIn:
        if not self.text.strip():
            raise FieldError("text", "text must not be blank")
        if self.date_time_stop <= self.date_time_start:
            raise FieldError("date_time_stop", "date_time_stop must be after date_time_start")
        if (self.time_interval_start is None) != (self.time_interval_end is None):
            missing = (
                "time_interval_end" if self.time_interval_end is None else "time_interval_start"
            )
            raise FieldError(
                missing, "give both time_interval_start and time_interval_end, or neither"
            )
        if self.time_interval_start is not None and (
            self.time_interval_start == self.time_interval_end
        ):
            raise FieldError(
                "time_interval_end", "time_interval_start and time_interval_end must differ"
            )
        return self


class FailureReason(BaseModel):
    reason: str = Field(description="The message's last error, as in its `last_error`")
    count: int


class MailingOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "date_time_start": "2031-01-02 09:00:00",
                    "text": "Spring sale starts today",
                    "date_time_stop": "2031-01-03 21:00:00",
                    "tag": ["urgent"],
                    "mobile_code": [911],
                    "time_interval_start": "09:00",
                    "time_interval_end": "21:00",
                    "number_of_messages": dict.fromkeys(BUCKETS, 0),
                    "messages_by_status": {},
                    "state": "scheduled",
                    "version": 1,
                }
            ]
        }
    )

    id: int
    date_time_start: UtcDatetime
    text: str
    date_time_stop: UtcDatetime
    tag: list[str]
    mobile_code: list[int]
    time_interval_start: LocalTime | None
    time_interval_end: LocalTime | None
    number_of_messages: dict[Bucket, int] = Field(
        description="Seed-compatible buckets: always exactly these three keys"
    )
    messages_by_status: dict[str, int] = Field(
        description="Detailed counts by internal status (only non-zero ones)"
    )
    state: str = Field(
        description="scheduled, running, finished, or paused / cancelled by an operator"
    )
    version: int = Field(description="Bumped by each update")
    failure_reasons: list[FailureReason] = Field(
        default=[],
        description="The most frequent reasons of its failed messages, most frequent first "
        "(reading one mailing; empty in the list)",
    )


class MessageOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "pub_date": "2031-01-02T09:00:01.258537Z",
                    "status": "Sent",
                    "notification": 1,
                    "clients": [1],
                    "state": "sent",
                    "attempts": 1,
                    "due_at": "2031-01-02T09:00:00Z",
                    "sent_at": "2031-01-02T09:00:01.258537Z",
                    "last_error": None,
                }
            ]
        }
    )

    id: int
    pub_date: datetime = Field(description="ISO 8601 UTC: when sent, else when created")
    status: Bucket
    notification: int
    clients: list[int]
    state: str = Field(description="The exact internal status")
    attempts: int
    due_at: datetime | None
    sent_at: datetime | None
    last_error: str | None


class ForecastItem(BaseModel):
    client: int
    send_at: str | None = Field(description='Planned UTC time "YYYY-MM-DD HH:MM:SS", or null')
    reason: str | None = None


class Forecast(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "count": 2,
                    "next": None,
                    "previous": None,
                    "results": [
                        {"client": 1, "send_at": "2031-01-02 09:00:00"},
                        {
                            "client": 2,
                            "send_at": None,
                            "reason": NO_ALLOWED_TIME_BEFORE_STOP,
                        },
                    ],
                    "by_hour": {"2031-01-02 09:00:00": 1},
                }
            ]
        }
    )

    count: int
    next: str | None
    previous: str | None
    results: list[ForecastItem]
    by_hour: dict[str, int] = Field(description="Planned sends per UTC hour, over all clients")


class Preview(BaseModel):
    """Who a mailing body would reach and when, computed without creating anything."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "audience": 3,
                    "by_operator_code": {"911": 2, "925": 1},
                    "by_tag": {"simple": 1, "urgent": 3},
                    "by_timezone": {"Asia/Tokyo": 1, "Europe/Berlin": 2},
                    "by_hour": {"2031-01-02 00:00:00": 1, "2031-01-02 08:00:00": 1},
                    "first_send_at": "2031-01-02 00:00:00",
                    "last_send_at": "2031-01-02 08:00:00",
                    "unreachable": 1,
                }
            ]
        }
    )

    audience: int = Field(description="Clients the mailing would reach if created now")
    by_operator_code: dict[str, int] = Field(description="Audience per operator code")
    by_tag: dict[str, int] = Field(
        description="Audience per tag the clients carry (a client counts once per tag)"
    )
    by_timezone: dict[str, int] = Field(description="Audience per IANA time zone")
    by_hour: dict[str, int] = Field(
        description="Planned sends per UTC hour, as the forecast of the created mailing"
    )
    first_send_at: UtcDatetime | None = Field(description="The earliest planned send, or null")
    last_send_at: UtcDatetime | None = Field(description="The latest planned send, or null")
    unreachable: int = Field(description="Clients with no allowed local time before date_time_stop")


def _reason(value: str) -> str:
    return _storable(value, what="reason", multiline=True)


class ReplayIn(Strict):
    reason: Annotated[str, AfterValidator(_reason)] | None = Field(
        default=None,
        max_length=1000,
        description="Replay only failed messages with exactly this `last_error` "
        "(as listed in the mailing's `failure_reasons`); all failed ones when absent",
    )


class Replayed(BaseModel):
    replayed: int = Field(description="Failed messages put back to `scheduled`, due now")


class ErrorOut(BaseModel):
    detail: Any = Field(description="A message, or a list of {field, message} for bad input")
