"""The redemption hot path's statements, on PostgreSQL straight through libpq.

A redemption runs about ten statements. Through SQLAlchemy's ``Connection.execute``
each cost some 40 µs of CPU for its execution context and result object; through a
psycopg cursor still about 25 µs more than the statement's own round trip (its query
conversion, prepared-statement bookkeeping and generator-driven waiting). Here the
statements are still written in SQLAlchemy Core and compiled once for PostgreSQL, but
run with psycopg's libpq wrapper (``psycopg.pq``) on the connection SQLAlchemy checked
out, inside its transaction: each is prepared once per connection and then executed
with one libpq call that waits with the GIL released. psycopg's own adapters turn the
parameters into PostgreSQL values and the results back into Python ones. On SQLite the
statements go through SQLAlchemy as everywhere else.

Round trips are saved three ways (libpq pipeline mode):

- A transaction's first statement goes out with its ``BEGIN``.
- A statement whose rows are needed later (:func:`ahead`) waits and goes out with the
  next round trip, ahead of that round trip's statements.
- In a unit of work (:mod:`voms.services.uow`), writes wait and go out with the
  ``COMMIT`` in one round trip (:func:`defer_writes`, :func:`send_deferred`).

Any other statement on the connection (SQLAlchemy's, or one run here) first sends what
waits, so statements always reach the server in the order they were run. What waits
when its transaction ends is dropped unsent.

Rows come back as named tuples (``row.serial``), as SQLAlchemy's rows do. The session
time zone is UTC (see :mod:`voms.db.engine`), so datetimes read are aware UTC
datetimes, as :class:`~voms.db.types.UTCDateTime` gives them. Errors are raised as
SQLAlchemy raises them (IntegrityError, …), and a lost connection is invalidated, with
every pooled connection made before it (a failover: they all led to the old primary).

Behind a pooler in transaction mode that does not carry prepared statements from one
server connection to the next (PgBouncer before 1.21), ``VOMS_DB_PREPARED_STATEMENTS=false``
sends each statement unnamed instead (:func:`prepare_statements`): parsed on every run,
still pipelined.
"""

import itertools
import json
import operator
import re
import select
import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.abc
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import JSON, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

Params = Mapping[str, Any]


@dataclass(eq=False)
class _Compiled:
    sql: bytes  # with $1, $2, … placeholders
    names: tuple[str, ...]  # the parameter of each placeholder, in order
    defaults: dict[str, Any]  # values written into the statement itself
    json: frozenset[str]  # parameters bound to JSON columns: sent as JSON text
    name: str  # unique in the process
    row: Any = None  # the named-tuple class of its rows, made on first use
    # The values of ``names`` taken from a mapping at once, and their formats: made once
    # here, not step by step in Python for every execution.
    take: Callable[[Params], Sequence[Any]] = field(init=False)
    formats: list[PyFormat] = field(init=False)
    json_at: tuple[int, ...] = field(init=False)  # where ``json``'s parameters are

    def __post_init__(self) -> None:
        names = self.names
        if len(names) > 1:
            self.take = operator.itemgetter(*names)  # a tuple of the values
        else:  # (itemgetter gives a bare value for one name)
            self.take = lambda values: [values[name] for name in names]
        self.formats = [PyFormat.AUTO] * len(names)
        self.json_at = tuple(i for i, name in enumerate(names) if name in self.json)


# Prepared too, as every statement here: PostgreSQL then parses them once per connection.
_BEGIN = _Compiled(b"BEGIN", (), {}, frozenset(), "BEGIN")
_COMMIT = _Compiled(b"COMMIT", (), {}, frozenset(), "COMMIT")

# A parameter in psycopg's named style, or an escaped percent sign.
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%")
_NAMES = itertools.count(1)
_COMPILED: dict[tuple[int, tuple[str, ...]], tuple[Executable, _Compiled]] = {}
_SESSION = "voms.hot"  # the key of a connection's _Session in SQLAlchemy's connection info
_UNPREPARED: "weakref.WeakSet[Engine]" = weakref.WeakSet()  # engines that prepare nothing


def prepare_statements(engine: Engine, prepare: bool) -> None:
    """Whether the connections of ``engine`` prepare the statements run here (the
    default), or send each unnamed (behind a pooler in transaction mode)."""
    if prepare:
        _UNPREPARED.discard(engine)
    else:
        _UNPREPARED.add(engine)


@dataclass(eq=False)
class Later:
    """The rows of a statement sent with a later round trip (:func:`ahead`)."""

    _conn: Connection | None  # until its round trip has been sent
    _rows: list[Any] | None = None

    def rows(self) -> list[Any]:
        """Its rows; sent now, in a round trip of its own, if it has not gone yet."""
        if self._conn is not None:
            send_queued(self._conn)
        if self._rows is None:
            raise RuntimeError("the round trip that carried this statement failed")
        return self._rows


@dataclass(eq=False)
class _Session:
    """What one database connection has prepared, and the statements it holds back."""

    transformer: psycopg.abc.Transformer
    encoding: str  # the connection's, for error messages
    readable: "select.poll"  # waits for the server's answer
    # (statement, parameter types) → the name it is prepared under on this connection
    prepared: dict[tuple[str, tuple[int, ...]], bytes] = field(default_factory=dict)
    # Statements waiting for the next round trip, in the order they were run: writes
    # (no Later) and reads whose rows a Later receives.
    queue: list[tuple[_Compiled, Params, Later | None]] = field(default_factory=list)
    deferring: bool = False  # run()'s writes wait for the COMMIT
    prepare: bool = True  # False: every statement is sent unnamed (parsed each time)


def fetch(conn: Connection, statement: Executable, params: Params) -> list[Any]:
    """The rows of a SELECT or of a statement with RETURNING."""
    if conn.dialect.name != "postgresql":
        return list(conn.execute(statement, params))
    compiled = _compile(conn, statement, params)
    session = _session(conn)
    with _as_sqlalchemy_errors(conn, compiled.sql):
        return _rows(session, compiled, _send(conn, session, [(compiled, params)])[0])


def fetch_together(
    conn: Connection, statements: Sequence[tuple[Executable, Params]]
) -> list[list[Any]]:
    """The rows of each statement, run in order and sent in one round trip on PostgreSQL.

    Each statement runs after the one before it has finished: one that locks a row is
    followed by one that reads what the lock protects, as it is once the lock is held.
    """
    if conn.dialect.name != "postgresql":
        return [list(conn.execute(statement, params)) for statement, params in statements]
    session = _session(conn)
    compiled = [(_compile(conn, statement, params), params) for statement, params in statements]
    with _as_sqlalchemy_errors(conn, compiled[0][0].sql):
        results = _send(conn, session, compiled)
        return [_rows(session, c, result) for (c, _), result in zip(compiled, results, strict=True)]


def ahead(conn: Connection, statement: Executable, params: Params) -> Later:
    """A statement whose rows are needed later: it waits and goes out with the next round
    trip on the connection, ahead of that round trip's own statements, saving one of its
    own. SQLite runs it at once.

    What it changes or locks is thus changed or locked before the statements run after
    it, as if it had run at once; its errors are raised by the call that sends it. A
    transaction that ends first drops it unsent.
    """
    if conn.dialect.name != "postgresql":
        return Later(None, list(conn.execute(statement, params)))
    compiled = _compile(conn, statement, params)
    later = Later(conn)
    _session(conn).queue.append((compiled, params, later))
    return later


def _rows(session: _Session, compiled: _Compiled, result: pq.abc.PGresult) -> list[Any]:
    tx = session.transformer
    tx.set_pgresult(result)
    if compiled.row is None:
        columns = [result.fname(i).decode() for i in range(result.nfields)]  # type: ignore[union-attr]
        compiled.row = namedtuple("Row", columns, rename=True)  # type: ignore[misc]
    rows: list[Any] = tx.load_rows(0, result.ntuples, compiled.row._make)
    return rows


def run(conn: Connection, statement: Executable, params: Params | Sequence[Params]) -> None:
    """A statement that returns no rows, once or (a list of parameters) for each.

    While writes are deferred (:func:`defer_writes`) the statement waits for the COMMIT.
    """
    if conn.dialect.name != "postgresql":
        conn.execute(statement, params)
        return
    # (a dict tested first: isinstance against Sequence, an ABC, costs ten times more)
    many = [params] if type(params) is dict or not isinstance(params, Sequence) else params
    if not many:
        return
    session = _session(conn)
    compiled = _compile(conn, statement, many[0])
    if session.deferring:
        session.queue.extend([(compiled, p, None) for p in many])
        return
    with _as_sqlalchemy_errors(conn, compiled.sql):
        _send(conn, session, [(compiled, p) for p in many])


def defer_writes(conn: Connection) -> None:
    """From now on :func:`run`'s writes wait for :func:`send_deferred` or the next read
    (PostgreSQL only; the unit of work's transactions)."""
    _session(conn).deferring = True


def stop_deferring(conn: Connection) -> None:
    """:func:`run` writes at once again; what still waits is dropped (rolled back)."""
    session: _Session | None = conn.connection.info.get(_SESSION)
    if session is not None:
        session.deferring = False
        _drop(session)


def send_deferred(conn: Connection, *, commit: bool) -> None:
    """Send the statements held back, and the COMMIT if asked: one round trip."""
    session = _session(conn)
    # Nothing waits, and no COMMIT is asked for or no transaction is open (nothing ran).
    idle = _pgconn(conn).transaction_status == pq.TransactionStatus.IDLE
    if not session.queue and (not commit or idle):
        return
    with _as_sqlalchemy_errors(conn, session.queue[0][0].sql if session.queue else b"COMMIT"):
        _send(conn, session, [], commit=commit)


def send_queued(conn: Connection) -> None:
    """Send the statements held back, before a statement not run here (an engine event
    calls this) or when a :class:`Later`'s rows are wanted."""
    session: _Session | None = conn.connection.info.get(_SESSION)
    if session is not None and session.queue:
        send_deferred(conn, commit=False)


def forget_queued(conn: Connection) -> None:
    """Drop what waits from an earlier transaction (an engine event calls this when a
    transaction begins): it must never run in another one."""
    session: _Session | None = conn.connection.info.get(_SESSION)
    if session is not None:
        _drop(session)


def _drop(session: _Session) -> None:
    for _, _, later in session.queue:
        if later is not None:
            later._conn = None  # its rows never come
    session.queue.clear()


# --- libpq --------------------------------------------------------------------------------


def _session(conn: Connection) -> _Session:
    if not conn.in_transaction():
        conn.begin()  # as SQLAlchemy's own statements autobegin: its commit() then commits
    info = conn.connection.info  # kept as long as the connection, cleared when it is replaced
    session: _Session | None = info.get(_SESSION)
    if session is None:
        driver: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
        readable = select.poll()
        readable.register(driver.pgconn.socket, select.POLLIN)
        session = info[_SESSION] = _Session(Transformer(driver), driver.info.encoding, readable)
        session.prepare = conn.engine not in _UNPREPARED
    return session


def _pgconn(conn: Connection) -> pq.abc.PGconn:
    return conn.connection.driver_connection.pgconn  # type: ignore[union-attr,no-any-return]


def _send(
    conn: Connection,
    session: _Session,
    statements: list[tuple[_Compiled, Params]],
    *,
    commit: bool = False,
) -> list[pq.abc.PGresult]:
    """The statements waiting, then ``statements``, and perhaps the COMMIT, in one round
    trip; the results of ``statements``."""
    pgconn = _pgconn(conn)
    waiting, session.queue = session.queue, []
    alone = not waiting and not commit and len(statements) == 1
    if alone and pgconn.transaction_status != pq.TransactionStatus.IDLE:
        # No BEGIN to go with it: one libpq call, without pipeline mode.
        name, sql, values, types, formats = _bound(pgconn, session, *statements[0])
        if name is None:
            result = pgconn.exec_params(sql, values, types, formats)
        else:
            result = pgconn.exec_prepared(name, values, formats)
        _check(conn, session, result)
        return [result]
    for _, _, later in waiting:
        if later is not None:
            later._conn = None  # sent: its rows come with this round trip, or never
    results = _pipeline(conn, session, [(c, p) for c, p, _ in waiting] + statements, commit=commit)
    for (compiled, _, later), result in zip(waiting, results, strict=False):
        if later is not None:
            later._rows = _rows(session, compiled, result)
    return results[len(waiting) :]


def _pipeline(
    conn: Connection,
    session: _Session,
    statements: list[tuple[_Compiled, Params]],
    *,
    commit: bool,
) -> list[pq.abc.PGresult]:
    """Send everything, then wait once and read the results (libpq pipeline mode).

    A BEGIN goes first when no transaction is open yet.

    A statement that fails makes PostgreSQL skip the rest, the COMMIT too; the
    transaction is then left aborted and its owner rolls it back. The first error raised.
    """
    pgconn = _pgconn(conn)
    begin = pgconn.transaction_status == pq.TransactionStatus.IDLE
    if begin:
        statements = [(_BEGIN, {}), *statements]
    if commit:
        statements = [*statements, (_COMMIT, {})]
    bound = [_bound(pgconn, session, compiled, params) for compiled, params in statements]
    pgconn.enter_pipeline_mode()
    try:
        for name, sql, values, types, formats in bound:
            if name is None:
                pgconn.send_query_params(sql, values, types, formats)
            else:
                pgconn.send_query_prepared(name, values, formats)
        pgconn.pipeline_sync()
        _flush(pgconn)
        results = [_next_result(session, pgconn) for _ in bound]
        sync = _wait_result(session, pgconn)
        if sync is None or sync.status != pq.ExecStatus.PIPELINE_SYNC:
            raise psycopg.OperationalError("the pipeline's results ended unexpectedly")
    finally:
        if pgconn.status == pq.ConnStatus.OK:
            try:
                pgconn.exit_pipeline_mode()
            except psycopg.Error:
                # Results left unread after an error: the connection is unusable. Closed,
                # it is seen as lost and replaced.
                pgconn.finish()
    for result in results:
        _check(conn, session, result)
    return results[begin : len(results) - commit]


# One execution: the prepared statement's name (None: sent unnamed, as the SQL), the SQL,
# the values, their types and formats. (A plain tuple: one is made for every statement,
# and a named tuple's constructor costs five times as much.)
_Bound = tuple[bytes | None, bytes, Sequence[Any], Sequence[int], list[pq.Format]]


def _bound(pgconn: pq.abc.PGconn, session: _Session, compiled: _Compiled, params: Params) -> _Bound:
    """Name, values and formats of an execution; prepared first if need be."""
    tx = session.transformer
    values = tx.dump_sequence(_values(compiled, params), compiled.formats)
    types = tx.types or ()
    if not session.prepare:
        return None, compiled.sql, values, types, list(tx.formats or ())
    # psycopg picks the type from the value (an int as int2, int4 or int8): one prepared
    # statement for each combination met.
    name = session.prepared.get((compiled.name, types))
    if name is None:  # (prepared before any pipeline is entered)
        name = f"voms_hot_{next(_NAMES)}".encode()
        result = pgconn.prepare(name, compiled.sql, types)
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise _error(pgconn, session, result)
        session.prepared[compiled.name, types] = name
    return name, compiled.sql, values, types, list(tx.formats or ())


def _values(compiled: _Compiled, params: Params) -> Sequence[Any]:
    values = compiled.take({**compiled.defaults, **params} if compiled.defaults else params)
    if not compiled.json_at:
        return values
    values = list(values)
    for index in compiled.json_at:
        values[index] = json.dumps(values[index])
    return values


def _flush(pgconn: pq.abc.PGconn) -> None:
    while pgconn.flush():  # 1: not all sent yet (the socket is non-blocking)
        writable = select.poll()
        writable.register(pgconn.socket, select.POLLOUT)
        writable.poll()


def _wait_result(session: _Session, pgconn: pq.abc.PGconn) -> pq.abc.PGresult | None:
    """The next result, waiting for it with the GIL released."""
    while pgconn.is_busy():
        session.readable.poll()
        pgconn.consume_input()
    return pgconn.get_result()


def _next_result(session: _Session, pgconn: pq.abc.PGconn) -> pq.abc.PGresult:
    """A pipelined statement's result (and the end marker that follows it)."""
    result = _wait_result(session, pgconn)
    if result is None or _wait_result(session, pgconn) is not None:
        raise psycopg.OperationalError(pgconn.get_error_message() or "lost a pipeline result")
    return result


_OK = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK})


def _check(conn: Connection, session: _Session, result: pq.abc.PGresult) -> None:
    if result.status in _OK:
        return
    if result.status == pq.ExecStatus.PIPELINE_ABORTED:
        raise errors.PipelineAborted("skipped after an earlier statement failed")
    raise _error(_pgconn(conn), session, result)


def _error(pgconn: pq.abc.PGconn, session: _Session, result: pq.abc.PGresult) -> psycopg.Error:
    if pgconn.status == pq.ConnStatus.BAD:  # as psycopg says it: the connection is lost
        return psycopg.OperationalError(result.get_error_message(session.encoding))
    error = errors.error_from_result(result, encoding=session.encoding)
    if isinstance(error, errors.InvalidSqlStatementName):
        session.prepared.clear()  # someone deallocated them: prepare again next time
    return error


@contextmanager
def _as_sqlalchemy_errors(conn: Connection, sql: bytes) -> Iterator[None]:
    """psycopg's errors raised as SQLAlchemy raises them (IntegrityError, …).

    A lost connection is also invalidated, as SQLAlchemy would, and so is every pooled
    connection made before it: the pool then opens new ones (to the new primary, after
    a failover) instead of handing broken ones out again.
    """
    try:
        yield
    except psycopg.Error as error:
        lost = conn.dialect.is_disconnect(error, conn.connection.dbapi_connection, None)  # type: ignore[arg-type]
        if lost:
            conn.engine.pool._invalidate(conn.connection, error)  # as SQLAlchemy does
            conn.invalidate()
        raise DBAPIError.instance(
            sql.decode(), None, error, psycopg.Error, connection_invalidated=lost
        ) from error


def _compile(conn: Connection, statement: Executable, params: Params) -> _Compiled:
    # An INSERT names the columns it is given: the key includes them.
    key = (id(statement), tuple(params))
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is statement:
        return hit[1]
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(params))  # type: ignore[attr-defined]
    if compiled.positiontup:
        raise ValueError("expected a named parameter style (psycopg's %(name)s)")
    binds = compiled.bind_names  # BindParameter → its name in the SQL
    if any(bind.expanding for bind in binds):
        raise ValueError("expanding IN parameters are not supported here; use = ANY()")
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    sql = _PLACEHOLDER.sub(placeholder, compiled.string)
    result = _Compiled(
        sql=sql.encode(),
        names=tuple(names),
        defaults={name: bind.value for bind, name in binds.items() if not bind.required},
        json=frozenset(name for bind, name in binds.items() if isinstance(bind.type, JSON)),
        name=f"statement {next(_NAMES)}",
    )
    _COMPILED[key] = (statement, result)  # the statement kept alive: its id stays its own
    return result
