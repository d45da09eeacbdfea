"""The repository's root, the session's PostgreSQL and Kafka as the tests see them, and
settings for one test (its own Kafka topic prefix)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Infra:
    database_url: str
    kafka_bootstrap: str
    kafka_version: str
    postgres_version: str


def make_settings(infra: Infra, **overrides: object) -> Settings:
    """Settings for one test: its own topic prefix so tests never read each other's."""
    values: dict[str, object] = {
        "database_url": infra.database_url,
        "kafka_bootstrap": infra.kafka_bootstrap,
        "kafka_topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
        "kafka_partitions": 3,
        "log_file": None,
        # Static test tokens act as admin in development mode (tests of the other
        # modes set it off).
        "dev_mode": True,
    }
    values.update(overrides)
    return load_settings(**values)
