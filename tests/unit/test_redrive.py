"""The re-drive's mark: passed only once every partition is committed up to it.

Re-drive on the running pipeline: tests/e2e/test_redrive.py."""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka import TopicPartition

from services.scheduler.redrive import Mark, passed


def test_a_mark_is_passed_only_when_every_partition_is_committed_up_to_it() -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    mark = Mark(datetime.now(UTC), {a: 10, b: 5})
    assert passed(mark, {a: 10, b: 7}, {})
    assert not passed(mark, {a: 9, b: 7}, {})
    assert not passed(mark, {a: None, b: 5}, {a: 0})  # nothing committed yet
    # Records below the log start no longer exist: nothing there can be pending.
    assert passed(mark, {a: 2, b: None}, {a: 10, b: 5})
