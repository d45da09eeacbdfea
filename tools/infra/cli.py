"""The command line: ``python -m tools.infra run [--keycloak] -- CMD``, ``fetch-kafka``
and ``fetch-keycloak``."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tools.infra.base import EXIT_INFRA_FAILED, LOCALHOST, InfraError, log
from tools.infra.kafka import KafkaServer
from tools.infra.kafka_jvm import KAFKA_VERSION, fetch_kafka, kafka_jar_version
from tools.infra.keycloak import KeycloakServer
from tools.infra.keycloak_dist import KEYCLOAK_VERSION
from tools.infra.postgres import PostgresServer, postgres_version, run_migrations
from tools.infra.process import start_together

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import FrameType


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signum)


def _say(message: str) -> None:
    print(f"infra: {message}", file=sys.stderr, flush=True)


def _run_child(command: Sequence[str], env: Mapping[str, str]) -> int:
    try:
        child = subprocess.Popen(list(command), env=dict(env))
    except OSError as exc:
        _say(f"cannot run {command[0]!r}: {exc}")
        return 127
    try:
        code = child.wait()
    except KeyboardInterrupt:
        # the terminal sent SIGINT to the child too: give it time to finish its teardown
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.terminate()
        return _finish_child(child, 130)
    except _Interrupted as exc:
        child.send_signal(exc.signum)
        return _finish_child(child, 128 + exc.signum)
    return 128 - code if code < 0 else code


def _finish_child(child: subprocess.Popen[bytes], code: int) -> int:
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    return code


def _cmd_run(workdir_arg: str | None, command: Sequence[str], with_keycloak: bool = False) -> int:
    if not command:
        _say("usage: python -m tools.infra run [--workdir DIR] [--keycloak] -- CMD ARGS...")
        return 2
    created = workdir_arg is None
    workdir = Path(workdir_arg or tempfile.mkdtemp(prefix="notifications-infra-")).absolute()
    if created:
        workdir.chmod(0o711)  # PostgreSQL may run as another user: let it traverse
    env = dict(os.environ)
    servers: list[KafkaServer | PostgresServer | KeycloakServer] = []
    pg: PostgresServer | None = None
    kafka: KafkaServer | None = None
    keycloak: KeycloakServer | None = None
    try:
        database_url = os.environ.get("DATABASE_URL")
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if database_url:
            try:
                pg_version = postgres_version(database_url)
            except Exception as exc:
                pg_version = "PostgreSQL (version unknown)"
                log.warning("could not query the external database: %s", exc)
            _say(f"using external {pg_version} from DATABASE_URL")
        else:
            pg = PostgresServer(workdir / "postgres")
            servers.append(pg)
        if bootstrap:
            # whoever started it may have said what it is
            kafka_version = os.environ.get("INFRA_KAFKA_VERSION") or "external Kafka"
            _say(f"using external Kafka at {bootstrap} from KAFKA_BOOTSTRAP")
        else:
            kafka = KafkaServer(workdir / "kafka")
            servers.append(kafka)
        if with_keycloak and os.environ.get("KEYCLOAK_URL"):
            _say(f"using external Keycloak at {os.environ['KEYCLOAK_URL']} from KEYCLOAK_URL")
        elif with_keycloak:
            keycloak = KeycloakServer(workdir / "keycloak")
            servers.append(keycloak)
        started = time.monotonic()
        try:
            start_together(servers)
        except InfraError as exc:
            _say(f"error: the infrastructure did not start:\n{exc}")
            return EXIT_INFRA_FAILED
        elapsed = time.monotonic() - started
        if kafka is not None:
            bootstrap = kafka.bootstrap
            kafka_version = kafka.description
            _say(f"{kafka.description} at {kafka.bootstrap} (workdir {kafka.workdir})")
        if pg is not None:
            database_url = pg.url
            pg_version = pg.description
            _say(f"{pg.description} at {LOCALHOST}:{pg.port} (workdir {pg.workdir})")
        if keycloak is not None:
            # not OIDC_ISSUER: it would switch every Settings of a test run to the provider
            env.update(KEYCLOAK_URL=keycloak.url, INFRA_KEYCLOAK_VERSION=keycloak.description)
            _say(f"{keycloak.description} at {keycloak.url}, issuer {keycloak.issuer}")
        if servers:
            _say(f"ready in {elapsed:.1f}s")
        assert database_url is not None
        assert bootstrap is not None
        try:
            run_migrations(database_url)
        except InfraError as exc:
            _say(f"error: {exc}")
            return EXIT_INFRA_FAILED
        env.update(
            DATABASE_URL=database_url,
            KAFKA_BOOTSTRAP=bootstrap,
            INFRA_KAFKA_VERSION=kafka_version,
            INFRA_POSTGRES_VERSION=pg_version,
        )
        return _run_child(command, env)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except _Interrupted as exc:
        _say(f"stopped by signal {exc.signum}")
        return 128 + exc.signum
    finally:
        # a second Ctrl-C or SIGTERM must not cut the cleanup short (SIGKILL still can:
        # the watchdogs then stop the servers)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        for server in reversed(servers):
            server.stop()
        if created:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.infra",
        description="Real PostgreSQL and Apache Kafka for tests and the local stack.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="start both (unless DATABASE_URL / KAFKA_BOOTSTRAP are "
        "set), migrate, run CMD, stop; exit with CMD's code",
    )
    run.add_argument("--workdir", help="keep data and logs here (default: a temp dir, removed)")
    run.add_argument(
        "--keycloak",
        action="store_true",
        help="also start Keycloak (unless KEYCLOAK_URL is set); CMD gets KEYCLOAK_URL "
        "(the issuer: $KEYCLOAK_URL/realms/notifications)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    fetch = sub.add_parser("fetch-kafka", help="only download and cache the Kafka jars")
    fetch.add_argument("--version", default=KAFKA_VERSION)
    sub.add_parser(
        "fetch-keycloak",
        help=f"only download, build and seed Keycloak {KEYCLOAK_VERSION} (start, stop)",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=os.environ.get("INFRA_LOG_LEVEL", "INFO").upper(),
        format="infra: %(message)s",
        stream=sys.stderr,
    )
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)

    if args.command == "fetch-kafka":
        try:
            libs = fetch_kafka(args.version)
        except InfraError as exc:
            _say(f"error: {exc}")
            return EXIT_INFRA_FAILED
        _say(f"Apache Kafka {kafka_jar_version(libs) or args.version} jars in {libs}")
        return 0
    if args.command == "fetch-keycloak":
        return _fetch_keycloak()
    command: list[str] = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    return _cmd_run(args.workdir, command, with_keycloak=args.keycloak)


def _fetch_keycloak() -> int:
    """Everything a later start reuses: the download, the build, the seed (and the AOT
    cache): made by starting a server once; says how long a cached start takes."""
    with tempfile.TemporaryDirectory(prefix="notifications-keycloak-") as scratch:
        server = KeycloakServer(Path(scratch))
        try:
            server.start()
        except InfraError as exc:
            _say(f"error: {exc}")
            return EXIT_INFRA_FAILED
        finally:
            rss = server.rss_bytes()
            server.stop()
    memory = f", {rss / 2**20:.0f} MiB RSS" if rss else ""
    _say(f"{server.description} ready in {server.start_seconds or 0:.1f}s{memory}")
    return 0
