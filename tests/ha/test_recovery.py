"""How a process gets over a lost database server, piece by piece, on the PostgreSQL of
the rest of the suite: kept connections are replaced after a loss, and a host that
accepts connections but never answers holds nobody up past VOMS_DB_POOL_TIMEOUT_S.
"""

import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tests import factories
from tests.conftest import PG_ADMIN_URL, _empty_postgres
from voms.config import Settings
from voms.db.engine import make_engine
from voms.services import redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest
from voms.services.uow import KeptConnections

MSISDN = "254740000001"


class KeepingThread:
    """A thread that keeps its connection between calls, as a redemption thread does."""

    def __init__(self, keeper: KeptConnections) -> None:
        self._work: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._done: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(keeper,), daemon=True)
        self._thread.start()

    def _run(self, keeper: KeptConnections) -> None:
        keeper.keep_on_this_thread()
        while (job := self._work.get()) is not None:
            try:
                self._done.put((True, job()))
            except Exception as exc:
                self._done.put((False, exc))

    def call(self, job: Callable[[], Any]) -> tuple[bool, Any]:
        self._work.put(job)
        return self._done.get(timeout=30)

    def stop(self) -> None:
        self._work.put(None)
        self._thread.join(10)


@pytest.mark.postgres
def test_a_lost_connection_replaces_the_connections_other_threads_keep(
    postgres_url: str, tmp_path: Path
) -> None:
    _empty_postgres(postgres_url)
    rt = factories.new_installation(postgres_url, tmp_path / "voms-keys.json")
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    pins = [pin for _, pin in factories.active_batch(rt, count=4)]
    keeper = KeptConnections()
    first, second = KeepingThread(keeper), KeepingThread(keeper)

    def redeem(pin: str) -> Callable[[], int]:
        request = RedemptionRequest(msisdn=MSISDN, pin=pin)
        return lambda: int(redemption.redeem(rt, CONSOLE, request)["result_code"])

    try:
        assert first.call(redeem(pins[0])) == (True, 0)  # each keeps a connection now
        assert second.call(redeem(pins[1])) == (True, 0)
        database = make_url(postgres_url).database
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:  # the server "fails"
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        # The first thread's call meets its dead connection: an error (the API's 3000).
        ok, error = first.call(redeem(pins[2]))
        assert not ok
        assert isinstance(error, DBAPIError), error
        # The second thread's kept connection, as dead and used a moment ago, is not
        # tried: it was made before the loss, and is replaced before its call.
        assert second.call(redeem(pins[2])) == (True, 0)
        assert second.call(redeem(pins[3])) == (True, 0)
    finally:
        first.stop()
        second.stop()
        keeper.release()
        rt.engine.dispose()


@pytest.mark.postgres
def test_a_host_that_never_answers_is_given_up_within_the_pool_timeout(
    postgres_url: str,
) -> None:
    silent = socket.socket()  # the kernel accepts connections; nothing ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    url = make_url(postgres_url)
    multi_host = (
        f"postgresql://{url.username}@/{url.database}"
        f"?host=127.0.0.1:{port}&host={url.host}:{url.port}&target_session_attrs=read-write"
    )
    engine = make_engine(Settings(database_url=multi_host, db_pool_timeout_s=3))
    outcome: list[Any] = []

    def connect() -> None:
        started = time.monotonic()
        with engine.connect() as conn:
            outcome.append(conn.execute(text("SELECT 1")).scalar_one())
        outcome.append(time.monotonic() - started)

    try:
        worker = threading.Thread(target=connect, daemon=True)
        worker.start()
        worker.join(15)
        assert not worker.is_alive(), "connecting hangs on the silent host"
        one, elapsed = outcome
        assert one == 1  # the next host of the URL, once the silent one was given up
        assert 1.5 <= elapsed <= 3 + 1.5, elapsed
    finally:
        engine.dispose()
        silent.close()
