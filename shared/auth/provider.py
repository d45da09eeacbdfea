"""Bearer tokens of the OpenID Connect provider (shared/oidc.py) as principals.

A credential shaped like a JWT (three dot-separated parts) is the provider's: verified
by `OidcVerifier`, its roles mapped to ours (the strongest wins). A valid token with
none of our roles is a 403 naming them; a provider that cannot be reached to check a
token is a 503, never an acceptance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import HTTPException, status

from shared.auth.roles import Principal, Role, Unauthorized, highest_role
from shared.oidc import InvalidToken, ProviderUnavailable

if TYPE_CHECKING:
    from shared.oidc import Claims, OidcVerifier

API_KEY_PREFIX = "nk_"


class NoRole(HTTPException):
    def __init__(self, name: str) -> None:
        roles = ", ".join(role.value for role in Role)
        super().__init__(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"{name} has none of this service's roles ({roles})",
        )


def principal_of(claims: Claims) -> Principal:
    """The principal a verified token speaks for; NoRole when it carries no role."""
    role = highest_role(claims.roles)
    if role is None:
        raise NoRole(claims.name)
    return Principal(actor=claims.name, role=role, via="oidc", subject=claims.subject)


class ProviderTokens:
    """The `BearerCheck` of the provider's access tokens."""

    def __init__(self, verifier: OidcVerifier) -> None:
        self.verifier = verifier

    def claims(self, credential: str) -> bool:
        return credential.count(".") == 2 and not credential.startswith(API_KEY_PREFIX)

    async def principal(self, credential: str) -> Principal:
        try:
            claims = await self.verifier.verify(credential)
        except ProviderUnavailable as exc:
            raise HTTPException(
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"the identity provider cannot be reached to check the token: {exc.reason}",
                headers={"Retry-After": "5"},
            ) from None
        except InvalidToken as exc:
            raise Unauthorized(f"invalid token: {exc.reason}") from None
        return principal_of(claims)
