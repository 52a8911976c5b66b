"""The unit of work's database plumbing: pipelined commit, direct statements, kept
connections, pings."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import Any

import pytest
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from voms.db import engine as db_engine
from voms.db import hot
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import uow as uow_module
from voms.services.uow import KeptConnections, UnitOfWork

_k = t.idempotency_keys


def _key(request_id: str, response: object) -> dict[str, object]:
    return {
        "scope": "test",
        "request_id": request_id,
        "request_hash": "h" * 64,
        "status_code": 200,
        "response": response,
        "created_at": utcnow(),
    }


def _stored(rt: Runtime) -> dict[str, object]:
    with rt.engine.connect() as conn:
        return {row.request_id: row.response for row in conn.execute(select(_k))}


def _cut(rt: Runtime, pid: int) -> None:
    """End a PostgreSQL backend from outside, as a server restart or a firewall would."""
    with rt.engine.connect() as other:
        other.execute(select(func.pg_terminate_backend(pid)))


def test_writes_of_a_unit_of_work_are_committed(rt: Runtime) -> None:
    with UnitOfWork(rt) as uow:
        uow.write(insert(_k), _key("a", {"result_code": 0, "credits": [1, 2]}))
        uow.write(insert(_k), [_key("b", None), _key("c", "text")])
        uow.commit()
    assert _stored(rt) == {"a": {"result_code": 0, "credits": [1, 2]}, "b": None, "c": "text"}


def test_a_failed_write_rolls_everything_back_and_the_connection_stays_usable(
    rt: Runtime,
) -> None:
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), _key("taken", {}))

    def write_both() -> None:
        with UnitOfWork(rt) as uow:
            uow.write(insert(_k), _key("new", {}))
            uow.write(insert(_k), _key("taken", {}))  # the primary key is taken
            uow.commit()

    with pytest.raises(IntegrityError):
        write_both()
    assert _stored(rt) == {"taken": {}}
    # Every pooled connection is back in a clean state: a pipeline failure once left
    # its transaction aborted while SQLAlchemy believed it had ended.
    for _ in range(rt.settings.db_pool_size + 1):
        with rt.engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(_k)).scalar_one() == 1


def test_hot_reads_give_named_rows_and_utc_datetimes(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), _key("a", {"x": 1}))
        rows = hot.fetch(
            conn,
            select(_k.c.request_id, _k.c.response, _k.c.created_at).where(
                _k.c.scope == bindparam("scope")
            ),
            {"scope": "test"},
        )
    assert [(row.request_id, row.response) for row in rows] == [("a", {"x": 1})]
    assert rows[0].created_at.utcoffset() == UTC.utcoffset(None)


def test_a_connection_cut_while_idle_is_replaced_before_use(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no server to cut the connection")
    engine = db_engine.make_engine(
        rt.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    )
    try:
        with engine.connect() as conn:
            pid = conn.execute(select(func.pg_backend_pid())).scalar_one()
        _cut(rt, pid)
        monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_S", 0.0)
        with engine.connect() as conn:
            assert conn.execute(select(func.pg_backend_pid())).scalar_one() != pid
    finally:
        engine.dispose()


def _on_a_keeping_thread(work: Any) -> Any:
    """``work()`` on a new thread that keeps its connection between transactions; the
    connection goes back to the pool afterwards."""
    keeper = KeptConnections()
    with ThreadPoolExecutor(1, initializer=keeper.keep_on_this_thread) as pool:
        answer = pool.submit(work).result()
    keeper.release()
    return answer


def _backend(conn: Any) -> int:
    return int(conn.execute(select(func.pg_backend_pid())).scalar_one())


def test_a_keeping_thread_runs_its_transactions_on_one_connection_other_threads_do_not(
    rt: Runtime,
) -> None:
    def three_transactions() -> list[int]:
        seen = []
        for _ in range(3):
            with UnitOfWork(rt) as uow:
                seen.append(id(uow.conn.connection.dbapi_connection))
                uow.write(insert(_k), _key(f"k{len(seen)}", {}))
                uow.commit()
        return seen

    kept = _on_a_keeping_thread(three_transactions)
    assert len(set(kept)) == 1
    assert set(_stored(rt)) == {"k1", "k2", "k3"}  # each transaction committed
    assert rt.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    with UnitOfWork(rt):  # on a thread that keeps nothing
        assert rt.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    assert rt.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_kept_connection_cut_while_idle_is_replaced_before_use(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no server to cut the connection")

    def cut_then_use() -> tuple[int, int]:
        with UnitOfWork(rt) as uow:
            first = _backend(uow.conn)
        _cut(rt, first)
        monkeypatch.setattr(uow_module, "PING_AFTER_IDLE_S", 0.0)
        with UnitOfWork(rt) as uow:
            return first, _backend(uow.conn)

    first, then = _on_a_keeping_thread(cut_then_use)
    assert first != then


def test_a_kept_connection_lost_in_a_transaction_is_replaced_for_the_next(rt: Runtime) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no server to cut the connection")

    first = 0

    def lose() -> None:
        nonlocal first
        with UnitOfWork(rt) as uow:
            first = _backend(uow.conn)
            _cut(rt, first)
            _backend(uow.conn)

    def lose_then_use() -> tuple[int, int]:
        with pytest.raises(OperationalError):
            lose()
        with UnitOfWork(rt) as uow:
            return first, _backend(uow.conn)

    first, then = _on_a_keeping_thread(lose_then_use)
    assert first != then


def test_a_connection_lost_before_the_commit_raises_the_database_error(rt: Runtime) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no server to cut the connection")

    def write_after_the_server_went() -> None:
        with UnitOfWork(rt) as uow:
            pid = uow.conn.execute(select(func.pg_backend_pid())).scalar_one()
            _cut(rt, pid)
            uow.write(insert(_k), _key("lost", {}))
            uow.commit()

    # SQLAlchemy's error, which tells the pool to drop the connection; not a second
    # error from rolling back on a closed connection.
    with pytest.raises(OperationalError):
        write_after_the_server_went()
    with rt.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(_k)).scalar_one() == 0


def test_hot_statements_raise_sqlalchemy_errors(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), _key("taken", {}))

    def insert_again() -> None:
        with rt.engine.begin() as conn:
            hot.run(conn, insert(_k), _key("taken", {}))

    with pytest.raises(IntegrityError):
        insert_again()
    assert _stored(rt) == {"taken": {}}


def test_a_lost_connection_on_a_hot_read_is_dropped_from_the_pool(rt: Runtime) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no server to cut the connection")
    engine = db_engine.make_engine(
        rt.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    )
    query = select(func.pg_backend_pid().label("pid")).where(_k.c.scope == bindparam("scope"))

    def read_after_the_server_went() -> int:
        with engine.begin() as conn:
            pid = conn.execute(select(func.pg_backend_pid())).scalar_one()
            _cut(rt, pid)
            hot.fetch(conn, query, {"scope": "none"})
            return int(pid)

    try:
        with pytest.raises(OperationalError) as lost:
            read_after_the_server_went()
        assert lost.value.connection_invalidated
        with engine.begin() as conn:  # a new connection, not the broken one again
            assert hot.fetch(conn, query, {"scope": "none"}) == []
    finally:
        engine.dispose()


def test_hot_reads_are_utc_whatever_the_server_time_zone(rt: Runtime) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite stores no time zone")
    tokyo = db_engine.make_engine(rt.settings, connect_args={"options": "-c TimeZone=Asia/Tokyo"})
    try:
        with tokyo.begin() as conn:
            hot.run(conn, insert(_k), _key("a", {}))
            rows = hot.fetch(conn, select(_k.c.created_at), {})
        assert rows[0].created_at.utcoffset() == UTC.utcoffset(None)
    finally:
        tokyo.dispose()


def test_writes_held_for_the_commit_go_out_before_any_other_statement(rt: Runtime) -> None:
    scope_count = select(func.count()).select_from(_k).where(_k.c.scope == bindparam("scope"))
    with UnitOfWork(rt) as uow:
        uow.write(insert(_k), _key("first", {}))
        # SQLAlchemy's own statement, then a hot read: each sees the writes before it.
        assert uow.conn.execute(scope_count, {"scope": "test"}).scalar_one() == 1
        uow.write(insert(_k), _key("second", {}))
        assert uow.fetch(scope_count, {"scope": "test"})[0][0] == 2
        uow.write(insert(_k), _key("third", {}))
        uow.commit()
    assert set(_stored(rt)) == {"first", "second", "third"}


def test_a_hot_statement_that_opens_the_transaction_is_inside_it(rt: Runtime) -> None:
    # On PostgreSQL the first statement goes out in one round trip with its BEGIN.
    with rt.engine.connect() as conn:
        hot.run(conn, insert(_k), _key("undone", {}))
        conn.rollback()
        hot.fetch(conn, select(_k.c.request_id), {})
        hot.run(conn, insert(_k), _key("kept", {}))
        conn.commit()
    assert set(_stored(rt)) == {"kept"}


def test_one_statement_takes_values_of_different_postgresql_types(rt: Runtime) -> None:
    # psycopg sends a small int as int2 and a large one as int8: prepared once for each.
    query = select(bindparam("n", type_=t.vouchers.c.serial.type).label("n"))
    with rt.engine.begin() as conn:
        got = [hot.fetch(conn, query, {"n": n})[0].n for n in (1, 70_000, 10**12, None, 2)]
    assert got == [1, 70_000, 10**12, None, 2]


def test_hot_statements_are_prepared_again_after_the_server_forgot_them(rt: Runtime) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no prepared statements to forget")
    engine = db_engine.make_engine(
        rt.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    )
    query = select(_k.c.request_id).where(_k.c.scope == bindparam("scope"))
    try:
        with engine.begin() as conn:
            assert hot.fetch(conn, query, {"scope": "none"}) == []
        with engine.connect() as conn:
            conn.exec_driver_sql("DEALLOCATE ALL")  # as DISCARD ALL or a pooler would
            conn.commit()
        # The first use after that fails (its transaction is spoiled), the next prepares.
        with pytest.raises(ProgrammingError), engine.begin() as conn:
            hot.fetch(conn, query, {"scope": "none"})
        with engine.begin() as conn:
            assert hot.fetch(conn, query, {"scope": "none"}) == []
    finally:
        engine.dispose()


def test_statements_fetched_together_run_in_order(rt: Runtime) -> None:
    by_id = _k.c.request_id == bindparam("rid")
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), _key("a", {}))
        changed, read = hot.fetch_together(
            conn,
            [
                (
                    update(_k).where(by_id).values(status_code=201).returning(_k.c.request_id),
                    {"rid": "a"},
                ),
                (select(_k.c.status_code).where(by_id), {"rid": "a"}),
            ],
        )
    assert [row.request_id for row in changed] == ["a"]
    assert [row.status_code for row in read] == [201]


_SET_STATUS = (
    update(_k)
    .where(_k.c.request_id == bindparam("rid"))
    .values(status_code=bindparam("status"))
    .returning(_k.c.request_id)
)
_STATUS = select(_k.c.status_code).where(_k.c.request_id == bindparam("rid"))


def test_a_statement_sent_ahead_goes_with_the_next_round_trip_before_its_statements(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), [_key("a", {}), _key("b", {})])
    round_trips: list[int] = []
    pipeline = hot._pipeline
    monkeypatch.setattr(
        hot,
        "_pipeline",
        lambda conn, session, statements, **kw: (
            round_trips.append(len(statements)) or pipeline(conn, session, statements, **kw)
        ),
    )
    with rt.engine.begin() as conn:
        conn.execute(select(1))
        changed = hot.ahead(conn, _SET_STATUS, {"rid": "a", "status": 201})
        missed = hot.ahead(conn, _SET_STATUS, {"rid": "nope", "status": 201})
        # The read after them sees what they changed, in the same round trip.
        assert [row.status_code for row in hot.fetch(conn, _STATUS, {"rid": "a"})] == [201]
        assert [row.request_id for row in changed.rows()] == ["a"]
        assert missed.rows() == []
        # Alone, it goes when its rows are wanted.
        alone = hot.ahead(conn, _SET_STATUS, {"rid": "b", "status": 202})
        assert [row.request_id for row in alone.rows()] == ["b"]
    if rt.engine.dialect.name == "postgresql":
        assert round_trips == [3, 1]
    assert {row.request_id: row.status_code for row in _all(rt)} == {"a": 201, "b": 202}


def test_a_statement_sent_ahead_never_outlives_its_transaction(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), _key("a", {}))
    with rt.engine.connect() as conn:
        conn.begin()
        dropped = hot.ahead(conn, _SET_STATUS, {"rid": "a", "status": 500})
        conn.rollback()
        # The next transaction on this connection does not run it.
        conn.execute(select(1))
        assert hot.fetch(conn, _STATUS, {"rid": "a"})[0].status_code == 200
        conn.commit()
    if rt.engine.dialect.name == "postgresql":  # SQLite ran it at once (and rolled it back)
        with pytest.raises(RuntimeError, match="failed"):
            dropped.rows()
    assert [row.status_code for row in _all(rt)] == [200]


def test_the_error_of_a_statement_sent_ahead_is_raised_by_the_call_that_sends_it(
    rt: Runtime,
) -> None:
    with rt.engine.begin() as conn:
        hot.run(conn, insert(_k), [_key("a", {}), _key("b", {})])
    renamed = update(_k).where(_k.c.request_id == "b").values(request_id="a").returning(_k.c.scope)

    def rename_then_read() -> None:
        with rt.engine.begin() as conn:
            hot.ahead(conn, renamed, {})  # (SQLite: raises here)
            hot.fetch(conn, _STATUS, {"rid": "a"})

    with pytest.raises(IntegrityError):
        rename_then_read()
    assert sorted(row.request_id for row in _all(rt)) == ["a", "b"]


def _all(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(_k.c.request_id, _k.c.status_code)))
