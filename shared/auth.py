"""Bearer-token authentication of a service's HTTP actions (the admin API, the
reporter's send-now): tokens from `API_TOKENS`, compared in constant time; a missing or
wrong token is a 401 with `WWW-Authenticate: Bearer`."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")


class Unauthorized(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=detail,
            headers={"WWW-Authenticate": "Bearer"},
        )


def _matches(candidate: str, tokens: list[bytes]) -> bool:
    given = candidate.encode()
    # Compare with every token, never stopping early, so timing says nothing.
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token)
    return found


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token")
    tokens = [token.encode() for token in request.app.state.runtime.settings.token_values()]
    if not _matches(credentials.credentials, tokens):
        raise Unauthorized("invalid token")
