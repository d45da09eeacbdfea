"""Authentication of a request: who it acts as (`authenticate`), and the role checks.

Ways in, in this order:
- `Authorization: Bearer <credential>`: each configured `BearerCheck` in turn is asked
  whether the credential is of its kind (an API key by its prefix, a token of the
  identity provider by its JWT shape); the first that claims it decides. A development
  token (`API_TOKENS`, with `DEV_MODE=true` only) is tried last.
- the operator console's session cookie (see `shared.auth.sessions`).
A missing or refused credential is a 401 with `WWW-Authenticate: Bearer`; a known caller
without the role a route needs gets a 403 naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Protocol

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.auth.roles import Forbidden, Principal, Role, Unauthorized
from shared.auth.sessions import (
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    CsrfRejected,
    csrf_ok,
    dev_token_is_valid,
    dev_token_principal,
    request_session,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from fastapi import FastAPI

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <credential>`")


class BearerCheck(Protocol):
    """One kind of bearer credential (API keys, the identity provider's tokens)."""

    def claims(self, credential: str) -> bool:
        """Whether `credential` is of this kind (by its shape only, no I/O)."""

    async def principal(self, credential: str) -> Principal:
        """Who it is; `Unauthorized` with the reason when it is refused."""


def install_checks(app: FastAPI, checks: Sequence[BearerCheck]) -> None:
    app.state.bearer_checks = list(checks)


async def principal_for(request: Request, credential: str) -> Principal:
    checks: list[BearerCheck] = getattr(request.app.state, "bearer_checks", [])
    for check in checks:
        if check.claims(credential):
            return await check.principal(credential)
    if dev_token_is_valid(request.app.state.runtime.settings, credential):
        return dev_token_principal(credential)
    raise Unauthorized("invalid token")


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The request's principal; also bound to its log lines as `actor`."""
    if credentials is not None:
        if credentials.scheme.lower() != "bearer":
            raise Unauthorized("missing bearer token")
        principal = await principal_for(request, credentials.credentials)
    elif SESSION_COOKIE in request.cookies:
        session = await request_session(request)
        if session is None:
            raise Unauthorized("invalid or expired session: sign in again")
        if request.method not in SAFE_METHODS and not csrf_ok(
            session, request.headers.get(CSRF_HEADER)
        ):
            raise CsrfRejected()
        principal = session.principal
    else:
        raise Unauthorized("missing bearer token")
    request.state.principal = principal
    structlog.contextvars.bind_contextvars(actor=principal.actor)
    return principal


def require_role(role: Role) -> Callable[..., Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not principal.may(role):
            raise Forbidden(role, principal.role)
        return principal

    check.__name__ = f"require_{role.value}"
    return check


as_viewer = require_role(Role.VIEWER)
as_operator = require_role(Role.OPERATOR)
as_admin = require_role(Role.ADMIN)

# For `dependencies=[...]` of a router or a route.
VIEWER = Depends(as_viewer)
OPERATOR = Depends(as_operator)
ADMIN = Depends(as_admin)

# A route's principal as a parameter: `who: Caller`.
Caller = Annotated[Principal, Depends(authenticate)]
