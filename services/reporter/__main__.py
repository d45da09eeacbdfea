"""`python -m services.reporter`: run the reporter service."""

from __future__ import annotations

from services.reporter.main import create_app
from shared.runner import run_service


def main() -> None:
    run_service("reporter", create_app)


if __name__ == "__main__":
    main()
