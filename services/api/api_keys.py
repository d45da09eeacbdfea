"""API keys: create, list, revoke. The REST API, the console (through the REST API) and
the bootstrap command (`python -m services.api.keys`) all call these functions."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from services.api.errors import Conflict, NotFound
from services.api.schemas import Strict
from shared.api_keys import new_key
from shared.auth import Role
from shared.logging import get_logger
from shared.models import ApiKey

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

log = get_logger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX = 64


class ApiKeyIn(Strict):
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=NAME_MAX,
            pattern=NAME_PATTERN,
            description="Unique among keys in use: letters, digits, `.`, `_`, `-` "
            "(the audit trail names the key `key:<name>`)",
            examples=["billing-sync"],
        ),
    ]
    role: Role = Field(description="viewer, operator or admin")


class ApiKeyCreated(BaseModel):
    id: int
    name: str
    role: Role
    key: str = Field(description="The key: shown this once, stored only as a hash")
    created_at: datetime


class ApiKeyOut(BaseModel):
    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str
    last_used_at: datetime | None = Field(description="Updated at most once a minute")
    revoked_at: datetime | None
    revoked_by: str | None


def _out(row: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        created_at=row.created_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


async def create_key(session: AsyncSession, body: ApiKeyIn, created_by: str) -> ApiKeyCreated:
    key, lookup, digest = new_key()
    row = ApiKey(
        name=body.name,
        role=body.role.value,
        lookup=lookup,
        secret_sha256=digest,
        created_by=created_by,
    )
    session.add(row)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        if "uq_api_key_name_unrevoked" in str(exc.orig):
            raise Conflict("name", f"an API key named {body.name!r} is in use") from None
        raise
    await session.refresh(row, ["created_at"])
    log.info("api_key_created", key_name=row.name, role=row.role, key_id=row.id)
    return ApiKeyCreated(
        id=row.id, name=row.name, role=Role(row.role), key=key, created_at=row.created_at
    )


async def list_keys(
    session: AsyncSession, limit: int, offset: int, *, revoked: bool = True
) -> tuple[int, list[ApiKeyOut]]:
    """Newest first; without `revoked`, only the keys in use."""
    where = [] if revoked else [ApiKey.revoked_at.is_(None)]
    count = await session.scalar(select(func.count()).select_from(ApiKey).where(*where))
    rows = await session.scalars(
        select(ApiKey).where(*where).order_by(ApiKey.id.desc()).limit(limit).offset(offset)
    )
    return count or 0, [_out(row) for row in rows]


async def revoke_key(session: AsyncSession, key_id: int, revoked_by: str) -> tuple[ApiKeyOut, bool]:
    """Revoke a key (refused from then on by every process); whether this call revoked
    it. Revoking a revoked key changes nothing (its first revocation stands); an unknown
    id is NotFound."""
    row = await session.scalar(select(ApiKey).where(ApiKey.id == key_id).with_for_update())
    if row is None:
        raise NotFound("API key", key_id)
    revoking = row.revoked_at is None
    if revoking:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(revoked_at=func.now(), revoked_by=revoked_by)
        )
        await session.refresh(row)
        log.info("api_key_revoked", key_name=row.name, key_id=row.id)
    return _out(row), revoking
