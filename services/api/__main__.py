"""`python -m services.api`: run the api service."""

from __future__ import annotations

from services.api.main import create_app
from shared.runner import run_service


def main() -> None:
    run_service("api", create_app)


if __name__ == "__main__":
    main()
