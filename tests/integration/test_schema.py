import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from voms.db import tables as t
from voms.db.migrate import head_revision, is_up_to_date
from voms.db.types import utcnow
from voms.runtime import Runtime


def test_migrations_build_exactly_the_declared_schema(rt: Runtime) -> None:
    assert is_up_to_date(rt.engine)
    with rt.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), t.metadata) == []


def test_the_head_revision_is_known() -> None:
    assert head_revision() == "0007_vouchers_fk"


def test_the_audit_log_is_append_only_in_the_database(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.audit_log).values(
                at=utcnow(), actor="x", action="a", object_type="o", object_id="1", detail={}
            )
        )
    for statement in ("UPDATE audit_log SET actor = 'y'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), rt.engine.begin() as conn:
            conn.execute(text(statement))
    with rt.engine.connect() as conn:
        assert conn.execute(select(t.audit_log.c.actor)).scalars().all() == ["x"]


def test_datetimes_come_back_timezone_aware(rt: Runtime) -> None:
    now = utcnow()
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.audit_log).values(
                at=now, actor="x", action="a", object_type="o", object_id="1", detail={}
            )
        )
        stored = conn.execute(select(t.audit_log.c.at)).scalar_one()
    assert stored.tzinfo is not None
    assert abs((stored - now).total_seconds()) < 0.001


def test_the_serial_counter_starts_at_twelve_digits(rt: Runtime) -> None:
    with rt.engine.connect() as conn:
        value = conn.execute(
            select(t.counters.c.next_value).where(t.counters.c.name == "serial")
        ).scalar_one()
    assert len(str(value)) == 12


def test_sqlite_runs_in_wal_mode(rt: Runtime) -> None:
    if rt.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with rt.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
