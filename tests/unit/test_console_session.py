"""The console's session cookie (shared/auth.py): signed, expiring, tied to a token
that is still configured, never carrying the token itself."""

from __future__ import annotations

import base64

from pydantic import SecretStr

from shared.auth import dev_token_principal, new_session, read_session, sign_value, unsign_value
from shared.settings import Settings


def settings(tokens: str = "alpha,beta", secret: str | None = "s3cret") -> Settings:  # noqa: S107
    return Settings(
        api_tokens=tokens,
        dev_mode=True,
        console_session_secret=SecretStr(secret) if secret else None,
        console_session_ttl_s=60,
    )


def test_a_session_reads_back_with_its_csrf_token() -> None:
    config = settings()
    cookie, session = new_session(config, dev_token_principal("beta"), token="beta", now=1000)
    read = read_session(config, cookie, now=1010)
    assert read == session
    assert read is not None
    assert read.principal.role == "admin"
    assert read.principal.actor.startswith("token:")
    assert len(session.csrf) >= 24
    assert "beta" not in cookie
    assert b"beta" not in base64.urlsafe_b64decode(cookie.rpartition(".")[0])


def test_a_session_expires() -> None:
    config = settings()
    cookie, _ = new_session(config, dev_token_principal("alpha"), token="alpha", now=1000)
    assert read_session(config, cookie, now=1059) is not None
    assert read_session(config, cookie, now=1060) is None


def test_a_changed_cookie_or_another_key_is_refused() -> None:
    config = settings()
    cookie, _ = new_session(config, dev_token_principal("alpha"), token="alpha", now=1000)
    payload, _, signature = cookie.rpartition(".")
    forged = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload).replace(b'"e":1060', b'"e":9999')
    ).decode()
    assert read_session(config, f"{forged}.{signature}", now=1001) is None
    assert read_session(settings(secret="other"), cookie, now=1001) is None
    assert read_session(config, "garbage", now=1001) is None
    assert read_session(config, "", now=1001) is None


def test_removing_the_token_ends_its_sessions() -> None:
    cookie, _ = new_session(settings(), dev_token_principal("alpha"), token="alpha", now=1000)
    assert read_session(settings(tokens="beta"), cookie, now=1001) is None
    assert read_session(settings(tokens="beta,alpha"), cookie, now=1001) is not None


def test_without_a_secret_the_process_key_signs() -> None:
    config = settings(secret=None)
    cookie, _ = new_session(config, dev_token_principal("alpha"), token="alpha", now=1000)
    assert read_session(config, cookie, now=1001) is not None
    assert read_session(settings(secret="s3cret"), cookie, now=1001) is None


def test_signed_values_round_trip_and_refuse_changes() -> None:
    config = settings()
    signed = sign_value(config, "abc")
    assert unsign_value(config, signed) == "abc"
    assert unsign_value(config, "abd" + signed[3:]) is None
    assert unsign_value(config, "abc") is None


def test_a_development_token_session_ends_outside_development_mode() -> None:
    cookie, _ = new_session(settings(), dev_token_principal("alpha"), token="alpha", now=1000)
    production = settings().model_copy(update={"dev_mode": False})
    assert read_session(production, cookie, now=1001) is None
