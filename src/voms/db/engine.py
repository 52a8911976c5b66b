"""Engines: SQLite (embedded default, WAL) and PostgreSQL (psycopg 3, pooled)."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

from voms.config import Settings
from voms.db import hot

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled PostgreSQL connection idle longer than this is pinged before use.
PING_AFTER_IDLE_S = 5.0


def normalize_url(url: str) -> str:
    """Use psycopg 3 for any PostgreSQL URL that names no driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(settings: Settings, **overrides: Any) -> Engine:
    """An engine configured for the database behind ``settings.database_url``."""
    url = normalize_url(settings.database_url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
            **overrides,
        )
        _configure_sqlite(engine)
        return engine
    # psycopg prepares a statement it has run 5 times on a connection, and after any
    # ROLLBACK (a refused redemption's, say) it then runs DEALLOCATE ALL: that took the
    # hot path's own prepared statements (voms.db.hot) with it, and the next redemption
    # on that connection failed. Only the hot path prepares statements.
    connect_args = {"prepare_threshold": None, **overrides.pop("connect_args", {})}
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=1800,
        connect_args=connect_args,
        **overrides,
    )
    _ping_when_idle(engine)
    _utc_sessions(engine)
    _hot_writes_first(engine)
    return engine


def _hot_writes_first(engine: Engine) -> None:
    """Statements held back by voms.db.hot go out before any other statement, and never
    outlive their transaction."""

    @event.listens_for(engine, "before_cursor_execute")
    def _send_held_back(conn: Connection, *_args: Any) -> None:
        hot.send_queued(conn)

    @event.listens_for(engine, "begin")
    def _forget_held_back(conn: Connection) -> None:
        hot.forget_queued(conn)


def _utc_sessions(engine: Engine) -> None:
    """Every PostgreSQL session in UTC: datetimes read come back as aware UTC datetimes.

    SQLAlchemy's UTCDateTime converts anyway; the hot path (voms.db.hot) reads through
    psycopg directly and relies on this.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.autocommit = autocommit


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use, but only when it has been idle a while.

    ``pool_pre_ping`` would cost a round trip on every checkout, several per cent of a
    redemption. A connection in steady use has just proved alive; one that sat idle may
    have been cut (server restart, firewall) and is replaced before anyone sees it. A
    connection that breaks between two quick uses fails its statement once, and
    SQLAlchemy then discards every pooled connection made before the failure.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        if not _alive(engine, dbapi_connection):
            raise exc.DisconnectionError("the connection did not answer a ping")


def _alive(engine: Engine, dbapi_connection: Any) -> bool:
    try:
        return bool(engine.dialect.do_ping(dbapi_connection))
    except engine.dialect.loaded_dbapi.Error:
        return False


def _configure_sqlite(engine: Engine) -> None:
    """WAL, sane pragmas, and writer transactions that take the write lock at BEGIN.

    pysqlite's default deferred BEGIN lets two transactions read, then both try to
    upgrade to write; one fails at once with "database is locked". BEGIN IMMEDIATE
    queues writers on the busy timeout instead. Read-only work may ask for DEFERRED
    through the ``sqlite_begin`` execution option (see :func:`reading`).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: never blocks writers or other readers on SQLite."""
    with engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        with conn.begin():
            yield conn


_this_thread = threading.local()  # a kept connection per engine, on keeping threads


class ConnectionKeeper:
    """Lets the threads of one pool keep a connection each between their transactions.

    For the few threads that run nothing but short transactions, one after the other
    (the redemption threads): checking a connection out of the pool and back in for
    each of them cost about 8 % of the server's CPU under load (the pool's lock, a new
    Connection and its event dispatch, the reset on return). Each thread holds one
    pooled connection until :meth:`release`.
    """

    def __init__(self) -> None:
        self._kept: list[dict[Engine, tuple[Connection, float]]] = []

    def keep_on_this_thread(self) -> None:
        """Run by each thread as it starts (a ThreadPoolExecutor's initializer)."""
        _this_thread.kept = {}
        self._kept.append(_this_thread.kept)

    def release(self) -> None:
        """Give every kept connection back to its pool, once the threads have stopped."""
        for kept in self._kept:
            for conn, _ in kept.values():
                conn.close()
            kept.clear()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()``: on the thread's own connection when it keeps one
    (:class:`ConnectionKeeper`).

    A kept connection is checked as a pooled one is: pinged when it sat idle for
    ``PING_AFTER_IDLE_S`` or more, replaced when lost. One whose transaction failed goes
    back to the pool: the error may have left it unusable.
    """
    held: dict[Engine, tuple[Connection, float]] | None = getattr(_this_thread, "kept", None)
    if held is None:
        with engine.begin() as conn:
            yield conn
        return
    kept = held.pop(engine, None)
    if kept is None or kept[0].invalidated:
        conn = engine.connect()  # the pool checks it if it sat idle
    else:
        conn, idle_since = kept
        if time.monotonic() - idle_since >= PING_AFTER_IDLE_S and not _alive(
            engine, conn.connection.dbapi_connection
        ):
            conn.invalidate()  # and the next statement reconnects
    try:
        with conn.begin():
            yield conn
    except BaseException:
        conn.close()  # back to the pool, whose reset finds it broken if it is
        raise
    held[engine] = (conn, time.monotonic())


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"
