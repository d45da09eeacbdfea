"""`python -m services.dispatcher`: run the dispatcher service."""

from __future__ import annotations

from services.dispatcher.main import create_app
from shared.runner import run_service


def main() -> None:
    run_service("dispatcher", create_app)


if __name__ == "__main__":
    main()
