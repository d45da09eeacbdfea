"""Kafka topic names: the one place they are spelled.

Names carry a configurable prefix (`KAFKA_TOPIC_PREFIX`, default `notifications.`).
"""

from __future__ import annotations

from dataclasses import dataclass

MAILING_EVENTS = "mailing.events"
CLIENT_EVENTS = "client.events"
MESSAGE_SEND = "message.send"
MESSAGE_SEND_RETRY = "message.send.retry"  # + ".<tier>"
MESSAGE_SEND_DLQ = "message.send.dlq"
MESSAGE_STATUS = "message.status"


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "notifications."
    retry_tiers: int = 4

    @property
    def mailing_events(self) -> str:
        return self.prefix + MAILING_EVENTS

    @property
    def client_events(self) -> str:
        return self.prefix + CLIENT_EVENTS

    @property
    def message_send(self) -> str:
        return self.prefix + MESSAGE_SEND

    def message_send_retry(self, tier: int) -> str:
        if not 1 <= tier <= self.retry_tiers:
            raise ValueError(f"retry tier {tier} outside 1..{self.retry_tiers}")
        return f"{self.prefix}{MESSAGE_SEND_RETRY}.{tier}"

    @property
    def message_send_dlq(self) -> str:
        return self.prefix + MESSAGE_SEND_DLQ

    @property
    def message_status(self) -> str:
        return self.prefix + MESSAGE_STATUS

    def group(self, name: str) -> str:
        """A consumer group id, namespaced like the topics: deployments that share a
        cluster under different prefixes never share a group."""
        return self.prefix + name

    def all(self) -> list[str]:
        return [
            self.mailing_events,
            self.client_events,
            self.message_send,
            *(self.message_send_retry(tier) for tier in range(1, self.retry_tiers + 1)),
            self.message_send_dlq,
            self.message_status,
        ]
