"""The redemption's rules on a fake unit of work and an in-memory wallet: no database.

Precedence of the checks, scenario choice, product types and balance limits, as the
services decide them; the integration tests run the same calls on SQLite and PostgreSQL.
"""

from datetime import timedelta
from typing import Any

import pytest

from tests.fakes import (
    CASH,
    DATA,
    NOW,
    POSTPAID,
    PREPAID,
    FakeUnitOfWork,
    Shop,
    scenario,
    voucher_type,
)
from voms.domain.catalog import Credit
from voms.domain.errors import ResultError
from voms.domain.pins import with_check_digit
from voms.domain.roles import Permission, Role
from voms.domain.states import BatchState, VoucherState
from voms.services import redemption
from voms.services.auth import Principal
from voms.services.redemption import RechargeRequest, RedemptionRequest, attempts

CHANNEL = Principal(name="test", role=Role.CHANNEL)
# Recharging by voucher type is a right given to a key (issue 14), not the channel role's.
RECHARGER = Principal(
    name="test", role=Role.CHANNEL, allowed=frozenset({Permission.VOUCHER_TYPE_RECHARGE})
)
PIN = with_check_digit("1234567890123")
ALICE, BOB = "254700000001", "254700000002"


@pytest.fixture(autouse=True)
def _no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attempts, "UnitOfWork", FakeUnitOfWork)


def _code(call: Any) -> int:
    try:
        return int(call()["result_code"])
    except ResultError as error:
        return error.result.code


def _redeem(shop: Shop, **fields: Any) -> Any:
    body = {"msisdn": ALICE, "pin": PIN, **fields}
    return lambda: redemption.redeem(shop.rt, CHANNEL, RedemptionRequest(**body))


def _recharge(shop: Shop, **fields: Any) -> Any:
    body = {"msisdn": ALICE, "voucher_type": "GOLD", **fields}
    return lambda: redemption.recharge(shop.rt, RECHARGER, RechargeRequest(**body))


def test_a_redemption_takes_the_voucher_credits_the_wallet_and_records_the_attempt() -> None:
    shop = Shop()
    shop.subscriber(ALICE)
    shop.voucher(PIN, 1001)
    answer = _redeem(shop)()
    assert answer["result_code"] == 0
    assert answer["credits"] == [
        {"balance_type": "CASH", "amount": 500, "balance": 1_500, "expires_at": None}
    ]
    assert shop.balance(ALICE) == 1_500
    assert shop.tables.vouchers[shop.keyring.lookup_hash(PIN)]["state"] == "redeemed"
    (record,) = shop.tables.transactions
    assert (record["kind"], record["result_code"], record["serial"]) == ("redemption", 0, 1001)
    assert shop.wallet.committed == [answer["transaction_id"]]  # after the commit


def test_a_refused_redemption_changes_nothing_but_is_recorded() -> None:
    shop = Shop()
    shop.subscriber(ALICE, state="suspended")
    shop.voucher(PIN, 1001)
    assert _code(_redeem(shop)) == 5002
    assert shop.balance(ALICE) == 1_000
    assert shop.tables.vouchers[shop.keyring.lookup_hash(PIN)]["state"] == "available"
    assert [r["result_code"] for r in shop.tables.transactions] == [5002]
    assert shop.wallet.committed == []


@pytest.mark.parametrize(
    ("voucher_state", "batch_state", "expected"),
    [
        # The voucher's own final states answer before its batch's state.
        (VoucherState.REDEEMED, BatchState.FROZEN, 2009),
        (VoucherState.RESERVED, BatchState.GENERATED, 2010),
        (VoucherState.DELETED, BatchState.FROZEN, 2013),
        (VoucherState.AVAILABLE, BatchState.GENERATED, 2011),
        (VoucherState.FROZEN, BatchState.FROZEN, 2001),
        (VoucherState.FROZEN, BatchState.ACTIVE, 2012),
    ],
)
def test_the_voucher_state_answers_for_a_subscriber_and_5001_for_anyone_else(
    voucher_state: VoucherState, batch_state: BatchState, expected: int
) -> None:
    shop = Shop()
    shop.voucher(PIN, 1001, state=voucher_state, batch_state=batch_state)
    # Issue 14: for a number that is no subscriber the PIN tells a guesser nothing.
    assert _code(_redeem(shop)) == 5001
    shop.subscriber(ALICE)
    assert _code(_redeem(shop)) == expected


def test_an_expired_voucher_gives_2014() -> None:
    shop = Shop()
    shop.subscriber(ALICE)
    shop.voucher(PIN, 1001, expires_at=NOW)
    assert _code(_redeem(shop)) == 2014


def test_the_subscriber_answers_before_the_product_type_and_the_scenario() -> None:
    two = voucher_type(
        scenarios=[scenario(1, Credit(CASH, "CASH", 1)), scenario(2, Credit(CASH, "CASH", 2))],
        allowed=frozenset({POSTPAID}),
    )
    shop = Shop(two)
    shop.voucher(PIN, 1001)
    assert _code(_redeem(shop)) == 5001  # no wallet
    shop.subscriber(ALICE, state="frozen")
    assert _code(_redeem(shop)) == 5010  # frozen: a code of its own
    shop.subscriber(ALICE, state="suspended")
    assert _code(_redeem(shop)) == 5002
    shop.subscriber(ALICE, product_type_id=PREPAID)
    assert _code(_redeem(shop)) == 2007  # not for prepaid
    shop.subscriber(ALICE, product_type_id=POSTPAID)
    assert _code(_redeem(shop)) == 2008  # two offers, none chosen
    assert _code(_redeem(shop, scenario=3)) == 4005
    assert _code(_redeem(shop, scenario=2)) == 0


def test_a_malformed_scenario_is_refused_as_4005_before_anything_is_taken() -> None:
    shop = Shop()
    shop.subscriber(ALICE)
    shop.voucher(PIN, 1001)
    assert _code(_redeem(shop, scenario="two")) == 4005
    assert shop.tables.vouchers[shop.keyring.lookup_hash(PIN)]["state"] == "available"


def test_scenario_required_lists_the_offers_for_the_channel_to_prompt() -> None:
    two = voucher_type(
        scenarios=[scenario(1, Credit(CASH, "CASH", 100)), scenario(2, Credit(DATA, "DATA", 5))]
    )
    shop = Shop(two)
    shop.subscriber(ALICE)
    shop.voucher(PIN, 1001)
    with pytest.raises(ResultError) as refused:
        _redeem(shop)()
    offers = refused.value.extra["scenarios"]
    assert [(o["number"], o["credits"][0]["balance_type"]) for o in offers] == [
        (1, "CASH"),
        (2, "DATA"),
    ]


def test_a_scenario_may_change_the_product_type_and_extend_the_account() -> None:
    upgrade = voucher_type(
        scenarios=[
            scenario(
                1,
                Credit(DATA, "DATA", 1024, balance_expiry_extension_days=7),
                account_expiry_extension_days=30,
                new_product_type_id=POSTPAID,
                new_product_type="POSTPAID",
            )
        ]
    )
    shop = Shop(upgrade)
    before = shop.subscriber(ALICE).account_expires_at
    shop.voucher(PIN, 1001)
    answer = _redeem(shop)()
    assert answer["product_type"] == "POSTPAID"
    assert answer["credits"][0]["balance"] == 1024
    assert before is not None  # later than now: the extension counts from it
    assert shop.wallet.accounts[ALICE].account_expires_at == before + timedelta(days=30)


def test_a_credit_above_the_balance_limit_gives_5004_and_takes_nothing() -> None:
    shop = Shop(max_cash=1_200)
    shop.subscriber(ALICE)  # 1,000 already; the voucher brings 500
    shop.voucher(PIN, 1001)
    with pytest.raises(ResultError) as refused:
        _redeem(shop)()
    assert refused.value.result.code == 5004
    assert refused.value.extra["balance_type"] == "CASH"
    assert shop.balance(ALICE) == 1_000
    assert shop.tables.vouchers[shop.keyring.lookup_hash(PIN)]["state"] == "available"


def test_a_recharge_of_another_number_credits_the_recipient_and_tells_it_after_the_commit() -> None:
    shop = Shop()
    shop.subscriber(ALICE)
    shop.subscriber(BOB)
    told: list[Any] = []
    shop.rt.after_recharge = lambda channel, answer: told.append(
        (channel, answer["recipient_msisdn"], len(shop.tables.transactions))
    )
    answer = _recharge(shop, recipient_msisdn=BOB)()
    assert (shop.balance(ALICE), shop.balance(BOB)) == (1_000, 1_500)
    assert told == [("rest", BOB, 1)]  # once the attempt's record was committed
    assert answer["recipient_msisdn"] == BOB


def test_a_refused_recharge_tells_nobody() -> None:
    shop = Shop()
    told: list[Any] = []
    shop.rt.after_recharge = lambda channel, answer: told.append(answer)
    assert _code(_recharge(shop)) == 5001  # no such subscriber: rolled back
    assert told == []


def test_a_recharge_checks_the_number_before_the_subscriber() -> None:
    shop = Shop()
    assert _code(_recharge(shop, msisdn="12", voucher_type=7)) == 4006
    assert _code(_recharge(shop, voucher_type=7)) == 5005  # not a voucher type code
    assert _code(_recharge(shop)) == 5001


def test_a_request_id_replays_the_first_answer_and_refuses_another_body() -> None:
    shop = Shop()
    shop.subscriber(ALICE)
    first = _recharge(shop, request_id="r-1")()
    again = _recharge(shop, request_id="r-1")()
    assert again == first
    assert shop.balance(ALICE) == 1_500  # credited once
    assert _code(_recharge(shop, request_id="r-1", scenario=1)) == 5006


def test_a_refusal_is_the_first_answer_of_its_request_id_too() -> None:
    shop = Shop()
    assert _code(_recharge(shop, request_id="r-2")) == 5001
    shop.subscriber(ALICE)
    assert _code(_recharge(shop, request_id="r-2")) == 5001  # the first answer again
    assert [r["result_code"] for r in shop.tables.transactions] == [5001]  # recorded once


def test_a_redemption_writes_its_event_with_its_commit_and_a_refusal_none() -> None:
    shop = Shop()
    shop.subscriber(ALICE)
    shop.voucher(PIN, 1001)
    answer = _redeem(shop, channel="ussd")()
    (event,) = shop.tables.events
    assert (event["type"], event["dispatched"]) == ("voucher.redeemed", False)
    assert event["data"]["transaction_id"] == answer["transaction_id"]
    assert event["data"]["channel"] == "ussd"
    assert event["data"]["credits"] == [{"balance_type": "CASH", "amount": 500}]
    assert PIN not in str(event)
    assert _code(_redeem(shop)) == 2009
    assert len(shop.tables.events) == 1
