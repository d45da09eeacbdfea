"""`python -m services.scheduler`: run the scheduler service."""

from __future__ import annotations

from services.scheduler.main import create_app
from shared.runner import run_service


def main() -> None:
    run_service("scheduler", create_app)


if __name__ == "__main__":
    main()
