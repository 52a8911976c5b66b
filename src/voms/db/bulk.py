"""Bulk load: PostgreSQL COPY or executemany elsewhere, behind one function.

The only place that knows how each database ingests millions of rows fastest. Rows are
positional tuples in the order of ``columns``.
"""

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

# SQLite writes every page a transaction dirtied into its WAL at commit. Rows keyed by a
# random hash dirty pages all over their index, so small transactions rewrite that index
# again and again; a quarter million rows a transaction measured about 40 % faster than
# 20,000 at a million vouchers, while a writer waits at most a second or two.
SQLITE_ROWS_PER_TRANSACTION = 250_000
MAX_ATTEMPTS = 10
UNIQUE_VIOLATION = "23505"  # SQLSTATE
_LOOKUP_BATCH = 500


def rows_per_transaction(engine: Engine | Connection, chunk_size: int) -> int:
    """How many rows one transaction of a long load should hold (a multiple of chunks)."""
    if engine.dialect.name == "postgresql":
        return chunk_size
    return max(1, SQLITE_ROWS_PER_TRANSACTION // chunk_size) * chunk_size


class DuplicateKey(Exception):
    """A row of an all-or-nothing load broke a UNIQUE constraint; nothing was written."""


def load(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Any],
    *,
    skip_taken: str | None = None,
) -> list[Any]:
    """Append ``rows`` to ``table`` inside the caller's transaction.

    Without ``skip_taken`` the load is all or nothing: on a unique violation it is rolled
    back to a savepoint (the caller's transaction stays usable) and
    :class:`DuplicateKey` is raised. With ``skip_taken`` naming a UNIQUE column, rows
    whose value there is already taken are left out and returned (normally none); any
    other violation raises.
    """
    if not rows:
        return []
    postgres = conn.dialect.name == "postgresql"
    if skip_taken is not None:
        if postgres:
            return _copy_skipping(conn, table, columns, rows, skip_taken)
        return _executemany_skipping(conn, table, columns, rows, skip_taken)
    try:
        with conn.begin_nested():
            if postgres:
                _copy(conn, table, columns, rows)
            else:
                conn.exec_driver_sql(_insert(table, columns), list(rows))
    except IntegrityError as exc:
        raise DuplicateKey(type(exc.orig).__name__) from None
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == UNIQUE_VIOLATION:  # psycopg, not wrapped
            raise DuplicateKey(type(exc).__name__) from None
        raise
    return []


def _insert(table: Table, columns: Sequence[str], suffix: str = "") -> str:
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    # Names come from the schema, never from input.
    return f"INSERT INTO {table.name} ({names}) VALUES ({marks}){suffix}"  # noqa: S608


def _existing(conn: Connection, table: Table, column: str, values: Sequence[Any]) -> set[Any]:
    """Which of ``values`` ``table.column`` holds (an index lookup per value)."""
    found: set[Any] = set()
    for start in range(0, len(values), _LOOKUP_BATCH):
        part = list(values[start : start + _LOOKUP_BATCH])
        found.update(
            conn.execute(select(table.c[column]).where(table.c[column].in_(part))).scalars()
        )
    return found


def _executemany_skipping(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Any], skip_taken: str
) -> list[Any]:
    # ON CONFLICT … DO NOTHING rather than a savepoint: rolling a savepoint back inside a
    # large SQLite transaction took over a gigabyte of memory at millions of rows.
    statement = _insert(table, columns, f" ON CONFLICT ({skip_taken}) DO NOTHING")
    written = conn.exec_driver_sql(statement, list(rows)).rowcount
    if written == len(rows):
        return []
    # The rare path (a collision): which rows are missing, by primary key.
    (key,) = table.primary_key.columns
    at = columns.index(key.name)
    present = _existing(conn, table, key.name, [row[at] for row in rows])
    return [row for row in rows if row[at] not in present]


def _pg_type(table: Table, column: str) -> str:
    compiled = table.c[column].type.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
    return re.sub(r"\(.*\)", "", compiled).lower()


def _copy(conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Any]) -> None:
    driver = conn.connection.driver_connection
    assert driver is not None
    names = ", ".join(columns)
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {table.name} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types([_pg_type(table, column) for column in columns])
        for row in rows:
            copy.write_row(row)


def copy_binary(conn: Connection, table: Table, columns: Sequence[str], data: bytes) -> None:
    """COPY a whole binary stream (header, records, trailer) made elsewhere, as it is."""
    driver = conn.connection.driver_connection
    assert driver is not None
    names = ", ".join(columns)
    with (
        driver.cursor() as cursor,
        cursor.copy(f"COPY {table.name} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.write(data)


def _copy_skipping(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[Any], skip_taken: str
) -> list[Any]:
    """COPY in a savepoint; on a unique violation, leave out the taken rows and COPY again."""
    at = columns.index(skip_taken)
    skipped: list[Any] = []
    for _ in range(MAX_ATTEMPTS):
        try:
            with conn.begin_nested():
                _copy(conn, table, columns, rows)
            return skipped
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            taken = _existing(conn, table, skip_taken, [row[at] for row in rows])
            if not taken:
                raise  # another UNIQUE constraint (a primary key clash): a real error
            skipped += [row for row in rows if row[at] in taken]
            rows = [row for row in rows if row[at] not in taken]
            if not rows:
                return skipped
    raise RuntimeError(f"COPY into {table.name} kept colliding on {skip_taken}")
