"""`notifications-api-key`: manage API keys straight in the database, without a
credential (the bootstrap of a deployment without an identity provider).

    notifications-api-key create --name ops --role admin
    notifications-api-key list
    notifications-api-key revoke ID

(or `python -m services.api.keys ...`; `make api-key NAME=ops ROLE=admin`). It reads
`DATABASE_URL` like the services and calls the same code as `POST /api/v1/api-keys/`;
each change is in the audit trail as `cli:<user>`. `create` prints the key once, on
stdout alone (the rest goes to stderr), so `KEY=$(notifications-api-key create ...)`
works. Exit status: 0 done, 1 refused (said on stderr), 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

import structlog
from pydantic import ValidationError

from services.api import api_keys
from services.api.api_keys import ApiKeyIn
from services.api.errors import Conflict, NotFound
from shared.audit import Origin, audit_entry
from shared.db import create_engine, create_session_factory
from shared.settings import Settings, load_settings


def _origin() -> Origin:
    return Origin(actor=f"cli:{getpass.getuser()}", via="cli", remote_addr=None, request_id=None)


async def create(settings: Settings, body: ApiKeyIn) -> api_keys.ApiKeyCreated:
    engine = create_engine(settings, application_name="api-key")
    try:
        async with create_session_factory(engine)() as session, session.begin():
            origin = _origin()
            created = await api_keys.create_key(session, body, origin.actor)
            details = {"name": created.name, "role": created.role.value}
            session.add(audit_entry(origin, "api_key.create", "api_key", created.id, details))
        return created
    finally:
        await engine.dispose()


async def revoke(settings: Settings, key_id: int) -> bool:
    engine = create_engine(settings, application_name="api-key")
    try:
        async with create_session_factory(engine)() as session, session.begin():
            origin = _origin()
            revoked, now = await api_keys.revoke_key(session, key_id, origin.actor)
            if now:
                details = {"name": revoked.name}
                session.add(audit_entry(origin, "api_key.revoke", "api_key", key_id, details))
        return now
    finally:
        await engine.dispose()


async def listing(settings: Settings) -> list[api_keys.ApiKeyOut]:
    engine = create_engine(settings, application_name="api-key")
    try:
        async with create_session_factory(engine)() as session:
            _, items = await api_keys.list_keys(session, 10_000, 0)
        return items
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="notifications-api-key", description="Create, list and revoke API keys."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("create", help="create a key and print it (once)")
    make.add_argument("--name", required=True, help="unique among keys in use")
    make.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    commands.add_parser("list", help="the keys, newest first (never their secrets)")
    drop = commands.add_parser("revoke", help="revoke a key by its id")
    drop.add_argument("id", type=int)
    args = parser.parse_args(argv)
    settings = load_settings()
    # Log lines to stderr: stdout carries the key alone.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

    if args.command == "create":
        try:
            body = ApiKeyIn(name=args.name, role=args.role)
        except ValidationError as exc:
            problem = exc.errors()[0]
            sys.stderr.write(f"api-key: {'.'.join(map(str, problem['loc']))}: {problem['msg']}\n")
            return 2
        try:
            created = asyncio.run(create(settings, body))
        except Conflict as exc:
            sys.stderr.write(f"api-key: {exc.field}: {exc}\n")
            return 1
        sys.stderr.write(
            f"created API key {created.id} {created.name!r} ({created.role.value}); "
            "it is shown this once, keep it now:\n"
        )
        sys.stdout.write(created.key + "\n")
        return 0
    if args.command == "revoke":
        try:
            now = asyncio.run(revoke(settings, args.id))
        except NotFound as exc:
            sys.stderr.write(f"api-key: {exc}\n")
            return 1
        sys.stderr.write(f"API key {args.id} {'revoked' if now else 'was already revoked'}\n")
        return 0
    for item in asyncio.run(listing(settings)):
        state = f"revoked {item.revoked_at:%Y-%m-%d %H:%M}" if item.revoked_at else "in use"
        used = f"{item.last_used_at:%Y-%m-%d %H:%M}" if item.last_used_at else "never"
        sys.stdout.write(
            f"{item.id}\t{item.name}\t{item.role.value}\t{state}\tlast used {used}\t"
            f"by {item.created_by}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
