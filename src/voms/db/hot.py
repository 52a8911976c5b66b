"""The redemption hot path's statements, on PostgreSQL straight through psycopg.

SQLAlchemy's ``Connection.execute`` spends some 40 µs of CPU per statement on its
execution context and result object; a redemption runs ten statements, and that was a
fifth of its CPU. Here the statements are still written in SQLAlchemy Core, compiled
once for PostgreSQL, and run with psycopg on the connection SQLAlchemy checked out,
inside its transaction. On SQLite they go through SQLAlchemy as everywhere else.

Rows come back as named tuples (``row.serial``), as SQLAlchemy's rows do. The session
time zone is UTC (see :mod:`voms.db.engine`), so datetimes read are aware UTC
datetimes, as :class:`~voms.db.types.UTCDateTime` gives them.
"""

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import JSON, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.base import Executable

from voms.db.engine import is_postgres

Params = Mapping[str, Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str  # with positional %s placeholders: psycopg binds a tuple faster than a dict
    names: tuple[str, ...]  # the parameter of each placeholder, in order
    defaults: dict[str, Any]  # values written into the statement itself
    json: frozenset[str]  # parameters bound to JSON columns: sent as JSON text


_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s")


_COMPILED: dict[tuple[int, tuple[str, ...]], tuple[Executable, _Compiled]] = {}


def fetch(conn: Connection, statement: Executable, params: Params) -> list[Any]:
    """The rows of a SELECT or of a statement with RETURNING."""
    if not is_postgres(conn):
        return list(conn.execute(statement, params))
    compiled = _compile(conn, statement, params)
    cursor = conn.connection.driver_connection.cursor(row_factory=namedtuple_row)  # type: ignore[union-attr]
    with _as_sqlalchemy_errors(conn, compiled):
        cursor.execute(compiled.sql, _bind(compiled, params), prepare=True)
        rows: list[Any] = cursor.fetchall()
    return rows


def run(conn: Connection, statement: Executable, params: Params | Sequence[Params]) -> None:
    """A statement that returns no rows, once or (a list of parameters) for each."""
    if not is_postgres(conn):
        conn.execute(statement, params)
        return
    many = params if isinstance(params, Sequence) else [params]
    if not many:
        return
    compiled = _compile(conn, statement, many[0])
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with _as_sqlalchemy_errors(conn, compiled):
        if len(many) == 1:
            cursor.execute(compiled.sql, _bind(compiled, many[0]), prepare=True)
        else:
            cursor.executemany(compiled.sql, [_bind(compiled, p) for p in many])


@contextmanager
def _as_sqlalchemy_errors(conn: Connection, compiled: "_Compiled") -> Iterator[None]:
    """psycopg's errors raised as SQLAlchemy raises them (IntegrityError, …).

    A lost connection is also invalidated, as SQLAlchemy would: the pool then opens a
    new one instead of handing the broken one out again.
    """
    try:
        yield
    except psycopg.Error as error:
        lost = conn.dialect.is_disconnect(error, conn.connection.dbapi_connection, None)  # type: ignore[arg-type]
        if lost:
            conn.invalidate()
        raise DBAPIError.instance(
            compiled.sql, None, error, psycopg.Error, connection_invalidated=lost
        ) from error


def _bind(compiled: _Compiled, params: Params) -> tuple[Any, ...]:
    values = {**compiled.defaults, **params} if compiled.defaults else params
    if not compiled.json:
        return tuple([values[name] for name in compiled.names])
    return tuple(
        [json.dumps(values[n]) if n in compiled.json else values[n] for n in compiled.names]
    )


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
    result = _Compiled(
        sql=_PLACEHOLDER.sub("%s", compiled.string),
        names=tuple(_PLACEHOLDER.findall(compiled.string)),
        defaults={name: bind.value for bind, name in binds.items() if not bind.required},
        json=frozenset(name for bind, name in binds.items() if isinstance(bind.type, JSON)),
    )
    if any(bind.expanding for bind in binds):
        raise ValueError("expanding IN parameters are not supported here; use = ANY()")
    _COMPILED[key] = (statement, result)  # the statement kept alive: its id stays its own
    return result
