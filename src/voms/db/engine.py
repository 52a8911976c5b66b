"""Engines: SQLite (embedded default, WAL) and PostgreSQL (psycopg 3, pooled)."""

import math
import time
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


def make_engine(settings: Settings, *, read: bool = False, **overrides: Any) -> Engine:
    """An engine configured for the database behind ``settings.database_url`` (``read``:
    ``settings.read_database_url``, the standby that serves reports and lists)."""
    url = normalize_url(
        settings.read_database_url if read and settings.read_database_url else settings.database_url
    )
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
    connect_args = {
        "prepare_threshold": None,
        **_bounded_waits(settings, url),
        **overrides.pop("connect_args", {}),
    }
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
    hot.prepare_statements(engine, settings.db_prepared_statements)
    return engine


def _bounded_waits(settings: Settings, url: str) -> dict[str, Any]:
    """libpq parameters that keep a lost server from holding anyone up for long.

    A server that is gone (a failover, a cut network) must make its calls fail within
    ``VOMS_DB_POOL_TIMEOUT_S``, not hang: connecting gives up on each host of the URL
    after a third of it (a refused connection fails at once); TCP keepalives and
    ``tcp_user_timeout`` notice a peer that vanished without closing its connections.
    A parameter the URL sets itself wins.
    """
    given = make_url(url).query
    timeout_s = settings.db_pool_timeout_s
    waits: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(timeout_s / 3)),
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(timeout_s / 3)),
        "keepalives_interval": max(1, math.ceil(timeout_s / 10)),
        "keepalives_count": 3,
        "tcp_user_timeout": math.ceil(timeout_s * 1000),
    }
    return {name: value for name, value in waits.items() if name not in given}


def outdated(engine: Engine, conn: Connection) -> bool:
    """Whether ``conn`` (a kept one) was made before the pool last lost a connection.

    A lost connection invalidates every pooled connection made before it (SQLAlchemy
    does it for its own statements, voms.db.hot for the hot path's); the pool replaces
    them at checkout. A connection kept outside the pool by a redemption thread is
    checked here instead, so that after a failover none of them meets the old primary.
    """
    record = getattr(conn.connection, "_connection_record", None)
    invalidated_at: float = getattr(engine.pool, "_invalidate_time", 0)
    return record is not None and invalidated_at > record.starttime


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
        if not alive(engine, dbapi_connection):
            raise exc.DisconnectionError("the connection did not answer a ping")


def alive(engine: Engine, dbapi_connection: Any) -> bool:
    """Whether a connection answers a ping (a kept one that sat idle, say)."""
    try:
        return bool(engine.dialect.do_ping(dbapi_connection))
    except engine.dialect.loaded_dbapi.Error:
        return False


def _configure_sqlite(engine: Engine) -> None:
    """WAL, sane pragmas, and writer transactions that take the write lock at BEGIN.

    pysqlite's default deferred BEGIN lets two transactions read, then both try to
    upgrade to write; one fails at once with "database is locked". BEGIN IMMEDIATE
    queues writers on the busy timeout instead. Read-only work may ask for DEFERRED
    through the ``sqlite_begin`` execution option (a read-only unit of work does).
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
