"""The record of every send request the sandbox received, in compact parallel arrays.

One entry per request, in arrival order: msgId (int64), arrival time (float64 epoch
seconds from a monotonic clock anchored once at start, so it never goes backwards),
answer kind (1 byte), status code (2 bytes), and, unless ``store_text`` is off, phone
(int64) and text (a shared str when the same text repeats). About 19 bytes per entry
without text; 10**6 entries with texts fit in well under 200 MB.

Accepted msgIds are also kept in a set (duplicates counted as they happen), so the
summary is cheap at any size.
"""

from __future__ import annotations

import json
import operator
import time
from array import array
from collections import Counter
from datetime import UTC, datetime
from itertools import compress
from typing import TYPE_CHECKING, Any

from services.sandbox.faults import KIND_CODES, KINDS, OK

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

# Stored in place of a msgId or phone that could not be read from the request.
MISSING = -(2**63)
# Distinct texts kept for sharing; past this, texts are stored as they come.
_TEXT_CACHE_LIMIT = 10_000


class Clock:
    """Epoch seconds that follow `time.monotonic` (wall-clock steps do not reorder)."""

    __slots__ = ("_epoch", "_mono")

    def __init__(self) -> None:
        self._mono = time.monotonic()
        self._epoch = time.time()

    def now(self) -> float:
        return self._epoch + (time.monotonic() - self._mono)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class Ledger:
    def __init__(self, *, store_text: bool = True) -> None:
        self.store_text = store_text
        self.reset()

    def reset(self) -> int:
        """Forget everything; return how many entries there were."""
        cleared = len(getattr(self, "msg_ids", ()))
        self.msg_ids = array("q")
        self.at = array("d")
        self.kinds = array("B")
        self.statuses = array("H")
        self.phones = array("q")
        self.texts: list[str | None] = []
        self.by_kind = [0] * len(KINDS)
        self.accepted_ids: set[int] = set()
        self.duplicates: dict[int, int] = {}
        self.first_accepted_at: float | None = None
        self.last_accepted_at: float | None = None
        self._text_cache: dict[str, str] = {}
        return cleared

    def __len__(self) -> int:
        return len(self.msg_ids)

    def record(
        self,
        msg_id: int | None,
        phone: int | None,
        text: str | None,
        kind: int,
        status: int,
        at: float,
    ) -> None:
        """Append one entry (the hot path: a few array appends)."""
        mid = MISSING if msg_id is None else msg_id
        self.msg_ids.append(mid)
        self.at.append(at)
        self.kinds.append(kind)
        self.statuses.append(status)
        self.by_kind[kind] += 1
        if self.store_text:
            self.phones.append(MISSING if phone is None else phone)
            if text is not None:
                cache = self._text_cache
                shared = cache.get(text)
                if shared is None:
                    if len(cache) < _TEXT_CACHE_LIMIT:
                        cache[text] = text
                else:
                    text = shared
            self.texts.append(text)
        if kind == OK:
            accepted = self.accepted_ids
            if mid in accepted:
                self.duplicates[mid] = self.duplicates.get(mid, 1) + 1
            else:
                accepted.add(mid)
            if self.first_accepted_at is None:
                self.first_accepted_at = at
            self.last_accepted_at = at

    # --- reading ------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        count = len(self.msg_ids)
        first = self.at[0] if count else None
        last = self.at[-1] if count else None
        by_status = Counter(self.statuses)
        return {
            "requests": count,
            "accepted": self.by_kind[OK],
            "unique_accepted": len(self.accepted_ids),
            "duplicates": sorted(self.duplicates),
            "duplicate_count": len(self.duplicates),
            "duplicate_deliveries": sum(self.duplicates.values()) - len(self.duplicates),
            "by_answer": {name: self.by_kind[code] for code, name in enumerate(KINDS)},
            "by_status": {str(status): n for status, n in sorted(by_status.items())},
            "first_at": None if first is None else iso(first),
            "last_at": None if last is None else iso(last),
            "first_at_epoch": first,
            "last_at_epoch": last,
            "first_accepted_at": _iso_or_none(self.first_accepted_at),
            "last_accepted_at": _iso_or_none(self.last_accepted_at),
            "ledger_text": self.store_text,
        }

    def entry(self, index: int) -> dict[str, Any]:
        mid = self.msg_ids[index]
        at = self.at[index]
        kind = self.kinds[index]
        phone: int | None = None
        text: str | None = None
        if self.store_text:
            phone = self.phones[index]
            text = self.texts[index]
        return {
            "seq": index,
            "msg_id": None if mid == MISSING else mid,
            "phone": None if phone == MISSING else phone,
            "text": text,
            "at": iso(at),
            "at_epoch": at,
            "status": self.statuses[index],
            "answer": KINDS[kind],
            "accepted": kind == OK,
        }

    def entries(
        self,
        *,
        msg_id: int | None = None,
        accepted: bool | None = None,
        answer: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Entries in arrival order, filtered, then paged with offset/limit."""
        kinds = self.kinds
        wanted_kind = KIND_CODES[answer] if answer is not None else None
        out: list[dict[str, Any]] = []
        skipped = 0
        for index in self._positions(msg_id):
            kind = kinds[index]
            if accepted is not None and (kind == OK) != accepted:
                continue
            if wanted_kind is not None and kind != wanted_kind:
                continue
            if skipped < offset:
                skipped += 1
                continue
            if len(out) >= limit:
                break
            out.append(self.entry(index))
        return out

    def _positions(self, msg_id: int | None) -> Iterable[int]:
        if msg_id is None:
            return range(len(self.msg_ids))
        return self._find(msg_id)

    def _find(self, msg_id: int) -> Iterator[int]:
        ids = self.msg_ids
        start = 0
        while True:
            try:
                start = ids.index(msg_id, start)
            except ValueError:
                return
            yield start
            start += 1

    def accepted_columns(self) -> tuple[array[int], array[float], array[int] | None]:
        """Copies (memcpy) of msgIds, arrivals and kinds (None: all accepted) to encode."""
        count = len(self.msg_ids)
        kinds = None if self.by_kind[OK] == count else self.kinds[:count]
        return self.msg_ids[:count], self.at[:count], kinds

    def accepted_json(self) -> bytes:
        return encode_accepted(*self.accepted_columns())


def encode_accepted(msg_ids: array[int], at: array[float], kinds: array[int] | None) -> bytes:
    """`[[msgId, arrival_epoch], ...]` of accepted entries, built in one pass in C.

    About 1.8 s per 10**6 entries on this machine (formatting the floats dominates);
    the endpoint runs it in a thread on a snapshot, so sends keep being answered.
    """
    pairs: Iterable[tuple[int, float]] = zip(msg_ids, at, strict=True)
    if kinds is not None:
        pairs = compress(pairs, map(operator.not_, kinds))  # kind OK is 0
    return json.dumps(list(pairs), separators=(",", ":")).encode()


def _iso_or_none(epoch: float | None) -> str | None:
    return None if epoch is None else iso(epoch)
