"""The unit of work: the one way a service touches the database.

::

    with UnitOfWork(rt) as uow:
        uow.idempotent(scope, request_id, fingerprint)  # only for calls with a request id
        rows = uow.fetch(statement, params)              # reads: at once
        uow.write(statement, params)                     # writes: go out with the COMMIT
        uow.answer(body)                                 # what a retry with the id gets
        uow.after_commit(lambda: send_notice(...))       # once the transaction is durable
        uow.commit()
    # leaving the block without commit() rolls everything back

The API, all of it:

- ``UnitOfWork(rt, read_only=False, snapshot=False, replica=False)``; ``with uow:``
  opens one transaction on the thread's kept connection (a redemption thread,
  :class:`KeptConnections`) or on one from the pool. ``read_only`` never blocks writers
  on SQLite; with ``snapshot`` every read sees one snapshot (REPEATABLE READ on
  PostgreSQL; SQLite's transactions always do). ``replica`` (read-only work that may
  lag the primary a little: reports, lookups, lists) runs on the standby of
  ``VOMS_READ_DATABASE_URL`` when one is configured.
- ``uow.conn``: the SQLAlchemy connection, for set-based and bulk statements.
- ``fetch``, ``fetch_together``, ``ahead``: reads that cost the fewest round trips;
  ``write``: a statement returning nothing, sent with the COMMIT (or before the next
  read, whichever comes first), so statements still reach the server in order.
- ``commit()``: writes, the stored answer and the COMMIT in one round trip, then the
  ``after_commit`` functions. Without it, ``with`` rolls back.
- ``idempotent(scope, request_id, fingerprint)``: the one idempotency rule. Same id
  and same body: the first answer again (:class:`AnsweredBefore` is raised, carrying
  it); same id, other body: :class:`~voms.domain.errors.RequestIdReused` (a 409; the
  redemption family answers 5006). ``look_now=False`` skips the lookup: the id is only
  stored with the COMMIT, which fails if it is taken, and then the rule applies (the
  redemption's hot path: it saves a round trip, a repeated call fails anyway).
- ``answer(body, status)``: the answer stored under the id with the commit.
- ``after_commit(fn)``: side effects (SMS notices, events) run once the COMMIT is done,
  never for a rolled-back transaction; one that fails is logged, not raised.

How it is fast on PostgreSQL is its own business (:mod:`voms.db.hot`): statements are
prepared once per connection and run through libpq; the first statement goes out with
its BEGIN, ``ahead`` reads and ``write`` writes wait for the next round trip. A
redemption thus takes three round trips: find the voucher; take it and lock the
account; write everything and COMMIT.
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple, Self

from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, RootTransaction, bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.base import Executable

from voms.db import hot
from voms.db import tables as t
from voms.db.engine import PING_AFTER_IDLE_S, alive, outdated
from voms.db.types import utcnow
from voms.domain.errors import RequestIdReused, VomsError
from voms.runtime import Runtime

log = logging.getLogger("voms.uow")

Params = hot.Params
Later = hot.Later


@dataclass(frozen=True)
class FirstAnswer:
    """The answer stored under a request id: its HTTP status and body."""

    status_code: int
    body: dict[str, Any]


class AnsweredBefore(Exception):
    """The request id was answered before, for this very body: give ``first`` again."""

    def __init__(self, first: FirstAnswer) -> None:
        super().__init__("request id answered before")
        self.first = first


class _RequestKey(NamedTuple):  # (made per call: a frozen dataclass costs 3 times as much)
    scope: str
    request_id: str
    fingerprint: str


_k = t.idempotency_keys
_FIND_ANSWER = select(_k.c.request_hash, _k.c.status_code, _k.c.response).where(
    _k.c.scope == bindparam("scope"), _k.c.request_id == bindparam("request_id")
)
_STORE_ANSWER = insert(_k)
_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


class UnitOfWork:
    """One database transaction of a service call; see the module's docstring."""

    conn: Connection
    """The connection, inside the ``with`` block only (outside it the attribute is
    missing): for statements that are not on the hot path (set-based work). A plain
    attribute, not a checking property: the hot path reads it for every statement."""

    def __init__(
        self, rt: Runtime, *, read_only: bool = False, snapshot: bool = False, replica: bool = False
    ) -> None:
        self.rt = rt
        self._engine = rt.read_engine if replica and rt.read_engine is not None else rt.engine
        self._postgres = self._engine.dialect.name == "postgresql"
        self._read_only = read_only or replica
        self._snapshot = snapshot
        self._transaction: RootTransaction | None = None
        self._kept: dict[Engine, tuple[Connection, float]] | None = None
        self._committed = False
        self._key: _RequestKey | None = None
        self._answer: tuple[dict[str, Any], int] | None = None
        self._after_commit: list[Callable[[], object]] = []
        self.started_at: datetime = utcnow()

    # --- the transaction -------------------------------------------------------------

    def __enter__(self) -> Self:
        self.conn = self._connection()
        try:
            self._transaction = self.conn.begin()
            if self._postgres:
                hot.defer_writes(self.conn)
        except BaseException:
            self._give_back(failed=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A refusal (a domain error, an answer given again) leaves the connection sound.
        failed = exc is not None and not isinstance(exc, VomsError | AnsweredBefore)
        try:
            if not self._committed:
                self._roll_back()
        except BaseException:
            failed = True
            raise
        finally:
            self._give_back(failed=failed)

    def commit(self) -> None:
        """Send what waits, store the answer, COMMIT; then run the after-commit functions."""
        conn = self.conn
        try:
            if self._key is not None and self._answer is not None:
                body, status = self._answer
                row = _answer_row(self._key, body, status, self.started_at)
                hot.run(conn, _STORE_ANSWER, row)
            if self._postgres:
                hot.send_deferred(conn, commit=True)
            assert self._transaction is not None
            self._transaction.commit()  # (on PostgreSQL, SQLAlchemy's bookkeeping only)
        except IntegrityError:
            self._roll_back()
            first = self._first_answer_after_race()
            if first is None:
                raise
            self._apply_rule(first)
            raise
        self._committed = True
        for side_effect in self._after_commit:
            try:
                side_effect()
            except Exception as exc:  # the transaction is done; a side effect is best effort
                log.warning("after-commit side effect failed: %s", exc.__class__.__name__)

    # --- statements ----------------------------------------------------------------------

    def fetch(self, statement: Executable, params: Params) -> list[Any]:
        """The rows of a SELECT or of a statement with RETURNING."""
        return hot.fetch(self.conn, statement, params)

    def fetch_together(self, statements: Sequence[tuple[Executable, Params]]) -> list[list[Any]]:
        """The rows of each statement, run in order, in one round trip on PostgreSQL."""
        return hot.fetch_together(self.conn, statements)

    def ahead(self, statement: Executable, params: Params) -> Later:
        """A statement whose rows are wanted later: it goes out with the next round trip."""
        return hot.ahead(self.conn, statement, params)

    def write(self, statement: Executable, params: Params | Sequence[Params]) -> None:
        """A statement returning nothing (a list of parameters: once each); it goes out
        with the COMMIT, or before the next read."""
        hot.run(self.conn, statement, params)

    # --- idempotency and side effects ---------------------------------------------------

    def idempotent(
        self, scope: str, request_id: str | None, fingerprint: str, *, look_now: bool = True
    ) -> None:
        """This call answers for ``request_id`` (nothing to do when it is None).

        Raises :class:`AnsweredBefore` when the id was answered for this body before,
        :class:`RequestIdReused` when for another; ``look_now=False`` leaves that to
        the COMMIT (see the module's docstring).
        """
        if request_id is None:
            return
        self._key = _RequestKey(scope, request_id, fingerprint)
        if look_now:
            first = _find_answer(self.conn, self._key)
            if first is not None:
                self._apply_rule(first)

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        """The answer a retry with this call's request id gets (stored with the commit)."""
        self._answer = (body, status)

    def after_commit(self, side_effect: Callable[[], object]) -> None:
        """Run ``side_effect`` once the transaction is committed (never if it is not)."""
        self._after_commit.append(side_effect)

    def _apply_rule(self, first: tuple[str, FirstAnswer]) -> None:
        assert self._key is not None
        fingerprint, answer = first
        if fingerprint != self._key.fingerprint:
            raise RequestIdReused("request id reused with different parameters")
        raise AnsweredBefore(answer)

    def _first_answer_after_race(self) -> tuple[str, FirstAnswer] | None:
        """The answer a concurrent call stored under our id, read after our rollback."""
        if self._key is None:
            return None
        with self.conn.begin():
            return _find_answer(self.conn, self._key)

    # --- the connection ---------------------------------------------------------------

    def _connection(self) -> Connection:
        """The thread's kept connection, checked as the pool checks its own, or a pooled one."""
        plain = not (self._read_only or self._snapshot)
        self._kept = _kept_on_this_thread() if plain else None
        if self._kept is None:
            conn = self._engine.connect()
            # (execution_options changes conn itself; the pool's reset undoes it)
            if self._read_only:
                conn.execution_options(sqlite_begin="DEFERRED")
            if self._snapshot and self._postgres:
                conn.execution_options(isolation_level="REPEATABLE READ")
            return conn
        kept = self._kept.pop(self._engine, None)
        if kept is None or kept[0].invalidated:
            return self._engine.connect()  # the pool checks it if it sat idle
        kept_conn, idle_since = kept
        if outdated(self._engine, kept_conn):  # a connection of the pool's was lost since
            kept_conn.invalidate()
        elif time.monotonic() - idle_since >= PING_AFTER_IDLE_S and not alive(
            self._engine, kept_conn.connection.dbapi_connection
        ):
            kept_conn.invalidate()  # and the next statement reconnects
        return kept_conn

    def _roll_back(self) -> None:
        conn = self.conn
        if self._postgres and not conn.invalidated and not conn.closed:
            hot.forget_queued(conn)
            # A statement that failed in a pipeline leaves the transaction aborted
            # whatever SQLAlchemy believes: end it on the driver's connection too.
            raw = conn.connection.driver_connection
            if raw.info.transaction_status in _OPEN:  # type: ignore[union-attr]
                raw.rollback()  # type: ignore[union-attr]
        if self._transaction is not None and self._transaction.is_active:
            self._transaction.rollback()

    def _give_back(self, *, failed: bool) -> None:
        """Keep the connection for the thread's next unit of work, or return it to the pool.

        One whose work failed goes back to the pool: the error may have left it unusable.
        """
        conn: Connection | None = self.__dict__.pop("conn", None)
        if conn is None:
            return
        if self._postgres and not conn.closed and not conn.invalidated:
            hot.stop_deferring(conn)
        if self._kept is None or failed:
            conn.close()
            return
        self._kept[self._engine] = (conn, time.monotonic())


def _find_answer(conn: Connection, key: _RequestKey) -> tuple[str, FirstAnswer] | None:
    rows = hot.fetch(conn, _FIND_ANSWER, {"scope": key.scope, "request_id": key.request_id})
    if not rows:
        return None
    return rows[0].request_hash, FirstAnswer(rows[0].status_code, rows[0].response)


def _answer_row(
    key: _RequestKey, body: dict[str, Any], status: int, at: datetime
) -> dict[str, Any]:
    return {
        "scope": key.scope,
        "request_id": key.request_id,
        "request_hash": key.fingerprint,
        "status_code": status,
        "response": body,
        "created_at": at,
    }


# --- connections kept by the redemption threads ----------------------------------------

_this_thread = threading.local()  # a kept connection per engine, on keeping threads


def _kept_on_this_thread() -> dict[Engine, tuple[Connection, float]] | None:
    kept: dict[Engine, tuple[Connection, float]] | None = getattr(_this_thread, "kept", None)
    return kept


class KeptConnections:
    """Lets the threads of one pool keep a connection each between their units of work.

    For the few threads that run nothing but short transactions, one after the other
    (the redemption threads): checking a connection out of the pool and back in for
    each of them cost about 8 % of the server's CPU under load (the pool's lock, a new
    Connection and its event dispatch, the reset on return). A kept connection idle
    ``PING_AFTER_IDLE_S`` or more is pinged before use, and replaced when lost.
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
