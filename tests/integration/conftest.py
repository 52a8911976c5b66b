"""Fixtures shared by the integration tests."""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no schema) for a test that migrates it step by step.

    On PostgreSQL a scratch database named after the test module, dropped afterwards.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    base: str = request.getfixturevalue("postgres_url")
    admin = base.rsplit("/", 1)[0] + "/postgres"
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"{base.rsplit('/', 1)[1]}_{module}"[:63]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
