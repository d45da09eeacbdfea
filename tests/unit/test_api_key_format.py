"""The API key's format: what `new_key` makes, `parse_key` reads back, and what the
check claims by its prefix."""

from __future__ import annotations

import base64
import hashlib

import pytest

from shared.api_keys import ApiKeyCheck, new_key, parse_key, secret_digest


def test_a_new_key_carries_its_lookup_and_32_random_bytes() -> None:
    key, lookup, digest = new_key()
    parsed = parse_key(key)
    assert parsed is not None
    assert parsed[0] == lookup
    secret = parsed[1]
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert digest == hashlib.sha256(secret.encode()).digest() == secret_digest(secret)
    assert key == f"nk_{lookup}_{secret}"
    assert new_key()[0] != key


@pytest.mark.parametrize(
    "credential",
    [
        "nk_",
        "nk_0123456789abcdef",
        "nk_0123456789abcdef_short",
        "nk_0123456789ABCDEF_" + "A" * 43,
        "nk_0123456789abcdef_" + "A" * 44,
        "nk_0123456789abcdef_" + "A" * 42 + "=",
        " nk_0123456789abcdef_" + "A" * 43,
    ],
)
def test_a_malformed_key_is_not_parsed(credential: str) -> None:
    assert parse_key(credential) is None


def test_the_check_claims_keys_by_prefix_only() -> None:
    check = ApiKeyCheck(sessions=None)  # type: ignore[arg-type]
    assert check.claims("nk_anything")
    assert not check.claims("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    assert not check.claims("dev-token")
