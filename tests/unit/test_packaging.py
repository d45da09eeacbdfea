"""pyproject.toml ships only files that exist."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_package_data_pattern_matches_a_file() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    unmatched = [
        f"{package}: {pattern}"
        for package, patterns in package_data.items()
        for pattern in patterns
        if not any((REPO / package.replace(".", "/")).glob(pattern))
    ]
    assert not unmatched


def test_alembic_finds_the_migrations_from_the_repository_root() -> None:
    ini = (REPO / "alembic.ini").read_text()
    assert "script_location = %(here)s/shared/migrations" in ini
    assert (REPO / "shared" / "migrations" / "env.py").exists()
