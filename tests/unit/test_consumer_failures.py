"""A consumer's failure is forgotten once a rebalance gave its partitions to another
consumer (`ConsumerHealth`, no broker).

On the real broker: tests/integration/test_consumer_failures.py; each service end to
end: tests/e2e/test_consumer_failures.py.
"""

from __future__ import annotations

from aiokafka import TopicPartition

from shared.consuming import ConsumerHealth, Failure


class _Assigned:
    def __init__(self, *partitions: TopicPartition) -> None:
        self.partitions = set(partitions)

    def assignment(self) -> set[TopicPartition]:
        return self.partitions


def test_a_failure_whose_partitions_went_to_another_consumer_is_forgotten() -> None:
    health = ConsumerHealth("test")
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = _Assigned(a, b)
    health.failing["g"] = Failure("t", "E: boom", 3, 0.0, consumer, frozenset({a}))
    assert set(health.checks()) == {"consumer:g"}
    consumer.partitions = {b}  # a rebalance gave partition 0 to another consumer
    assert health.checks() == {}
    assert health.failing_groups() == set()
