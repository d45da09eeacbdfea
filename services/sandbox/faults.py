"""Fault settings (validated model) and the per-request draws made from them.

Order of the draws, per request that passed the token and body checks (each an
independent uniform draw from a seeded generator, four draws per request whenever any
share is non-zero, so a seed gives the same outcome to the N-th request whatever shares
are set):

1. ``error_5xx``  -> 500, 502 or 503 (chosen at random);
2. ``error_429``  -> 429 with ``Retry-After: <retry_after_s>`` (or ``retry_after``
   verbatim, when set);
3. ``malformed``  -> a 200 whose body is not ``{"code": 0, "message": "OK"}``;
4. ``hang``       -> no answer for ``hang_s`` seconds (or until the client leaves).

The first draw that hits decides, so the effective share of a later fault is its share
times the chance that no earlier one hit (``effective_shares`` computes them).
"""

from __future__ import annotations

import os
import random
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Share = Annotated[float, Field(ge=0.0, le=1.0)]
OutageMode = Literal["refuse", "503"]

# Answer kinds, stored as one byte per ledger entry.
OK = 0
ERROR_5XX = 1
RATE_LIMITED = 2
MALFORMED = 3
HANG = 4
BAD_REQUEST = 5
UNAUTHORIZED = 6
OUTAGE = 7
KINDS: tuple[str, ...] = (
    "ok",
    "5xx",
    "429",
    "malformed",
    "hang",
    "bad_request",
    "unauthorized",
    "outage",
)
KIND_CODES: dict[str, int] = {name: code for code, name in enumerate(KINDS)}

_5XX_STATUSES = (500, 502, 503)


class Faults(BaseModel):
    """What goes wrong, and how often. All shares are in 0..1; all zero = a perfect gateway."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0.0, ge=0, description="Fixed delay before every answer.")
    latency_min_ms: float | None = Field(
        None, ge=0, description="With latency_max_ms: uniform random delay instead."
    )
    latency_max_ms: float | None = Field(None, ge=0)
    error_5xx: Share = Field(0.0, description="Share answered 500/502/503.")
    error_429: Share = Field(0.0, description="Share answered 429 with Retry-After.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After of the 429 answers.")
    retry_after: str | None = Field(
        None,
        min_length=1,
        max_length=100,
        pattern=r"^[ -~]+$",
        description=(
            "Retry-After of the 429 answers sent verbatim instead of retry_after_s: an "
            "HTTP date, or a value a client must survive (1e12, inf, nan, -5)."
        ),
    )
    malformed: Share = Field(0.0, description="Share answered 200 with a wrong body.")
    hang: Share = Field(0.0, description="Share never answered (see hang_s).")
    hang_s: float = Field(300.0, gt=0, description="How long a hanging request hangs.")
    seed: int | None = Field(None, description="Seed of the draws (None: a random one).")

    @model_validator(mode="after")
    def _check_latency_range(self) -> Faults:
        low, high = self.latency_min_ms, self.latency_max_ms
        if (low is None) != (high is None):
            raise ValueError("give both latency_min_ms and latency_max_ms, or neither")
        if low is not None and high is not None and low > high:
            raise ValueError("latency_min_ms must not exceed latency_max_ms")
        return self

    @property
    def any_share(self) -> bool:
        return bool(self.error_5xx or self.error_429 or self.malformed or self.hang)

    def effective_shares(self) -> dict[str, float]:
        """Expected share of each answer among valid, authorised requests."""
        remaining = 1.0
        shares: dict[str, float] = {}
        for kind, share in (
            ("5xx", self.error_5xx),
            ("429", self.error_429),
            ("malformed", self.malformed),
            ("hang", self.hang),
        ):
            shares[kind] = remaining * share
            remaining *= 1.0 - share
        shares["ok"] = remaining
        return shares


class FaultPlan:
    """The hot-path view of `Faults`: plain attributes and the seeded generators."""

    __slots__ = (
        "active",
        "detail_rng",
        "error_5xx",
        "error_429",
        "faults",
        "hang",
        "hang_s",
        "latency_high_s",
        "latency_low_s",
        "latency_rng",
        "malformed",
        "retry_after",
        "rng",
        "seed",
    )

    seed: int
    rng: random.Random
    detail_rng: random.Random
    latency_rng: random.Random

    def __init__(self, faults: Faults, previous: FaultPlan | None = None) -> None:
        """Draw on from `previous`'s generators when given, else start from `faults.seed`."""
        self.faults = faults
        self.error_5xx = faults.error_5xx
        self.error_429 = faults.error_429
        self.malformed = faults.malformed
        self.hang = faults.hang
        self.active = faults.any_share
        self.hang_s = faults.hang_s
        raw = faults.retry_after if faults.retry_after is not None else str(faults.retry_after_s)
        self.retry_after = raw.encode()
        if faults.latency_min_ms is not None and faults.latency_max_ms is not None:
            self.latency_low_s = faults.latency_min_ms / 1000.0
            self.latency_high_s = faults.latency_max_ms / 1000.0
        else:
            self.latency_low_s = self.latency_high_s = faults.latency_ms / 1000.0
        if previous is not None:
            self.seed = previous.seed
            self.rng, self.detail_rng, self.latency_rng = (
                previous.rng,
                previous.detail_rng,
                previous.latency_rng,
            )
        else:
            self.reseed(faults.seed)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the draws from `seed` (a fresh random seed when None)."""
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(6), "big")
        self.rng = random.Random(self.seed)
        self.detail_rng = random.Random(self.seed + 1)
        self.latency_rng = random.Random(self.seed + 2)

    def draw(self) -> int:
        """The answer kind of one valid, authorised request (OK when no fault hits)."""
        if not self.active:
            return OK
        rand = self.rng.random
        a, b, c, d = rand(), rand(), rand(), rand()
        if a < self.error_5xx:
            return ERROR_5XX
        if b < self.error_429:
            return RATE_LIMITED
        if c < self.malformed:
            return MALFORMED
        if d < self.hang:
            return HANG
        return OK

    def latency(self) -> float:
        """Seconds to wait before answering (0.0 when no latency is set)."""
        low = self.latency_low_s
        if low == self.latency_high_s:
            return low
        delay: float = self.latency_rng.uniform(low, self.latency_high_s)
        return delay

    def status_5xx(self) -> int:
        status: int = self.detail_rng.choice(_5XX_STATUSES)
        return status

    def malformed_variant(self, count: int) -> int:
        variant: int = self.detail_rng.randrange(count)
        return variant

    def describe(self) -> dict[str, Any]:
        data = self.faults.model_dump()
        data["seed_in_use"] = self.seed
        return data
