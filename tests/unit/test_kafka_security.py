"""Kafka over TLS and SASL: the settings, and what every Kafka client of the services is
built with (the FastStream broker's producer and consumers, the admin, probe and lag
clients share `shared.kafka.connection_options`)."""

from __future__ import annotations

import datetime
import ssl
from typing import TYPE_CHECKING, Any

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.kafka import connection_options, create_broker
from shared.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from pathlib import Path


def settings(**values: Any) -> Settings:
    return load_settings(_env_file=None, **values)


def client_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notifications")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "user.crt", directory / "user.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_plaintext_by_default() -> None:
    options = connection_options(settings(kafka_bootstrap="k:9092"))
    assert options == {"bootstrap_servers": "k:9092"}


def test_sasl_over_tls_logs_in_and_verifies_the_brokers() -> None:
    options = connection_options(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="notifications",
            kafka_sasl_password="s3cret",
            kafka_ssl_cafile=certifi.where(),
        )
    )
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "notifications",
        "s3cret",
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_without_tls(mechanism: str) -> None:
    options = connection_options(
        settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="u",
            kafka_sasl_password="p",
        )
    )
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == mechanism
    assert options["ssl_context"] is None


def test_mutual_tls_presents_the_client_certificate(tmp_path: Path) -> None:
    cert, key = client_certificate(tmp_path)
    options = connection_options(
        settings(kafka_security_protocol="SSL", kafka_ssl_certfile=cert, kafka_ssl_keyfile=key)
    )
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


def test_a_missing_ca_file_stops_the_client_with_its_name(tmp_path: Path) -> None:
    missing = tmp_path / "ca.crt"
    with pytest.raises(FileNotFoundError):
        connection_options(settings(kafka_security_protocol="SSL", kafka_ssl_cafile=missing))


def test_the_broker_and_its_consumers_use_the_same_login() -> None:
    broker = create_broker(
        settings(
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_username="notifications",
            kafka_sasl_password="s3cret",
        ),
        client_id="dispatcher",
    )
    consumer_options = broker.config.broker_config.builder.keywords  # type: ignore[attr-defined]
    assert consumer_options["security_protocol"] == "SASL_SSL"
    assert consumer_options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert consumer_options["sasl_plain_username"] == "notifications"
    assert isinstance(consumer_options["ssl_context"], ssl.SSLContext)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u"},
            "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/x/user.crt"},
            "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together",
        ),
        ({"kafka_ssl_cafile": "/x/ca.crt"}, "does not use TLS"),
        ({"kafka_security_protocol": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ],
)
def test_inconsistent_kafka_security_is_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        settings(**values)


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"):
        monkeypatch.setenv(name, "")
    loaded = Settings(_env_file=None)
    assert loaded.kafka_sasl_username is None
    assert loaded.kafka_ssl_cafile is None
    assert loaded.kafka_sasl_password is None


def test_the_password_never_shows_in_the_error() -> None:
    with pytest.raises(SettingsError) as caught:
        settings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="hunter2")
    assert "hunter2" not in str(caught.value)
