"""Test fixtures: every database test runs on SQLite and, when reachable, PostgreSQL.

Isolation: each SQLite test gets a fresh copy of a migrated template file; PostgreSQL
tests share one migrated database per test process and start from empty tables.
Set VOMS_TEST_REQUIRE_POSTGRES=1 (CI does) to turn an unreachable PostgreSQL, or a run
that executed no PostgreSQL test, into a failure instead of a skip.
"""

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from tests.pgp import PartnerKeys, make_partner_keys, stop_agent
from voms.config import Settings
from voms.crypto import Keyring, write_keyring
from voms.db.engine import make_engine
from voms.db.migrate import upgrade
from voms.db.tables import metadata
from voms.runtime import Runtime, build_runtime

PG_ADMIN_URL = os.environ.get(
    "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_PG = os.environ.get("VOMS_TEST_REQUIRE_POSTGRES") == "1"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
_pg_tests_passed = 0


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _pg_tests_passed
    if report.when == "call" and report.passed and "postgresql" in report.nodeid:
        _pg_tests_passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_PG and _WORKER == "main" and exitstatus == 0 and _pg_tests_passed == 0:
        print("\nVOMS_TEST_REQUIRE_POSTGRES=1 but no PostgreSQL test passed")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "voms-keys.json"
    write_keyring(path, Keyring.new())
    return path


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(Settings(database_url=f"sqlite:///{path}"))
    upgrade(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    problem = _postgres_reachable()
    if problem is not None:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required but unreachable: {problem}")
        pytest.skip(f"PostgreSQL not reachable: {problem}")
    name = f"voms_test_{_WORKER}_{os.getpid()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(Settings(database_url=url))
    upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty_postgres(url: str) -> None:
    names = ", ".join(table.name for table in metadata.sorted_tables if table.name != "counters")
    engine = make_engine(Settings(database_url=url, db_pool_size=1))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        conn.execute(text("UPDATE counters SET next_value = 100000000001 WHERE name = 'serial'"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "voms.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def settings(database_url: str, keys_file: Path) -> Settings:
    return Settings(database_url=database_url, keys_file=keys_file)


# Threads the services start on their own (background jobs, batch generation, exports).
BACKGROUND_THREADS = ("voms-job-", "generate-batch-", "export-")


def _join_background_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith(BACKGROUND_THREADS):
            thread.join(30)


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = build_runtime(settings)
    yield runtime
    # A background thread still working would take a connection from the pool that
    # dispose() makes anew, and leave it open after the test.
    _join_background_threads()
    runtime.engine.dispose()


@pytest.fixture(scope="session")
def partner_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PartnerKeys]:
    """Real OpenPGP keys (valid, expired, revoked, sign-only) made by the gpg command line."""
    keys = make_partner_keys(tmp_path_factory.mktemp("gnupg") / "home")
    yield keys
    stop_agent(keys.home)
