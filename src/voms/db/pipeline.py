"""The last writes of a transaction and its COMMIT in one round trip (PostgreSQL).

A redemption ends with half a dozen INSERTs and UPDATEs whose results nobody reads.
Sent one by one, each costs a network round trip, and on the hot path those round trips
cost more CPU than the statements themselves. Run with :func:`voms.db.hot.run`, they
wait and go out with the COMMIT in libpq's pipeline mode: the client waits once. Any
other statement run meanwhile sends them first, so the order holds. SQLite runs them as
usual.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection

from voms.db import hot
from voms.db.engine import is_postgres


@contextmanager
def commit_together(conn: Connection) -> Iterator[None]:
    """Run the block's statements, then commit the transaction; one round trip on PostgreSQL.

    Writes run with :func:`voms.db.hot.run` wait for the COMMIT; a statement that reads
    first sends them, costing a round trip of its own. A statement that fails there (a
    unique key taken, say) raises from the COMMIT as SQLAlchemy's usual error, and the
    transaction is rolled back.
    """
    if not is_postgres(conn):
        yield
        conn.commit()
        return
    raw = conn.connection.driver_connection
    try:
        with hot.deferring(conn):
            yield
            hot.send_deferred(conn, commit=True)
        conn.commit()  # SQLAlchemy's bookkeeping: the transaction has ended already
    except BaseException:
        # A statement failed in the pipeline: PostgreSQL skipped the queued COMMIT and
        # the transaction is left aborted. Rolled back here, whatever SQLAlchemy believes.
        # (A connection that broke has no transaction to end: SQLAlchemy discards it.)
        if raw.info.transaction_status in _OPEN:  # type: ignore[union-attr]
            raw.rollback()  # type: ignore[union-attr]
        raise


_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
