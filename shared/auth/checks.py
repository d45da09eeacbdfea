"""The bearer checks a service with HTTP actions installs, from its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.auth.bearer import BearerCheck, install_checks
from shared.auth.provider import ProviderTokens
from shared.oidc import OidcVerifier

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shared.service import Runtime


def install_bearer_checks(app: FastAPI, runtime: Runtime) -> None:
    """The identity provider's tokens when OIDC_ISSUER is set (its key set is a
    readiness check, named `identity_provider`); development tokens are always last."""
    checks: list[BearerCheck] = []
    if runtime.settings.oidc_enabled:
        verifier = OidcVerifier(runtime.settings)
        app.state.oidc = verifier
        checks.append(ProviderTokens(verifier))
        runtime.on_stop(verifier.aclose)

        async def provider_ready() -> None:
            problem = await verifier.problem()
            if problem is not None:
                raise RuntimeError(problem)

        runtime.probes["identity_provider"] = provider_ready
    install_checks(app, checks)
