"""The statistics' buckets: how the API groups message statuses for its readers.

The labels are the seed-compatible ones of the Admin API (docs/api.md); `cancelled` is in none.
"""

from __future__ import annotations

from typing import Literal, get_args

from shared.models import PENDING_STATUSES, MessageStatus

Bucket = Literal["Created, waiting", "Sent", "Unable to deliver"]
WAITING, SENT, UNDELIVERED = get_args(Bucket)

BUCKETS: dict[str, tuple[MessageStatus, ...]] = {
    WAITING: PENDING_STATUSES,
    SENT: (MessageStatus.SENT,),
    UNDELIVERED: (MessageStatus.FAILED, MessageStatus.EXPIRED),
}
BUCKET_OF: dict[str, str] = {
    status.value: bucket for bucket, statuses in BUCKETS.items() for status in statuses
}
# A message list's status filter: a bucket's statuses (a status names only itself).
BUCKETS_BY_NAME: dict[str | None, list[str]] = {
    name: [status.value for status in statuses] for name, statuses in BUCKETS.items()
}
