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
