"""Kafka plumbing: the FastStream broker factory, topic creation, a readiness probe."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream.kafka import KafkaBroker
from faststream.kafka.security import parse_security
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

from shared.logging import get_logger
from shared.topics import Topics

if TYPE_CHECKING:
    from shared.settings import Settings

log = get_logger(__name__)


def topics_from(settings: Settings) -> Topics:
    return Topics(prefix=settings.kafka_topic_prefix, retry_tiers=len(settings.retry_delays_s))


def kafka_security(settings: Settings) -> BaseSecurity | None:
    """How the clients authenticate and encrypt (KAFKA_SECURITY_PROTOCOL and the
    KAFKA_SASL_* / KAFKA_SSL_* settings); None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = tls_context(settings) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    username = settings.kafka_sasl_username or ""
    password = (
        settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else ""
    )
    use_ssl = protocol == "SASL_SSL"
    mechanism = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }[settings.kafka_sasl_mechanism]
    return mechanism(username, password, ssl_context=context, use_ssl=use_ssl)


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Server verification against KAFKA_SSL_CAFILE (else the system's CAs), with the
    client certificate of KAFKA_SSL_CERTFILE/KEYFILE when given."""
    cafile = settings.kafka_ssl_cafile
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile))
    return context


def connection_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every aiokafka client: the bootstrap servers and the security
    options of `kafka_security` (the same ones the FastStream broker gets)."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        **parse_security(kafka_security(settings)),
    }


def create_broker(settings: Settings, *, client_id: str) -> KafkaBroker:
    """A broker for one service. Build it in the lifespan; start it with `BrokerRunner`."""
    return KafkaBroker(
        settings.kafka_bootstrap,
        client_id=f"{settings.kafka_client_id}-{client_id}",
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        allow_auto_create_topics=False,
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        graceful_timeout=settings.shutdown_grace_s,
        security=kafka_security(settings),
        # Per-record "Received"/"Processed" lines are DEBUG: at 10^5 records they drown
        # everything else. Our handlers log what matters, with entity ids.
        logger=logging.getLogger("faststream.access"),
        log_level=logging.DEBUG,
        specification_url=settings.kafka_bootstrap,
    )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the project's topics with the configured partition counts; return new ones."""
    topics = topics_from(settings)
    admin = AIOKafkaAdminClient(
        **connection_options(settings),
        client_id=f"{settings.kafka_client_id}-admin",
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=settings.kafka_partitions,
                replication_factor=settings.kafka_replication_factor,
            )
            for name in topics.all()
            if name not in existing
        ]
        if not wanted:
            return []
        # The listing may lag behind a creation by another process: trust the per-topic
        # answer of CreateTopics, where "already exists" is fine.
        response = await admin.create_topics(wanted)
        created: list[str] = []
        for name, code, *_ in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                raise KafkaError(f"cannot create topic {name}: error code {code}")
        if created:
            log.info("kafka_topics_created", topics=created, partitions=settings.kafka_partitions)
        return created
    finally:
        await admin.close()


async def probe_kafka(settings: Settings) -> None:
    """Raise unless a Kafka broker answers a metadata request within the ready timeout."""
    client = AIOKafkaClient(
        **connection_options(settings),
        client_id=f"{settings.kafka_client_id}-probe",
        request_timeout_ms=int(settings.ready_timeout_s * 1000),
    )
    try:
        async with asyncio.timeout(settings.ready_timeout_s):
            await client.bootstrap()
    finally:
        await client.close()
