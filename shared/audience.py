"""Who a mailing reaches (delivery rule 1), as SQL the API and the scheduler share.

A live client matches when (no tag filter, or it has any of the filter's tags) and (no
operator-code filter, or its code is in the filter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, exists, select, true

from shared.models import Client, ClientTag, Tag

if TYPE_CHECKING:
    from collections.abc import Sequence


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
