"""What the console's sign-in relies on without a database: development tokens act as
admin in development mode only, named by a digest (never the token), and the sign-in
forms' signed values refuse changes."""

from __future__ import annotations

from pydantic import SecretStr

from shared.auth import dev_token_is_valid, dev_token_principal, sign_value, unsign_value
from shared.settings import Settings


def settings(tokens: str = "alpha,beta", secret: str | None = "s3cret") -> Settings:  # noqa: S107
    return Settings(
        api_tokens=tokens,
        dev_mode=True,
        console_session_secret=SecretStr(secret) if secret else None,
    )


def test_development_tokens_count_in_development_mode_only() -> None:
    assert dev_token_is_valid(settings(), "beta")
    assert not dev_token_is_valid(settings(), "gamma")
    assert not dev_token_is_valid(settings(), "")
    assert not dev_token_is_valid(settings().model_copy(update={"dev_mode": False}), "beta")


def test_a_development_token_acts_as_admin_named_by_a_digest() -> None:
    principal = dev_token_principal("beta")
    assert principal.role == "admin"
    assert principal.via == "token"
    assert principal.actor.startswith("token:")
    assert "beta" not in principal.actor
    assert principal.actor == dev_token_principal("beta").actor
    assert principal.actor != dev_token_principal("alpha").actor


def test_signed_values_round_trip_and_refuse_changes() -> None:
    config = settings()
    signed = sign_value(config, "abc")
    assert unsign_value(config, signed) == "abc"
    assert unsign_value(config, "abd" + signed[3:]) is None
    assert unsign_value(config, "abc") is None
    assert unsign_value(settings(secret="other"), signed) is None
