"""`python -m services.sandbox [flags]`: run the gateway sandbox (see the package doc)."""

from __future__ import annotations

from services.sandbox.app import create_app
from services.sandbox.server import SandboxServer
from services.sandbox.settings import load_sandbox_settings
from services.sandbox.state import SandboxState
from shared.logging import configure_logging, get_logger
from shared.settings import load_settings


def main(argv: list[str] | None = None) -> None:
    settings = load_sandbox_settings(argv)
    configure_logging(load_settings(), "sandbox")
    log = get_logger("services.sandbox")
    state = SandboxState(
        token=settings.token.get_secret_value(),
        faults=settings.faults,
        store_text=settings.ledger_text,
    )
    server = SandboxServer(
        create_app(state),
        host=settings.host,
        port=settings.port,
        control_port=settings.control_port,
        keep_alive_s=settings.keep_alive_s,
    )
    log.info(
        "sandbox_starting",
        port=server.port,
        control_port=server.control_port,
        faults=settings.faults.model_dump(exclude_defaults=True),
        seed_in_use=state.plan.seed,
        ledger_text=settings.ledger_text,
        token_is_default=settings.token.get_secret_value() == "sandbox-token",
    )
    initial = settings.initial_outage()
    if initial is not None:
        mode, seconds = initial

        async def begin_outage() -> None:
            await state.start_outage(mode, seconds)

        server.on_started.append(begin_outage)
    server.run_forever()


if __name__ == "__main__":
    main()
