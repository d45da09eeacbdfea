"""Who a mailing reaches (delivery rule 1), as SQL the API and the scheduler share.

A live client matches when (no tag filter, or it has any of the filter's tags) and (no
operator-code filter, or its code is in the filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, exists, select, true

from shared.models import Client, ClientTag, Tag

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession


def audience_condition(tags: Sequence[str], codes: Sequence[int]) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = [Client.deleted_at.is_(None)]
    if tags:
        conditions.append(
            exists(
                select(ClientTag.client_id)
                .join(Tag, Tag.id == ClientTag.tag_id)
                .where(ClientTag.client_id == Client.id, Tag.name.in_(list(tags)))
            )
        )
    if codes:
        conditions.append(Client.operator_code.in_(list(codes)))
    return and_(true(), *conditions)


@dataclass(frozen=True)
class Audience:
    """`audience_condition` with the tag names looked up once (`resolve_audience`), for
    work done in many small batches of clients.

    Each batch's condition names its client-id range on every table it reads (clients
    and their tags), and tags by id: the statement then reads that batch's clients and
    tags whatever plan PostgreSQL picks. With a tag name joined at run time the planner
    cannot tell how many clients carry it, and for a batch of a few thousand it may hash
    every tagged client; done per batch, that would make the whole work quadratic."""

    tag_ids: list[int] | None  # None: no tag filter
    codes: list[int]

    def condition(self, clients: tuple[int, int] | None = None) -> ColumnElement[bool]:
        """The rule; with `clients` (first, last id, inclusive) only clients among them."""
        conditions: list[ColumnElement[bool]] = [Client.deleted_at.is_(None)]
        if clients is not None:
            conditions.append(Client.id.between(*clients))
        if self.tag_ids is not None:
            tagged = select(ClientTag.client_id).where(
                ClientTag.client_id == Client.id, ClientTag.tag_id.in_(self.tag_ids)
            )
            if clients is not None:
                tagged = tagged.where(ClientTag.client_id.between(*clients))
            conditions.append(exists(tagged))
        if self.codes:
            conditions.append(Client.operator_code.in_(self.codes))
        return and_(true(), *conditions)


async def resolve_audience(
    session: AsyncSession, tags: Sequence[str], codes: Sequence[int]
) -> Audience:
    """The audience of (tags, codes) with its tag names looked up now."""
    tag_ids = None
    if tags:
        tag_ids = list(await session.scalars(select(Tag.id).where(Tag.name.in_(list(tags)))))
    return Audience(tag_ids=tag_ids, codes=list(codes))
