"""Redemptions credited by an external charging system: UCIP against a real XML-RPC IN,
the signed HTTP engine against a real HTTP server; timeouts, dropped replies, error
codes, a server down, the circuit breaker and the settlement job."""

import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests import factories
from tests.charging_support import (
    VOUCHER_VALUE,
    HttpChargingSystem,
    InSimulator,
    external_catalog,
)
from voms.config import Settings
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.runtime import Runtime
from voms.services import catalog, housekeeping, redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

MSISDN = "254711000001"
STRANGER = "254711999999"


@pytest.fixture
def settings(database_url: str, keys_file: Path) -> Settings:
    return Settings(
        database_url=database_url,
        keys_file=keys_file,
        charging_breaker_failures=3,
        charging_breaker_reset_s=1.0,
    )


@pytest.fixture
def sim() -> Iterator[InSimulator]:
    # Generous timeouts: a test machine under load must not turn an answer into a timeout.
    simulator = InSimulator(slow_s=2.5)
    simulator.add_subscriber(MSISDN)
    yield simulator
    simulator.stop()
    assert simulator.violations == []


@pytest.fixture
def pins(rt: Runtime, sim: InSimulator) -> list[tuple[str, str]]:
    external_catalog(rt, {"engine": "ucip", "url": sim.url, "timeout_ms": 1500})
    return factories.active_batch(rt, "IN10", count=6)


def redeem(rt: Runtime, pin: str, msisdn: str = MSISDN, **fields: Any) -> dict[str, Any]:
    return redemption.redeem(
        rt, CONSOLE, RedemptionRequest(msisdn=msisdn, pin=pin, channel="ussd", **fields)
    )


def code_of(rt: Runtime, pin: str, msisdn: str = MSISDN, **fields: Any) -> int:
    try:
        redeem(rt, pin, msisdn, **fields)
    except ResultError as error:
        return error.result.code
    return 0


def voucher_state(rt: Runtime, serial: str) -> str:
    with rt.engine.connect() as conn:
        return str(
            conn.execute(
                select(t.vouchers.c.state).where(t.vouchers.c.serial == int(serial))
            ).scalar_one()
        )


def charges(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(t.charges).order_by(t.charges.c.created_at)).all())


def settle(rt: Runtime) -> dict[str, Any]:
    return housekeeping.run_job(
        rt, CONSOLE, "charging_settlement", now=utcnow() + timedelta(hours=1)
    )


def test_a_redemption_credits_the_in_once_and_redeems_the_voucher(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    answer = redeem(rt, pin)
    assert answer["result_code"] == 0
    assert answer["serial"] == serial
    assert answer["voucher_type"] == "IN10"
    assert answer["credits"] == [
        {
            "balance_type": "CASH",
            "amount": 1000,
            "balance": 1000,
            "expires_at": answer["credits"][0]["expires_at"],
        },
        {"balance_type": "SMS", "amount": 10, "balance": 10, "expires_at": None},
    ]
    assert answer["account_expires_at"].startswith("2027-01-31")  # 2027-01-01 + 30 days
    assert "pin" not in str(answer).lower()
    assert voucher_state(rt, serial) == "redeemed"
    assert sim.total() == VOUCHER_VALUE
    assert sim.main[MSISDN] == 1000
    assert sim.dedicated[MSISDN] == {7: 10}
    (charge,) = charges(rt)
    assert (charge.state, charge.result_code, charge.tries) == ("credited", 0, 1)
    assert charge.settled_transaction_id == answer["transaction_id"]
    assert [applied[0] for applied in sim.applied] == [charge.id]
    # The voucher is gone: a second attempt never reaches the IN.
    assert code_of(rt, pin) == 2009
    assert sim.total() == VOUCHER_VALUE


def test_a_subscriber_unknown_to_the_in_gives_5001_and_the_voucher_stays_active(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    assert code_of(rt, pin, STRANGER) == 5001
    assert voucher_state(rt, serial) == "available"
    (charge,) = charges(rt)
    assert charge.state == "refused"
    # The number may be a PIN typed into the wrong field: it is kept masked.
    assert (charge.msisdn, charge.recipient_msisdn) == ("**********99", "**********99")
    assert STRANGER not in str(charge.refill)
    with rt.engine.connect() as conn:
        recorded = conn.execute(
            select(t.transactions.c.msisdn, t.transactions.c.recipient_msisdn)
        ).one()
    assert tuple(recorded) == ("**********99", "**********99")
    assert code_of(rt, pin) == 0
    assert sim.total() == VOUCHER_VALUE


def test_an_in_error_code_gives_3000_and_the_voucher_stays_active(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    sim.fault = "error"
    assert code_of(rt, pin) == 3000
    assert voucher_state(rt, serial) == "available"
    assert sim.total() == 0
    assert code_of(rt, pin) == 0


@pytest.mark.parametrize("fault", ["drop", "slow"])
def test_an_unknown_outcome_gives_5009_and_the_job_settles_it_with_the_same_id(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]], fault: str
) -> None:
    assert code_of(rt, pins[-1][1]) == 0  # (the IN has credited this subscriber before)
    serial, pin = pins[0]
    sim.fault = fault
    assert code_of(rt, pin) == 5009
    assert voucher_state(rt, serial) == "reserved"
    charge = charges(rt)[-1]
    assert charge.state == "unknown"
    # Until it is settled the voucher cannot be used again, nor credited twice.
    assert code_of(rt, pin) == 2010
    sim.wait_idle()
    assert sim.total() == 2 * VOUCHER_VALUE  # the IN applied it: only the reply was lost
    run = settle(rt)
    assert (run["outcome"], run["rows_affected"]) == ("succeeded", 1)
    assert voucher_state(rt, serial) == "redeemed"
    charge = charges(rt)[-1]
    assert (charge.state, charge.tries) == ("credited", 2)
    assert sim.total() == 2 * VOUCHER_VALUE
    assert len(sim.applied) == 2
    assert sim.refill_calls == 3  # the same originTransactionID, answered from memory
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(t.transactions.c.result_code, t.transactions.c.kind)
            .where(t.transactions.c.serial == int(serial))
            .order_by(t.transactions.c.at)
        ).all()
    assert sorted(tuple(row) for row in rows) == [
        (0, "redemption"),
        (2010, "redemption"),
        (5009, "redemption"),
    ]


def test_an_unknown_outcome_the_in_never_applied_ends_with_the_voucher_active(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    sim.fault = "error_dropped"
    assert code_of(rt, pin) == 5009  # (the IN refused it, but the reply was lost)
    assert voucher_state(rt, serial) == "reserved"
    settle(rt)
    assert voucher_state(rt, serial) == "available"
    assert charges(rt)[0].state == "refused"
    assert charges(rt)[0].result_code == 3000
    assert sim.total() == 0
    assert code_of(rt, pin) == 0


def test_the_job_retries_while_the_in_is_down_and_settles_once_it_is_back(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    sim.fault = "drop"
    assert code_of(rt, pin) == 5009
    sim.down()
    settle(rt)
    (charge,) = charges(rt)
    assert (charge.state, charge.tries) == ("unknown", 2)
    assert voucher_state(rt, serial) == "reserved"
    sim.up()
    time.sleep(1.1)  # the circuit may have opened: wait for its trial
    settle(rt)
    assert voucher_state(rt, serial) == "redeemed"
    assert sim.total() == VOUCHER_VALUE


def test_a_server_down_gives_5009_and_leaves_the_voucher_active(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    sim.down()
    assert code_of(rt, pin) == 5009
    assert voucher_state(rt, serial) == "available"  # nothing was sent: nothing to settle
    assert charges(rt)[0].state == "refused"
    sim.up()
    assert code_of(rt, pin) == 0
    assert sim.total() == VOUCHER_VALUE


def test_the_circuit_opens_after_failures_and_refuses_without_calling_the_in(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    for _, pin in pins[:3]:
        sim.fault = "slow"
        assert code_of(rt, pin) == 5009  # after the engine's timeout, not the IN's answer
    calls = sim.refill_calls
    serial, pin = pins[3]
    assert code_of(rt, pin) == 5009  # refused at once: the IN is not even asked
    assert sim.refill_calls == calls
    assert voucher_state(rt, serial) == "available"  # not even reserved
    assert len(charges(rt)) == 3
    time.sleep(1.1)  # the circuit lets a trial call through
    assert code_of(rt, pin) == 0
    assert code_of(rt, pins[4][1]) == 0
    sim.wait_idle()
    settle(rt)
    assert sim.total() == 5 * VOUCHER_VALUE
    assert {c.state for c in charges(rt)} == {"credited"}


def test_a_request_id_gets_its_first_answer_again(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    sim.fault = "drop"
    assert code_of(rt, pin, request_id="r-1") == 5009
    settle(rt)
    assert voucher_state(rt, serial) == "redeemed"
    assert code_of(rt, pin, request_id="r-1") == 5009
    _, other = pins[1]
    first = redeem(rt, other, request_id="r-2")
    assert redeem(rt, other, request_id="r-2") == first
    assert sim.total() == 2 * VOUCHER_VALUE


def test_concurrent_redemptions_against_a_faulty_in_credit_each_voucher_once(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    rng = random.Random(18)
    lock = threading.Lock()

    def chaos() -> str | None:
        with lock:
            return rng.choice([None, None, None, "drop", "error", "error_dropped"])

    sim.chaos = chaos
    for index in range(3):
        sim.add_subscriber(f"25471100010{index}")
    codes: list[int] = []

    def redeem_all(who: int) -> None:
        order = list(pins)
        random.Random(who).shuffle(order)
        for _, pin in order:
            codes.append(code_of(rt, pin, f"25471100010{who % 3}"))

    threads = [threading.Thread(target=redeem_all, args=(who,)) for who in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sim.chaos = None
    sim.wait_idle()
    settle(rt)
    assert codes.count(0) <= len(pins)
    assert set(codes) <= {0, 2009, 2010, 3000, 5001, 5009}
    with rt.engine.connect() as conn:
        redeemed = (
            conn.execute(select(t.vouchers.c.serial).where(t.vouchers.c.state == "redeemed"))
            .scalars()
            .all()
        )
        states = set(conn.execute(select(t.vouchers.c.state)).scalars())
    assert states <= {"available", "redeemed"}
    assert sim.total() == len(redeemed) * VOUCHER_VALUE
    assert len(sim.applied) == len(redeemed)
    assert len(redeemed) >= codes.count(0)


def test_a_builtin_provider_is_not_affected(
    rt: Runtime, sim: InSimulator, pins: list[tuple[str, str]]
) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    ((_, pin),) = factories.active_batch(rt, count=1)
    assert redeem(rt, pin)["credits"][0]["balance"] == 1000
    assert sim.refill_calls == 0
    assert charges(rt) == []


# --- the signed HTTP engine --------------------------------------------------------------


@pytest.fixture
def http_system(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpChargingSystem]:
    monkeypatch.setenv("VOMS_TEST_CHARGING_SECRET", "s3cret-shared")
    system = HttpChargingSystem("s3cret-shared")
    system.balances[MSISDN] = {}
    yield system
    system.stop()


def test_the_http_engine_signs_its_calls_and_checks_the_replies(
    rt: Runtime, http_system: HttpChargingSystem
) -> None:
    external_catalog(
        rt,
        {"engine": "http", "url": http_system.url, "secret": "env:VOMS_TEST_CHARGING_SECRET"},
    )
    (_, p1), (s2, p2), (s3, p3) = factories.active_batch(rt, "IN10", count=3)
    answer = redeem(rt, p1)
    assert [c["balance"] for c in answer["credits"]] == [1000, 10]
    assert answer["account_expires_at"].startswith("2027-01-31")
    assert http_system.bad_signatures == 0
    (request,) = http_system.requests
    assert request["type"] == "credit"
    assert request["msisdn"] == MSISDN
    assert [(c["external_id"], c["amount"]) for c in request["credits"]] == [
        ("main", 1000),
        ("7", 10),
    ]
    assert code_of(rt, p2, STRANGER) == 5001
    assert voucher_state(rt, s2) == "available"
    # A reply signed with another key is no answer: the outcome is unknown until a
    # correctly signed one comes.
    http_system.forge = True
    assert code_of(rt, p3) == 5009
    assert voucher_state(rt, s3) == "reserved"
    http_system.forge = False
    settle(rt)
    assert voucher_state(rt, s3) == "redeemed"
    assert http_system.balances[MSISDN] == {"main": 2000, "7": 20}
    assert http_system.bad_signatures == 0


def test_with_a_wrong_secret_nothing_is_credited_until_the_right_one_is_named(
    rt: Runtime, http_system: HttpChargingSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOMS_TEST_WRONG_SECRET", "not-the-secret")
    external_catalog(
        rt, {"engine": "http", "url": http_system.url, "secret": "env:VOMS_TEST_WRONG_SECRET"}
    )
    ((serial, pin),) = factories.active_batch(rt, "IN10", count=1)
    # The charging system refuses the call, but its refusal cannot be told from a forged
    # one under our secret: no answer, and the voucher waits.
    assert code_of(rt, pin) == 5009
    assert http_system.bad_signatures == 1
    assert voucher_state(rt, serial) == "reserved"
    assert http_system.balances[MSISDN] == {}
    catalog.update_service_provider(
        rt,
        CONSOLE,
        "INOP",
        catalog.ServiceProviderUpdate.model_validate(
            {
                "billing": {
                    "engine": "http",
                    "url": http_system.url,
                    "secret": "env:VOMS_TEST_CHARGING_SECRET",
                }
            }
        ),
    )
    settle(rt)
    assert voucher_state(rt, serial) == "redeemed"
    assert http_system.balances[MSISDN] == {"main": 1000, "7": 10}
