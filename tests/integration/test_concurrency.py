"""Correctness under fire: concurrent redemptions on SQLite and PostgreSQL."""

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from tests import factories
from voms.config import Settings
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.runtime import Runtime, build_runtime
from voms.services import redemption, verify, wallet
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

ROUNDS = 20
THREADS = 32


@pytest.fixture
def busy_rt(settings: Settings) -> Iterator[Runtime]:
    """A runtime with a connection for every thread, so that all really run at once."""
    runtime = build_runtime(settings.model_copy(update={"db_pool_size": THREADS + 2}))
    yield runtime
    runtime.engine.dispose()


def at_once(count: int, attempt: Callable[[int], int]) -> list[int]:
    """Run ``attempt(i)`` in ``count`` threads released together; their result codes."""
    barrier = threading.Barrier(count)

    def run(index: int) -> int:
        barrier.wait()
        return attempt(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def redeem_code(rt: Runtime, msisdn: str, pin: str) -> int:
    try:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=msisdn, pin=pin))
    except ResultError as error:
        return error.result.code
    return 0


def test_32_concurrent_redemptions_of_one_pin_give_exactly_one_success(busy_rt: Runtime) -> None:
    rt = busy_rt
    factories.standard_catalog(rt)
    msisdns = [f"2547{index:08d}" for index in range(THREADS)]
    for msisdn in msisdns:  # one wallet each: only the voucher's update can arbitrate
        factories.subscriber(rt, msisdn)
    for _, pin in factories.active_batch(rt, count=ROUNDS):
        codes = at_once(THREADS, lambda i, pin=pin: redeem_code(rt, msisdns[i], pin))
        assert Counter(codes) == {0: 1, 2009: THREADS - 1}
    with rt.engine.connect() as conn:
        ledger_rows = conn.execute(select(func.count()).select_from(t.ledger)).scalar_one()
        credited = conn.execute(select(func.sum(t.balances.c.amount))).scalar_one()
    assert ledger_rows == ROUNDS
    assert credited == ROUNDS * 1000
    assert verify.verify(rt).problems == []


def test_20_concurrent_redemptions_into_one_wallet_are_all_credited(busy_rt: Runtime) -> None:
    rt = busy_rt
    factories.standard_catalog(rt)
    factories.subscriber(rt, "254700000001")
    pins = [pin for _, pin in factories.active_batch(rt, count=20)]
    before = utcnow()
    codes = at_once(20, lambda i: redeem_code(rt, "254700000001", pins[i]))
    after = utcnow()
    assert codes == [0] * 20
    account = wallet.get_subscriber(rt, CONSOLE, "254700000001")
    assert account["balances"][0]["amount"] == 20 * 1000
    # No extension lost: 20 x 60 days of account, 20 x 30 days of balance.
    expires: datetime = account["account_expires_at"]
    assert before + timedelta(days=1200) <= expires <= after + timedelta(days=1200)
    balance_expires: datetime = account["balances"][0]["expires_at"]
    assert before + timedelta(days=600) <= balance_expires <= after + timedelta(days=600)
    assert verify.verify(rt).problems == []


def test_concurrent_retries_with_one_request_id_all_get_the_one_success(busy_rt: Runtime) -> None:
    rt = busy_rt
    factories.standard_catalog(rt)
    factories.subscriber(rt, "254700000001")
    [(_, pin)] = factories.active_batch(rt, count=1)
    answers: list[dict[str, Any]] = []

    def retry(_: int) -> int:
        answer = redemption.redeem(
            rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin, request_id="same")
        )
        answers.append(answer)
        return int(answer["result_code"])

    assert at_once(8, retry) == [0] * 8
    assert len({answer["transaction_id"] for answer in answers}) == 1
    assert wallet.get_subscriber(rt, CONSOLE, "254700000001")["balances"][0]["amount"] == 1000
