"""Redemption policy (issue 16, items 1-3): default scenarios, recharge limits, account
states and the expiry jobs, and the bad-PIN counter beside blocks set by hand; on SQLite
and PostgreSQL."""

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from tests import factories
from tests.integration.test_concurrency import at_once
from voms.config import Settings
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Invalid, NotFound, ResultError
from voms.runtime import Runtime, build_runtime
from voms.services import (
    blacklist,
    catalog,
    catalog_cache,
    housekeeping,
    recharge_limits,
    redemption,
    verify,
    wallet,
)
from voms.services.auth import CONSOLE
from voms.services.redemption import RechargeRequest, RedemptionRequest
from voms.services.redemption import blacklist as bad_pins
from voms.services.uow import UnitOfWork

MSISDN = "254700000001"
OTHER = "254700000002"

TWO_OFFERS = [
    {
        "number": 1,
        "name": "10 KES",
        "credits": [{"balance_type": "CASH", "amount": 1000}],
    },
    {
        "number": 2,
        "name": "50 SMS",
        "default": True,
        "credits": [{"balance_type": "SMS", "amount": 50}],
    },
]


@pytest.fixture
def shop(rt: Runtime) -> Runtime:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    factories.subscriber(rt, OTHER)
    return rt


def code_of(call: Any) -> int:
    try:
        call()
    except ResultError as error:
        return error.result.code
    return 0


def recharge(rt: Runtime, msisdn: str = MSISDN, vt: str = "TOPUP10", **fields: Any) -> int:
    request = RechargeRequest(msisdn=msisdn, voucher_type=vt, **fields)
    return code_of(lambda: redemption.recharge(rt, CONSOLE, request))


def redeem(rt: Runtime, pin: str, msisdn: str = MSISDN, **fields: Any) -> int:
    request = RedemptionRequest(msisdn=msisdn, pin=pin, **fields)
    return code_of(lambda: redemption.redeem(rt, CONSOLE, request))


def balances(rt: Runtime, msisdn: str = MSISDN) -> dict[str, int]:
    found = wallet.get_subscriber(rt, CONSOLE, msisdn)["balances"]
    return {b["balance_type"]: b["amount"] for b in found}


def state_of(rt: Runtime, msisdn: str = MSISDN) -> str:
    with rt.engine.connect() as conn:
        return str(
            conn.execute(
                select(t.subscribers.c.state).where(t.subscribers.c.msisdn == msisdn)
            ).scalar_one()
        )


def set_account(rt: Runtime, msisdn: str = MSISDN, **values: Any) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(t.subscribers).where(t.subscribers.c.msisdn == msisdn).values(**values))


def limit(rt: Runtime, **limits: Any) -> dict[str, Any]:
    body = catalog.ServiceProviderUpdate.model_validate({"recharge_limits": limits})
    return catalog.update_service_provider(rt, CONSOLE, "ACME", body)


# --- 1. default scenario -----------------------------------------------------------------


def test_a_voucher_type_recharge_without_scenario_gets_the_default_one(shop: Runtime) -> None:
    rt = shop
    factories.voucher_type(rt, "COMBO", scenarios=TWO_OFFERS)
    assert recharge(rt, vt="COMBO") == 0
    assert balances(rt) == {"SMS": 50}
    assert recharge(rt, vt="COMBO", scenario=1) == 0
    assert balances(rt) == {"SMS": 50, "CASH": 1000}
    # Without a scenario flagged default there is nothing to apply: the choices (2008).
    no_default = [{**s, "default": False} for s in TWO_OFFERS]
    factories.voucher_type(rt, "PLAIN", scenarios=no_default)
    assert recharge(rt, vt="PLAIN") == 2008


def test_a_redemption_prompts_unless_the_type_selects_the_default(shop: Runtime) -> None:
    rt = shop
    created = factories.voucher_type(rt, "COMBO", scenarios=TWO_OFFERS)
    assert created["scenario_selection"] == "prompt"
    pins = [pin for _, pin in factories.active_batch(rt, "COMBO", count=2)]
    assert redeem(rt, pins[0]) == 2008
    changed = catalog.update_voucher_type(
        rt, CONSOLE, "COMBO", catalog.VoucherTypeUpdate(scenario_selection="default")
    )
    assert changed["scenario_selection"] == "default"
    catalog_cache.clear(rt)  # (other processes: within catalog_cache.TTL_SECONDS)
    assert redeem(rt, pins[0]) == 0
    assert balances(rt) == {"SMS": 50}
    assert redeem(rt, pins[1], scenario=1) == 0  # a scenario asked for still wins
    assert balances(rt) == {"SMS": 50, "CASH": 1000}


def test_selecting_the_default_needs_a_default_scenario(shop: Runtime) -> None:
    no_default = [{**s, "default": False} for s in TWO_OFFERS]
    with pytest.raises(Invalid, match="needs a scenario with default"):
        factories.voucher_type(shop, "PLAIN", scenarios=no_default, scenario_selection="default")
    with pytest.raises(NotFound):
        catalog.get_voucher_type(shop, CONSOLE, "PLAIN")  # nothing was created


# --- 2. recharge limits ------------------------------------------------------------------


def test_limits_are_merged_by_patch_and_null_removes_one(shop: Runtime) -> None:
    rt = shop
    assert limit(rt, max_per_day=10, max_value_per_day={"CASH": 500})["recharge_limits"] == {
        "max_per_day": 10,
        "max_value_per_day": {"CASH": 500},
    }
    merged = limit(rt, max_per_month=100, max_value_per_day={"SMS": 7, "CASH": None})
    assert merged["recharge_limits"] == {
        "max_per_day": 10,
        "max_per_month": 100,
        "max_value_per_day": {"SMS": 7},
    }
    assert limit(rt, max_per_day=None, max_value_per_day=None)["recharge_limits"] == {
        "max_per_month": 100
    }
    with pytest.raises(NotFound, match="balance type 'GOLDCOIN' not found"):
        limit(rt, max_value_per_day={"GOLDCOIN": 1})
    body = catalog.ServiceProviderUpdate.model_validate({"recharge_limits": None})
    assert catalog.update_service_provider(rt, CONSOLE, "ACME", body)["recharge_limits"] is None


def test_a_count_limit_refuses_with_5008_and_refusals_do_not_count(shop: Runtime) -> None:
    rt = shop
    limit(rt, max_per_day=2)
    pins = [pin for _, pin in factories.active_batch(rt, count=4)]
    assert [redeem(rt, pins[0]), recharge(rt)] == [0, 0]  # redemptions and recharges count
    assert redeem(rt, pins[1]) == 5008
    assert recharge(rt) == 5008
    assert balances(rt) == {"CASH": 2000}  # nothing changed by the refusals
    assert redeem(rt, pins[1], msisdn=OTHER) == 0  # per recipient MSISDN
    # The recipient counts, not the requester.
    assert redeem(rt, pins[2], msisdn=OTHER, recipient_msisdn=MSISDN) == 5008
    limit(rt, max_per_day=3)
    assert redeem(rt, pins[2]) == 0  # the refusals did not count: exactly 3 now
    assert redeem(rt, pins[3]) == 5008
    with rt.engine.connect() as conn:
        codes = conn.execute(
            select(t.transactions.c.result_code).where(t.transactions.c.result_code == 5008)
        ).all()
    assert len(codes) == 4  # each refusal is recorded as a failed attempt


def test_month_and_value_limits(shop: Runtime) -> None:
    rt = shop
    limit(rt, max_per_month=3, max_value_per_day={"CASH": 2500})
    assert [recharge(rt), recharge(rt)] == [0, 0]
    assert recharge(rt) == 5008  # 3000 CASH today would pass 2500
    limit(rt, max_value_per_day={"CASH": 3000})
    assert recharge(rt) == 0  # reaching a limit exactly is allowed
    limit(rt, max_value_per_day={"CASH": None})
    assert recharge(rt) == 5008  # the fourth this month
    assert balances(rt) == {"CASH": 3000}


def test_32_parallel_recharges_at_a_limit_of_10_give_exactly_10(settings: Settings) -> None:
    rt = build_runtime(settings.model_copy(update={"db_pool_size": 34}))
    try:
        factories.standard_catalog(rt)
        factories.subscriber(rt, MSISDN)
        limit(rt, max_per_day=10)
        codes = at_once(32, lambda i: recharge(rt, request_id=f"r{i}"))
        assert Counter(codes) == {0: 10, 5008: 22}
        assert balances(rt) == {"CASH": 10_000}
        with rt.engine.connect() as conn:
            counted = conn.execute(select(t.recharge_counters.c["count"])).scalars().all()
        assert counted == [10]
        assert verify.verify(rt).problems == []
    finally:
        rt.engine.dispose()


def test_old_counters_are_purged(shop: Runtime) -> None:
    rt = shop
    limit(rt, max_per_day=5, max_per_month=5)
    assert recharge(rt) == 0
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.recharge_counters),
            [
                {"msisdn": MSISDN, "period": p, "balance_type_id": 0, "count": 1, "value": 0}
                for p in ("D20200101", "M202001")
            ],
        )
    assert housekeeping.run_job(rt, CONSOLE, "recharge_counter_purge")["rows_affected"] == 2
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.recharge_counters)).scalar() == 2


# --- 3. account states -------------------------------------------------------------------


def test_frozen_answers_5010_suspended_and_deactivated_5002(shop: Runtime) -> None:
    rt = shop
    [(_, pin)] = factories.active_batch(rt, count=1)
    for state, code in (("frozen", 5010), ("suspended", 5002), ("deactivated", 5002)):
        set_account(rt, state=state)
        assert redeem(rt, pin) == code
        assert recharge(rt) == code
    assert balances(rt) == {}


def test_an_expired_account_is_revived_within_the_grace_period(shop: Runtime) -> None:
    rt = shop
    now = utcnow()
    set_account(rt, state="expired", account_expires_at=now - timedelta(days=3))
    assert recharge(rt) == 0  # TOPUP10: +60 days from now
    assert state_of(rt) == "active"
    expires = wallet.get_subscriber(rt, CONSOLE, MSISDN)["account_expires_at"]
    assert expires > now + timedelta(days=59)
    # Past the grace period (30 days by default) it is refused, job or no job.
    set_account(rt, OTHER, account_expires_at=now - timedelta(days=31))
    assert recharge(rt, OTHER) == 5002
    assert state_of(rt, OTHER) == "active"  # the refusal wrote nothing


def test_the_lifecycle_job_expires_and_deactivates_in_bulk(shop: Runtime) -> None:
    rt = shop
    rt.settings = rt.settings.model_copy(update={"housekeeping_chunk_size": 100})
    now = utcnow()
    set_account(rt, MSISDN, account_expires_at=now - timedelta(days=1))
    set_account(rt, OTHER, account_expires_at=now - timedelta(days=40))
    for i in range(3, 250):  # windows of 100 ids; some in the future, some frozen
        factories.subscriber(rt, f"2547000{i:05d}")
    set_account(rt, "254700000010", account_expires_at=now + timedelta(days=1))
    set_account(rt, "254700000011", state="frozen", account_expires_at=now - timedelta(days=40))
    done = housekeeping.run_job(rt, CONSOLE, "account_lifecycle")
    assert done["rows_affected"] == 2
    assert [state_of(rt, m) for m in (MSISDN, OTHER, "254700000010", "254700000011")] == [
        "expired",
        "deactivated",
        "active",
        "frozen",
    ]
    assert housekeeping.run_job(rt, CONSOLE, "account_lifecycle")["rows_affected"] == 0
    assert recharge(rt, OTHER) == 5002
    assert recharge(rt, MSISDN) == 0
    assert state_of(rt, MSISDN) == "active"
    # An expired account past the grace period is deactivated on the next run.
    set_account(rt, MSISDN, state="expired", account_expires_at=now - timedelta(days=31))
    assert housekeeping.run_job(rt, CONSOLE, "account_lifecycle")["rows_affected"] == 1
    assert state_of(rt, MSISDN) == "deactivated"


# --- balance expiry ------------------------------------------------------------------------


def test_the_expiry_job_empties_expired_balances_with_ledger_rows(shop: Runtime) -> None:
    rt = shop
    rt.settings = rt.settings.model_copy(update={"housekeeping_chunk_size": 100})
    assert recharge(rt) == 0
    assert recharge(rt, OTHER) == 0
    assert recharge(rt, vt="TOPUP10") == 0
    with rt.engine.begin() as conn:
        mine = select(t.subscribers.c.id).where(t.subscribers.c.msisdn == MSISDN)
        conn.execute(
            update(t.balances)
            .where(t.balances.c.subscriber_id == mine.scalar_subquery())
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    assert housekeeping.run_job(rt, CONSOLE, "balance_expiry")["rows_affected"] == 1
    assert balances(rt) == {"CASH": 0}
    assert balances(rt, OTHER) == {"CASH": 1000}  # not expired
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(t.ledger.c.amount, t.ledger.c.balance_after).where(t.ledger.c.cause == "expiry")
        ).all()
    assert [tuple(r) for r in rows] == [(-2000, 0)]
    assert housekeeping.run_job(rt, CONSOLE, "balance_expiry")["rows_affected"] == 0
    assert verify.verify(rt).problems == []


def test_a_credit_never_revives_an_expired_amount(shop: Runtime) -> None:
    rt = shop
    assert recharge(rt) == 0
    set_balance_expiry(rt, utcnow() - timedelta(minutes=1))
    assert recharge(rt) == 0  # before the job: the old 1000 expires, the new 1000 stays
    assert balances(rt) == {"CASH": 1000}
    with rt.engine.connect() as conn:
        expired = conn.execute(
            select(t.ledger.c.amount).where(t.ledger.c.cause == "expiry")
        ).scalars()
        assert list(expired) == [-1000]
    assert verify.verify(rt).problems == []


def set_balance_expiry(rt: Runtime, when: Any) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(t.balances).values(expires_at=when))


# --- the bad-PIN counter and blocks by hand -----------------------------------------------


@pytest.fixture
def blocked(shop: Runtime) -> Runtime:
    """MSISDN with two bad PINs, then blocked by hand (after a redemption read its row)."""
    rt = shop
    for _ in range(2):
        with UnitOfWork(rt) as uow:
            bad_pins.count_bad_pin(rt, uow, MSISDN)
            uow.commit()
    blacklist.block(rt, CONSOLE, blacklist.BlockIn(msisdn=MSISDN, reason="fraud case"))
    return rt


def entry(rt: Runtime) -> dict[str, Any]:
    [found] = blacklist.list_blacklist(rt, CONSOLE, msisdn=MSISDN)["items"]
    return found


def test_a_bad_pin_counted_after_a_block_by_hand_keeps_the_block(blocked: Runtime) -> None:
    rt = blocked
    with UnitOfWork(rt) as uow:  # the attempt that read the row before the block
        bad_pins.count_bad_pin(rt, uow, MSISDN)
        uow.commit()
    shown = entry(rt)
    assert (shown["reason"], shown["until"], shown["failures"]) == ("manual", None, 3)


def test_a_success_after_a_block_by_hand_does_not_release_it(blocked: Runtime) -> None:
    rt = blocked
    with UnitOfWork(rt) as uow:  # a success that saw the failures before the block
        bad_pins.forget_bad_pins(uow, MSISDN)
        uow.commit()
    assert entry(rt)["reason"] == "manual"
    [(_, pin)] = factories.active_batch(rt, count=1)
    assert redeem(rt, pin) == 5003


def test_limits_are_read_again_after_a_change(shop: Runtime) -> None:
    rt = shop
    assert recharge(rt) == 0
    limit(rt, max_per_day=0)  # the process that changed them forgets its cached copy
    assert recharge(rt) == 5008
    recharge_limits.forget(rt)


def test_balance_expiry_beside_concurrent_recharges_keeps_every_balance_to_its_ledger(
    settings: Settings,
) -> None:
    rt = build_runtime(settings.model_copy(update={"db_pool_size": 20}))
    try:
        rt.settings = rt.settings.model_copy(update={"housekeeping_chunk_size": 100})
        factories.standard_catalog(rt)
        msisdns = [f"2547100{i:05d}" for i in range(16)]
        for msisdn in msisdns:
            factories.subscriber(rt, msisdn)
            assert recharge(rt, msisdn) == 0
        set_balance_expiry(rt, utcnow() - timedelta(minutes=1))

        def work(i: int) -> int:
            if i == 0:
                return int(housekeeping.run_job(rt, CONSOLE, "balance_expiry")["rows_affected"])
            return recharge(rt, msisdns[i % len(msisdns)])

        results = at_once(17, work)
        assert results[1:] == [0] * 16
        assert verify.verify(rt).problems == []
        # Whatever the order, every expired 1000 went out once and every recharge stayed.
        for msisdn in msisdns:
            assert balances(rt, msisdn) == {"CASH": 1000}
        with rt.engine.connect() as conn:
            expired = conn.execute(
                select(func.count()).where(t.ledger.c.cause == "expiry")
            ).scalar_one()
        assert expired == len(msisdns)
    finally:
        rt.engine.dispose()
