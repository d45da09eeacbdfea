"""One typed settings object for every service, read from the environment (and `.env`).

Validated at start: a malformed value stops the process with a message naming the
variable. Nothing else in the code reads `os.environ`.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AnyHttpUrl,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogFormat = Literal["auto", "json", "console"]


class Settings(BaseSettings):
    """Every variable is documented in `.env.example`; keep the two in step."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    # --- infrastructure -------------------------------------------------------------
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/notifications"
    database_pool_size: PositiveInt = 10
    database_max_overflow: int = Field(default=10, ge=0)
    database_timeout_s: PositiveFloat = 5.0

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "notifications."
    kafka_partitions: PositiveInt = 6
    kafka_replication_factor: PositiveInt = 1
    kafka_client_id: str = "notifications"
    kafka_enable_idempotence: bool = True
    kafka_request_timeout_s: PositiveFloat = 10.0
    # How every Kafka client connects: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL.
    # SASL logs in with KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD over KAFKA_SASL_MECHANISM;
    # TLS trusts KAFKA_SSL_CAFILE (unset: the system's CAs) and presents a client
    # certificate when KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE are set (mutual TLS).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # Delays of the retry tiers; the last one repeats until the mailing's stop time.
    retry_delays_s: Annotated[list[PositiveFloat], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0]
    )
    shutdown_grace_s: PositiveFloat = 15.0

    # --- HTTP surfaces --------------------------------------------------------------
    http_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    scheduler_port: int = Field(default=8001, ge=1, le=65535)
    dispatcher_port: int = Field(default=8002, ge=1, le=65535)
    reporter_port: int = Field(default=8003, ge=1, le=65535)
    # Where the API's console reaches the reporter (the Reports page's preview and
    # send-now); unset: this host's REPORTER_PORT.
    reporter_url: AnyHttpUrl | None = None
    # Development mode (`make dev` and the tests set it): the static API_TOKENS are
    # accepted, each as `admin`, and the console may sign sessions with a per-process
    # key. Off (the default), a service with an HTTP action refuses to start with
    # static tokens or without the credentials it needs (see `credential_problems`).
    dev_mode: bool = False
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # The operator console (/console/ on the API): the key that signs its session
    # cookies (unset, development mode only: a random key per process, so sessions end
    # when the API restarts and each API replica signs its own), and how long a
    # sign-in lasts.
    console_session_secret: SecretStr | None = None
    console_session_ttl_s: PositiveInt = 43200
    ready_timeout_s: PositiveFloat = 3.0
    # The admin API refuses a request body larger than this (bytes) with 413, before
    # reading it; a route for streamed uploads may set a limit of its own.
    api_max_body_bytes: PositiveInt = 1_048_576

    # --- sign-in through an OpenID Connect provider (docs/identity.md) ----------------
    # Unset outside development mode, API keys are the only way in, and a service with
    # HTTP actions refuses to start while none exists.
    # The issuer URL exactly as the provider writes it into `iss` (Keycloak:
    # http://host:port/realms/<realm>); unset: no provider. Its discovery document is
    # read from OIDC_DISCOVERY_URL (default: <issuer>/.well-known/openid-configuration),
    # for a provider this service reaches under another address than the browsers do.
    oidc_issuer: str | None = None
    oidc_discovery_url: str | None = None
    oidc_audience: str = "notifications-api"
    oidc_clock_skew_s: float = Field(default=30.0, ge=0, le=300)
    # Where a token lists its roles (a dotted path into the claims), and the provider's
    # names of our three roles.
    oidc_roles_claim: str = "realm_access.roles"
    oidc_role_viewer: str = "viewer"
    oidc_role_operator: str = "operator"
    oidc_role_admin: str = "admin"
    # A token signed by a key not in the cached key set refetches the set at most this
    # often, and each request to the provider gives up after OIDC_HTTP_TIMEOUT_S.
    oidc_jwks_min_refresh_s: float = Field(default=10.0, ge=0, le=3600)
    # The console's client at the provider (authorization code with PKCE; a public
    # client unless OIDC_CONSOLE_CLIENT_SECRET is set) and the scopes it asks for.
    oidc_console_client_id: str = "notifications-console"
    oidc_console_client_secret: SecretStr | None = None
    oidc_console_scopes: str = "openid profile"
    oidc_http_timeout_s: PositiveFloat = 5.0

    # --- external SMS gateway -------------------------------------------------------
    provider_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8090/v1")
    provider_token: SecretStr = SecretStr("sandbox-token")
    provider_timeout_s: PositiveFloat = 10.0

    provider_concurrency: PositiveInt = 64
    # The gateway client: httpx (on the aiohttp transport) or aiohttp alone.
    provider_client: Literal["httpx", "aiohttp"] = "httpx"
    # Requests per second toward the gateway (0 = no limit).
    provider_rate_limit: float = Field(default=0.0, ge=0)
    # Whether an ambiguous outcome (timeout after sending, 5xx, garbage) may be retried
    # with the same message id: true for a gateway that de-duplicates by msgId.
    provider_deduplicates: bool = True

    # --- scheduling and dispatch ----------------------------------------------------
    scheduler_poll_interval_s: PositiveFloat = 0.2
    scheduler_batch_size: PositiveInt = 2000
    # Audience expansion inserts clients in id ranges: the first this wide, each next
    # one twice as wide, up to `expansion_batch_size`; every range's messages are fired
    # as soon as it commits, while the rest is expanded.
    expansion_first_batch_size: PositiveInt = 2000
    expansion_batch_size: PositiveInt = 50_000
    # At most this many messages made per second by an audience's expansion (0: no
    # limit), so a big audience's expansion leaves the CPU to the first deliveries.
    expansion_max_rate: int = Field(default=80_000, ge=0)
    # Firing stops while this many messages are `queued` (commands published, not yet
    # taken by a dispatcher) and resumes as the dispatchers drain them: the scheduler
    # fires at the dispatchers' pace instead of queueing a whole mailing at once.
    # 0: no limit.
    scheduler_max_queued: int = Field(default=10_000, ge=0)
    # A request starts only if its deadline ends at least this long before its lease.
    sending_lease_margin_s: PositiveFloat = 1.0
    # Expiry at stop time and the re-plan of an edit change a mailing's messages in
    # transactions of message-id ranges this wide (so at most this many rows each).
    scheduler_bulk_batch_size: PositiveInt = 5000
    # A message stuck in `sending` longer than this is recovered by the scheduler.
    sending_lease_s: PositiveFloat = Field(default=60.0, validate_default=True)
    # The retry tiers give up (`failed`, and a DLQ record) after this many transient
    # failures of a message, or once it has been retrying this long since it was due.
    retry_max_attempts: PositiveInt = 20
    retry_max_age_s: PositiveFloat = 86400.0
    # A message `queued` longer than this has its send command published again.
    requeue_after_s: PositiveFloat = 3600.0
    # Re-drive (services/scheduler/redrive.py): how often the scheduler looks for
    # `queued`/`retrying` messages whose command the dispatcher has consumed past (0
    # disables), and the time allowed between a status change and its command in Kafka.
    redrive_interval_s: float = Field(default=60.0, ge=0)
    redrive_grace_s: PositiveFloat = 60.0
    dispatcher_batch_size: PositiveInt = 500
    # Circuit breaker: open after this many transient failures in a row...
    breaker_failures: PositiveInt = 20
    # ...for this long (doubling while the gateway keeps failing, up to the maximum).
    breaker_open_s: PositiveFloat = 5.0
    breaker_open_max_s: PositiveFloat = 60.0

    # --- reporter -------------------------------------------------------------------
    reporter_batch_size: PositiveInt = 1000
    # How long the reporter remembers applied status events (its de-duplication window;
    # keep it at least the topic's retention).
    processed_event_retention_h: PositiveFloat = 168.0
    # How often one reporter reconciles the counters of active mailings with COUNT(*)
    # (services/reporter/reconcile.py); 0 disables.
    reporter_reconcile_interval_s: float = Field(default=60.0, ge=0)

    # --- Kafka consumers' health ----------------------------------------------------
    # How often each service measures its consumers' lag (the consumer lag gauge).
    consumer_lag_interval_s: PositiveFloat = 10.0
    # A consumer with lag whose committed offsets have not moved for this long (and that
    # is not paused on purpose) makes its process exit so the supervisor restarts it.
    # 0 disables. The default matches the dispatcher's max_poll_interval: a batch may
    # legitimately take that long.
    consumer_stall_s: float = Field(default=600.0, ge=0)
    # A handler that fails is retried with the same records after a wait doubling from
    # the minimum to the maximum. The maximum stays well below Kafka's max poll interval
    # (300 s by default) so the consumer keeps its group membership.
    consumer_retry_min_s: PositiveFloat = 0.5
    consumer_retry_max_s: float = Field(default=30.0, gt=0, le=120)

    # --- logging --------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = "auto"
    log_file: Path | None = Path("statistic.log")
    # Rotate the log file once it reaches this size (bytes; 0 = never), keeping this many
    # rotated files (statistic.log.1 the newest).
    log_file_max_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    log_file_backups: PositiveInt = 5

    # --- daily email report ---------------------------------------------------------
    report_timezone: str = "UTC"
    report_time: time = time(8, 0)
    # Empty: no scheduled report (the send-now endpoint still takes explicit addresses).
    report_recipients: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # `POST /reports/send?to=...` (admin): at most this many addresses, and only in these
    # domains when set (comma-separated, e.g. example.com,ops.example.org; empty: any).
    report_send_max_recipients: int = Field(default=10, ge=1, le=1000)
    report_send_allowed_domains: Annotated[list[str], NoDecode] = Field(default_factory=list)
    report_from: str = "notifications@localhost"
    # Most frequent failure reasons listed per mailing.
    report_top_reasons: int = Field(default=5, ge=1, le=50)
    # Delays between attempts of a report the SMTP server did not take; the last repeats.
    report_retry_delays_s: Annotated[list[PositiveFloat], NoDecode] = Field(
        default_factory=lambda: [10.0, 30.0, 120.0, 600.0]
    )
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = Field(default=None, validate_default=True)
    # Seconds one sending attempt may take in total (connect, TLS, login, transfer).
    smtp_timeout_s: PositiveFloat = 30.0
    # A claimed report not renewed for this long is taken over by another reporter.
    report_claim_lease_s: PositiveFloat = Field(default=300.0, validate_default=True)

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            tokens = [part.strip() for part in value.split(",") if part.strip()]
            if not tokens and value.strip():
                raise ValueError("give at least one token (comma-separated)")
            return tokens
        return value

    @field_validator("oidc_issuer", "oidc_discovery_url", mode="before")
    @classmethod
    def _check_oidc_url(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            return value
        url = value.strip()
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError(f"not an http(s) URL: {url!r}")
        return url

    @field_validator("oidc_audience", "oidc_role_viewer", "oidc_role_operator", "oidc_role_admin")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("oidc_role_admin")
    @classmethod
    def _distinct_role_names(cls, value: str, info: ValidationInfo) -> str:
        others = [info.data.get("oidc_role_viewer"), info.data.get("oidc_role_operator")]
        if value in others or (others[0] is not None and others[0] == others[1]):
            raise ValueError(
                "OIDC_ROLE_VIEWER, OIDC_ROLE_OPERATOR and OIDC_ROLE_ADMIN must be three "
                "different names"
            )
        return value

    @field_validator("oidc_roles_claim")
    @classmethod
    def _check_claim_path(cls, value: str) -> str:
        path = value.strip()
        if not path or any(not part for part in path.split(".")):
            raise ValueError(f"not a dotted claim path: {value!r} (e.g. realm_access.roles)")
        return path

    @field_validator("log_file", mode="before")
    @classmethod
    def _empty_log_file(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("retry_delays_s", "report_retry_delays_s", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",") if part.strip()]
            if not parts:
                raise ValueError("give at least one delay in seconds (comma-separated)")
            return parts
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql+psycopg://", "postgresql://", "postgres://")):
            raise ValueError("expected a PostgreSQL URL such as postgresql+psycopg://user@host/db")
        # psycopg 3 is the driver everywhere; accept the libpq spelling too.
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):
                return "postgresql+psycopg://" + value.removeprefix(plain)
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            ascii_port = port.isascii() and port.isdigit()
            if not sep or not host or not ascii_port or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @field_validator(
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        mode="before",
    )
    @classmethod
    def _empty_kafka_credential(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Self:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mutual TLS)")
        tls_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile)
        if protocol not in ("SSL", "SASL_SSL") and any(tls_files):
            raise ValueError(
                f"KAFKA_SSL_* files given but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                "TLS (SSL or SASL_SSL)"
            )
        return self

    @field_validator("report_timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("report_time", mode="before")
    @classmethod
    def _check_report_time(cls, value: object) -> object:
        if isinstance(value, str):
            match = _HH_MM.fullmatch(value.strip())
            if match is None:
                raise ValueError("expected a local time HH:MM (24-hour clock)")
            hours, minutes = int(match["h"]), int(match["m"])
            if hours > 23 or minutes > 59:
                raise ValueError("expected a local time HH:MM (24-hour clock)")
            return time(hours, minutes)
        return value

    @field_validator("report_recipients", mode="before")
    @classmethod
    def _split_recipients(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("report_recipients")
    @classmethod
    def _check_recipients(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(email_address(address) for address in value))

    @field_validator("report_send_allowed_domains", mode="before")
    @classmethod
    def _split_domains(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower().lstrip("@") for part in value.split(",") if part.strip()]
        return value

    @field_validator("report_send_allowed_domains")
    @classmethod
    def _check_domains(cls, value: list[str]) -> list[str]:
        for domain in value:
            email_address(f"x@{domain}")  # a ValueError naming it when it is no domain
        return value

    @field_validator("report_from")
    @classmethod
    def _check_from(cls, value: str) -> str:
        return sender_address(value)

    @field_validator("smtp_host")
    @classmethod
    def _check_smtp_host(cls, value: str) -> str:
        value = value.strip()
        if not value or any(char.isspace() for char in value):
            raise ValueError("expected a host name or address")
        return value

    @field_validator("smtp_user", mode="before")
    @classmethod
    def _empty_user(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("smtp_password", mode="before")
    @classmethod
    def _empty_password(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("smtp_password")
    @classmethod
    def _password_with_user(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        user = info.data.get("smtp_user")
        if user and value is None:
            raise ValueError("required when SMTP_USER is set")
        if value is not None and not user:
            raise ValueError("given without SMTP_USER")
        return value

    @field_validator("report_claim_lease_s")
    @classmethod
    def _lease_outlasts_an_attempt(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("smtp_timeout_s")
        if timeout is not None and value <= timeout:
            raise ValueError(
                f"must be longer than one sending attempt (SMTP_TIMEOUT_S={timeout:g})"
            )
        return value

    @field_validator("sending_lease_s")
    @classmethod
    def _lease_outlasts_a_request(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("provider_timeout_s")
        margin = info.data.get("sending_lease_margin_s")
        if timeout is not None and margin is not None and value <= timeout + margin:
            raise ValueError(
                f"must be longer than one request plus its margin "
                f"(PROVIDER_TIMEOUT_S={timeout:g} + SENDING_LEASE_MARGIN_S={margin:g})"
            )
        return value

    @property
    def reporter_base_url(self) -> str:
        if self.reporter_url is not None:
            return str(self.reporter_url).rstrip("/")
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return f"http://{host}:{self.reporter_port}"

    @property
    def reports_enabled(self) -> bool:
        return bool(self.report_recipients)

    @property
    def oidc_enabled(self) -> bool:
        """A provider is configured (OIDC_ISSUER is set)."""
        return self.oidc_issuer is not None

    def token_values(self) -> list[str]:
        return [token.get_secret_value() for token in self.api_tokens]

    def credential_problems(self, *, signs_sessions: bool) -> list[str]:
        """Why a service with HTTP actions must not start with these settings, outside
        development mode: static tokens (shared, all-powerful, unattributable) or an
        unset session key. Empty in development mode."""
        if self.dev_mode:
            return []
        problems = []
        if self.api_tokens:
            problems.append(
                "API_TOKENS: static tokens are accepted in development mode only "
                "(DEV_MODE=true, as `make dev` sets); outside it use the identity "
                "provider (OIDC_ISSUER) or API keys"
            )
        if signs_sessions and self.console_session_secret is None:
            problems.append(
                "CONSOLE_SESSION_SECRET: required outside development mode (every API "
                "process must sign console sessions with the same key)"
            )
        return problems


_SECRET = re.compile("TOKEN|PASSWORD|SECRET")
_HH_MM = re.compile(r"(?P<h>[0-9]{1,2}):(?P<m>[0-9]{2})")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    rf"@{_LABEL}(?:\.{_LABEL})*"
)
_NAMED = re.compile(r"(?P<name>[^<>\"\r\n]*?)\s*<(?P<address>[^<>]*)>")


def email_address(value: str) -> str:
    """A plain address (`name@example.com`), stripped; ValueError naming it otherwise."""
    address = value.strip()
    if len(address) > 254 or not _ADDRESS.fullmatch(address):
        raise ValueError(f"not an email address: {value.strip()!r} (expected name@domain)")
    return address


def sender_address(value: str) -> str:
    """A plain address, or one with a display name: `Notifications <reports@example.com>`."""
    named = _NAMED.fullmatch(value.strip())
    if named is None:
        return email_address(value)
    address = email_address(named["address"])
    name = named["name"].strip()
    return f"{name} <{address}>" if name else address


class SettingsError(SystemExit):
    """Raised instead of a traceback when the environment is malformed."""


def describe_errors(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        variable = "_".join(str(part) for part in error["loc"]).upper() or "<settings>"
        # A check of several variables (empty loc) gets every input: show none of them.
        hidden = not error["loc"] or _SECRET.search(variable)
        shown = "***" if hidden else repr(error.get("input"))
        lines.append(f"  {variable}: {error['msg']} (got {shown})")
    return "\n".join(lines)


def refuse_unsafe_credentials(settings: Settings, *, signs_sessions: bool) -> None:
    """Stop a service with HTTP actions before it serves anything with credentials that
    only a development stack may use (`Settings.credential_problems`)."""
    problems = settings.credential_problems(signs_sessions=signs_sessions)
    if problems:
        raise SettingsError(
            "refusing to start outside development mode:\n"
            + "\n".join(f"  {problem}" for problem in problems)
        )


def load_settings(**overrides: object) -> Settings:
    """Build and validate settings; exit with a readable message when they are wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
