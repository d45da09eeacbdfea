"""Every Kafka client of the services logs in over SASL on a real broker: a broker of the
test's own with a SASL_PLAINTEXT listener (PLAIN logins), next to its plain one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from shared.consumer_lag import KafkaOffsets
from shared.kafka import create_broker, ensure_topics, probe_kafka, topics_from
from shared.settings import Settings, load_settings
from tools.infra import KafkaServer, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

USER, PASSWORD = "notifications", "s3cret-password"


class SaslKafka(KafkaServer):
    """The harness's broker with one more listener: SASL_PLAINTEXT, PLAIN, one user."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.sasl_port = free_port()

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _properties(self) -> str:
        lines = []
        for line in super()._properties().splitlines():
            key = line.partition("=")[0]
            if key == "listeners" or key == "advertised.listeners":
                line = f"{line},SASL_PLAINTEXT://{self.sasl_bootstrap}"
            elif key == "listener.security.protocol.map":
                line = f"{line},SASL_PLAINTEXT:SASL_PLAINTEXT"
            lines.append(line)
        module = "org.apache.kafka.common.security.plain.PlainLoginModule"
        jaas = f'{module} required user_{USER}="{PASSWORD}";'
        lines += [
            "sasl.enabled.mechanisms=PLAIN",
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas}",
        ]
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    with SaslKafka(tmp_path_factory.mktemp("sasl-kafka")) as kafka:
        yield kafka


def sasl_settings(kafka: SaslKafka, password: str = PASSWORD, **more: Any) -> Settings:
    return load_settings(
        _env_file=None,
        kafka_bootstrap=kafka.sasl_bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username=USER,
        kafka_sasl_password=password,
        kafka_partitions=2,
        kafka_enable_idempotence=True,
        **more,
    )


async def test_the_services_clients_log_in_and_work(sasl_kafka: SaslKafka) -> None:
    settings = sasl_settings(sasl_kafka, kafka_topic_prefix="sasl.")
    await probe_kafka(settings)  # /ready's check
    created = await ensure_topics(settings)  # the admin client
    topics = topics_from(settings)
    assert sorted(created) == sorted(topics.all())

    broker = create_broker(settings, client_id="test")  # producer and consumers
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    @broker.subscriber(
        topics.message_status,
        group_id="sasl.test",
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
    )
    async def on_status(body: dict[str, Any], message: KafkaMessage) -> None:
        await received.put(body)

    async with broker:
        await broker.start()
        await broker.publish({"hello": "over sasl"}, topics.message_status, key=b"1")
        assert await asyncio.wait_for(received.get(), 30) == {"hello": "over sasl"}

    offsets = KafkaOffsets(settings, "test")  # the lag sampler
    await offsets.start()
    try:
        partitions = await offsets.partitions([topics.message_status])
        ends = await offsets.end_offsets(partitions)
    finally:
        await offsets.close()
    assert partitions == [
        TopicPartition(topics.message_status, 0),
        TopicPartition(topics.message_status, 1),
    ]
    assert sum(ends.values()) == 1


async def test_a_wrong_password_is_refused(sasl_kafka: SaslKafka) -> None:
    settings = sasl_settings(sasl_kafka, password="not-the-password", ready_timeout_s=5)
    # aiokafka reports a failed login as a bootstrap that found no broker
    with pytest.raises(KafkaConnectionError):
        await probe_kafka(settings)
    with pytest.raises(KafkaConnectionError):
        await ensure_topics(settings)


async def test_the_same_clients_without_sasl_are_refused_on_the_sasl_port(
    sasl_kafka: SaslKafka,
) -> None:
    plain = Settings(_env_file=None, kafka_bootstrap=sasl_kafka.sasl_bootstrap, ready_timeout_s=5)
    with pytest.raises(KafkaConnectionError):
        await probe_kafka(plain)
