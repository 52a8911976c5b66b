"""OpenVoMS behind a real PgBouncer in transaction mode (Debian's, 1.18: it does not
carry prepared statements between server connections).

Many client connections share two server connections, so consecutive transactions of
one client run on different server connections. With VOMS_DB_PREPARED_STATEMENTS=false
redemptions (the hot path) and the rest work; with the default, the hot path's
statements prepared on one server connection are missing on the next.
"""

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tests import factories
from tests.conftest import _empty_postgres
from tests.ha.cluster import PgBouncer
from voms.config import Settings
from voms.db import tables as t
from voms.domain.errors import ResultError
from voms.runtime import Runtime, build_runtime
from voms.services import care, redemption, verify
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest
from voms.services.uow import KeptConnections

BOUNCER_PORT = 5580
THREADS = 6  # each keeps a client connection, as the server's redemption threads do
SUBSCRIBERS = [f"25473000{n:04d}" for n in range(THREADS)]


@pytest.fixture
def bouncer_url(postgres_url: str) -> Iterator[str]:
    _empty_postgres(postgres_url)
    url = make_url(postgres_url)
    bouncer = PgBouncer(url.host or "127.0.0.1", url.port or 5432, BOUNCER_PORT, pool_size=2)
    bouncer.start()
    try:
        yield url.set(host="127.0.0.1", port=BOUNCER_PORT).render_as_string(hide_password=False)
    finally:
        bouncer.stop()


def _runtime(url: str, keys: Path, *, prepared: bool) -> Runtime:
    return build_runtime(
        Settings(database_url=url, keys_file=keys, db_prepared_statements=prepared)
    )


def _redeem_all(rt: Runtime, pins: list[tuple[str, str]]) -> list[int | str]:
    """Redeem on THREADS threads keeping their connections; result codes or errors."""
    keeper = KeptConnections()
    number = iter(range(len(pins)))
    lock = threading.Lock()

    def one(pin: str) -> int | str:
        with lock:
            msisdn = SUBSCRIBERS[next(number) % THREADS]
        try:
            answer = redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=msisdn, pin=pin))
        except ResultError as refused:
            return refused.result.code
        except Exception as exc:
            return exc.__class__.__name__
        return int(answer["result_code"])

    with ThreadPoolExecutor(THREADS, initializer=keeper.keep_on_this_thread) as pool:
        results = list(pool.map(one, [pin for _, pin in pins]))
    keeper.release()
    return results


def _catalog(url: str, keys: Path) -> Runtime:
    rt = factories.new_installation(url, keys)
    factories.standard_catalog(rt)
    for msisdn in SUBSCRIBERS:
        factories.subscriber(rt, msisdn)
    return rt


@pytest.mark.postgres
def test_redemptions_work_behind_pgbouncer_in_transaction_mode_without_prepared_statements(
    bouncer_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "voms-keys.json"
    setup = _catalog(bouncer_url, keys)  # migrations and the catalog through PgBouncer too
    pins = factories.active_batch(setup, count=120)
    setup.engine.dispose()
    rt = _runtime(bouncer_url, keys, prepared=False)
    try:
        assert _redeem_all(rt, pins) == [0] * len(pins)
        # A second redemption of each is refused as such (2009, already redeemed), not by an error.
        assert set(_redeem_all(rt, pins[:12])) == {2009}
        found = care.voucher_by_serial(rt, CONSOLE, pins[0][0])
        assert found["state"] == "redeemed"
        with rt.engine.connect() as conn:
            total = conn.execute(select(func.sum(t.balances.c.amount))).scalar_one()
        assert total == len(pins) * 1000
        assert verify.verify(rt).ok
    finally:
        rt.engine.dispose()


@pytest.mark.postgres
def test_prepared_statements_break_behind_pgbouncer_in_transaction_mode(
    bouncer_url: str, tmp_path: Path
) -> None:
    """Why the setting exists: the default fails behind this pooler."""
    keys = tmp_path / "voms-keys.json"
    setup = _catalog(bouncer_url, keys)
    pins = factories.active_batch(setup, count=120)
    setup.engine.dispose()
    rt = _runtime(bouncer_url, keys, prepared=True)
    try:
        results = _redeem_all(rt, pins)
    finally:
        rt.engine.dispose()
    failed = [result for result in results if result != 0]
    print(f"\n{len(failed)} of {len(results)} redemptions failed: {sorted(set(map(str, failed)))}")
    assert failed, results
