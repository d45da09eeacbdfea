"""Who a mailing reaches (docs/architecture.md, delivery rule 1): SQL the API and scheduler share.

A live client matches when (no tag filter, or it has any of the filter's tags) and (no
operator-code filter, or its code is in the filter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, exists, select, text, true

from shared.models import Client, ClientTag, Tag

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession


# Why a pending message is cancelled when its client no longer matches the mailing.
NO_LONGER_MATCHES = "no longer matches the mailing"

# The same rule in plain SQL, for statements written as text: client `c` is reached by
# mailing `g` (its current filters, read from the row).
REACHES_SQL = """
    c.deleted_at IS NULL
    AND (cardinality(g.filter_codes) = 0 OR c.operator_code = ANY(g.filter_codes))
    AND (cardinality(g.filter_tags) = 0 OR EXISTS (
        SELECT 1 FROM client_tag AS ct JOIN tag AS t ON t.id = ct.tag_id
        WHERE ct.client_id = c.id AND t.name = ANY(g.filter_tags)))
"""


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


async def compact_counts(session: AsyncSession) -> None:
    """Fold the deltas of the audience counts (`audience_zone_count`,
    `audience_tag_count`: live clients per zone, operator code and tag set, kept by
    triggers on client and client_tag, migration 0005) into one row per key. The sums
    are the same before and after, and rows written meanwhile are left for next time, so
    it runs at any moment, alongside any writer or another compaction."""
    await session.execute(text("SELECT audience_count_compact()"))
