"""Insert-if-absent: the one upsert the services need, in each dialect's own words."""

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_if_absent(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """Insert ``values`` unless a row with the same primary key exists; True if inserted.

    Unlike catching IntegrityError, this leaves the transaction usable on PostgreSQL.
    On PostgreSQL a concurrent insert of the same key waits for the other transaction
    and then reports "absent" only if that one rolled back.
    """
    return conn.execute(_statement(conn.dialect.name, table), values).first() is not None


_STATEMENTS: dict[tuple[str, str], Any] = {}


def _statement(dialect_name: str, table: Table) -> Any:
    """Built once per table and dialect (a hot path: every redemption with a request id)."""
    statement = _STATEMENTS.get((dialect_name, table.name))
    if statement is None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        key = next(iter(table.primary_key.columns))
        # RETURNING, not rowcount: drivers disagree on the rowcount of INSERT … ON CONFLICT.
        statement = dialect.insert(table).on_conflict_do_nothing().returning(key)
        _STATEMENTS[(dialect_name, table.name)] = statement
    return statement


def add_to_rows(
    conn: Connection, table: Table, rows: list[dict[str, Any]], added: tuple[str, ...]
) -> None:
    """Insert each row, or add its ``added`` columns to the row with the same primary key.

    Rows go in key order, so two writers adding to the same rows never deadlock.
    """
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = [column.name for column in table.primary_key.columns]
    statement = dialect.insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=key,
        set_={name: table.c[name] + statement.excluded[name] for name in added},
    )
    ordered = sorted(rows, key=lambda row: tuple(row[name] for name in key))
    conn.execute(statement, ordered)
