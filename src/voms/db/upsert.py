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
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    # RETURNING, not rowcount: drivers disagree on the rowcount of INSERT … ON CONFLICT.
    return conn.execute(statement).first() is not None
