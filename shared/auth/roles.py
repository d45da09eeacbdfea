"""Who may do what: the three roles, the principal a request acts as, the role checks.

`viewer` reads; `operator` also creates, edits, imports, pauses, resumes, cancels and
replays; `admin` also deletes, sends reports and manages API keys. Each role includes
the ones before it. A route states the least role it needs (`dependencies=[OPERATOR]`);
a caller below it gets a 403 naming the role it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from fastapi import HTTPException, status

if TYPE_CHECKING:
    from collections.abc import Iterable


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role | str) -> bool:
        return self.rank >= Role(needed).rank


def highest_role(names: Iterable[str]) -> Role | None:
    """The strongest of the roles named (unknown names ignored), or None."""
    known = {role.value: role for role in Role}
    found = [known[name] for name in names if name in known]
    return max(found, key=lambda role: role.rank) if found else None


Via = Literal["token", "oidc", "api_key"]


@dataclass(frozen=True)
class Principal:
    """The caller of a request, as the audit trail and the log lines name it.

    `actor`: the token subject's name (`preferred_username` or client id) for a token of
    the identity provider, `key:<name>` for an API key, `token:<first 8 hex of its
    SHA-256>` for a development token (never the token itself).
    """

    actor: str
    role: Role
    via: Via
    subject: str = ""

    def may(self, needed: Role | str) -> bool:
        return self.role.allows(needed)


class Forbidden(HTTPException):
    def __init__(self, needed: Role, held: Role) -> None:
        super().__init__(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"this needs the {needed} role; the caller has {held}",
        )


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=detail,
            headers={"WWW-Authenticate": "Bearer"},
        )
