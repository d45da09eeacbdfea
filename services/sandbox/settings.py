"""Settings of the sandbox: `SANDBOX_*` variables (and `.env`), then command-line flags."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.sandbox.faults import Faults, OutageMode


class SandboxSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SANDBOX_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    control_port: int = Field(default=8091, ge=0, le=65535)
    token: SecretStr = SecretStr("sandbox-token")
    faults: Faults = Field(default_factory=Faults)
    # "refuse:20", "503:5", "503" (until cleared): an outage from the start.
    outage: str | None = None
    ledger_text: bool = True
    keep_alive_s: float = Field(default=75.0, gt=0)

    @field_validator("outage")
    @classmethod
    def _check_outage(cls, value: str | None) -> str | None:
        if value:
            parse_outage(value)
        return value or None

    def initial_outage(self) -> tuple[OutageMode, float | None] | None:
        return None if self.outage is None else parse_outage(self.outage)


def parse_outage(value: str) -> tuple[OutageMode, float | None]:
    mode, _, seconds = value.partition(":")
    if mode not in ("refuse", "503"):
        raise ValueError(f"outage mode must be refuse or 503, got {mode!r}")
    if not seconds:
        return mode, None  # type: ignore[return-value]
    duration = float(seconds)
    if duration <= 0:
        raise ValueError("outage seconds must be positive")
    return mode, duration  # type: ignore[return-value]


class SandboxSettingsError(SystemExit):
    """Raised instead of a traceback when the environment or the flags are malformed."""


def describe_errors(exc: ValidationError, prefix: str = "SANDBOX_") -> str:
    lines = ["invalid sandbox settings:"]
    for error in exc.errors():
        name = prefix + "__".join(str(part) for part in error["loc"]).upper()
        shown = "***" if "TOKEN" in name else repr(error.get("input"))
        lines.append(f"  {name}: {error['msg']} (got {shown})")
    return "\n".join(lines)


_FAULT_FLAGS: tuple[tuple[str, type], ...] = (
    ("latency_ms", float),
    ("latency_min_ms", float),
    ("latency_max_ms", float),
    ("error_5xx", float),
    ("error_429", float),
    ("retry_after_s", int),
    ("retry_after", str),
    ("malformed", float),
    ("hang", float),
    ("hang_s", float),
    ("seed", int),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.sandbox",
        description="SMS gateway sandbox. Flags override the SANDBOX_* variables.",
    )
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, help="sends (and control) port, default 8090")
    parser.add_argument("--control-port", type=int, help="control port, default 8091")
    parser.add_argument("--token", help='accepted bearer token ("*": any), default sandbox-token')
    parser.add_argument("--faults", help="JSON object of fault settings (merged over env)")
    for name, kind in _FAULT_FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    parser.add_argument("--outage", help="MODE[:SECONDS], MODE refuse or 503")
    parser.add_argument(
        "--ledger-text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep phone and text of each request (default on)",
    )
    parser.add_argument("--keep-alive-s", type=float)
    return parser


def load_sandbox_settings(argv: list[str] | None = None) -> SandboxSettings:
    """Environment, then flags; exit with a readable message when something is wrong."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in ("host", "port", "control_port", "token", "outage", "ledger_text")
        if getattr(args, key) is not None
    }
    if args.keep_alive_s is not None:
        overrides["keep_alive_s"] = args.keep_alive_s
    try:
        settings = SandboxSettings(**overrides)
        fault_changes: dict[str, Any] = {}
        if args.faults:
            loaded = json.loads(args.faults)
            if not isinstance(loaded, dict):
                raise SandboxSettingsError("--faults: expected a JSON object")
            fault_changes.update(loaded)
        for name, _ in _FAULT_FLAGS:
            if getattr(args, name) is not None:
                fault_changes[name] = getattr(args, name)
    except ValidationError as exc:
        raise SandboxSettingsError(describe_errors(exc)) from None
    except json.JSONDecodeError as exc:
        raise SandboxSettingsError(f"--faults: not JSON: {exc}") from None
    if fault_changes:
        try:
            settings.faults = Faults.model_validate(
                {**settings.faults.model_dump(), **fault_changes}
            )
        except ValidationError as exc:
            raise SandboxSettingsError(describe_errors(exc, "faults: ")) from None
    return settings
