"""Status changes, status names in SQL text and the API's buckets, without a database."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import get_args

from services.api.buckets import BUCKET_OF, BUCKETS, BUCKETS_BY_NAME, Bucket
from services.api.routes.mailings import StatusFilter
from shared.models import PENDING_STATUSES, WAITING_FOR_DISPATCH, MessageStatus, sql_in, sql_literal
from shared.statuses import Changes, Moved, StatusChange, changes_of, total


def test_status_names_in_sql_text_come_from_the_enum() -> None:
    assert sql_literal(MessageStatus.SENDING) == "'sending'"
    assert sql_in("m.status", WAITING_FOR_DISPATCH) == "m.status IN ('queued','retrying')"
    assert sql_in("status", PENDING_STATUSES) == (
        "status IN ('scheduled','queued','sending','retrying')"
    )


def test_claimed_rows_become_named_changes() -> None:
    rows = [
        SimpleNamespace(id=1, mailing_id=2, client_id=3, attempts=0, previous="retrying"),
        SimpleNamespace(id=4, mailing_id=2, client_id=5, attempts=2, previous="queued"),
    ]
    assert changes_of(rows) == [
        StatusChange(message_id=1, mailing_id=2, client_id=3, attempt=0, previous="retrying"),
        StatusChange(message_id=4, mailing_id=2, client_id=5, attempt=2, previous="queued"),
    ]
    # Rows of a claim that knows the status they were in carry no `previous` of their own.
    claimed = [SimpleNamespace(id=1, mailing_id=2, client_id=3, attempts=1)]
    assert changes_of(claimed, previous=MessageStatus.SCHEDULED)[0].previous == "scheduled"


def test_bulk_changes_are_counted_by_kind() -> None:
    changes: Changes = Counter(
        {
            Moved(mailing_id=1, previous="scheduled", status="expired", error="x"): 3,
            Moved(mailing_id=1, previous="queued", status="expired", error="x"): 2,
            Moved(mailing_id=2, previous="failed", status="scheduled", error=None): 5,
        }
    )
    assert total(changes) == 10
    assert total(changes, ["expired"]) == 5
    assert total(changes, []) == 0


def test_every_status_but_cancelled_is_in_exactly_one_bucket() -> None:
    assert list(BUCKETS) == list(get_args(Bucket))
    assert set(BUCKET_OF) == {s.value for s in MessageStatus} - {MessageStatus.CANCELLED.value}
    counted = Counter(status for statuses in BUCKETS.values() for status in statuses)
    assert set(counted.values()) == {1}
    assert BUCKETS_BY_NAME["Unable to deliver"] == ["failed", "expired"]


def test_a_message_list_filters_by_a_bucket_or_by_any_one_status() -> None:
    assert list(get_args(StatusFilter)) == [*get_args(Bucket), *(s.value for s in MessageStatus)]
