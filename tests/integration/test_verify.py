"""`voms verify` finds what is broken, and nothing on a healthy database."""

from sqlalchemy import delete, update

from tests import factories
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services import redemption, verify
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

MSISDN = "254700000001"


def healthy(rt: Runtime) -> list[tuple[str, str]]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    pins = factories.active_batch(rt, count=4)
    for _, pin in pins[:2]:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))
    redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pins[2][1]))
    return pins


def test_a_healthy_database_passes(rt: Runtime) -> None:
    healthy(rt)
    report = verify.verify(rt)
    assert report.ok
    assert report.counts["vouchers_redeemed"] == 2


def test_a_balance_changed_behind_the_ledgers_back_is_named(rt: Runtime) -> None:
    healthy(rt)
    with rt.engine.begin() as conn:
        conn.execute(update(t.balances).values(amount=t.balances.c.amount + 1))
    [problem] = verify.verify(rt).problems
    assert "balances that differ from the sum of their ledger rows" in problem


def test_a_voucher_redeemed_without_a_transaction_is_named(rt: Runtime) -> None:
    pins = healthy(rt)
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.vouchers)
            .where(t.vouchers.c.serial == int(pins[3][0]))
            .values(state="redeemed")
        )
    [problem] = verify.verify(rt).problems
    assert problem.startswith("1 redeemed vouchers without exactly one successful")
    assert str(int(pins[3][0])) in problem


def test_a_lost_ledger_credit_is_named(rt: Runtime) -> None:
    healthy(rt)
    with rt.engine.begin() as conn:
        first = conn.execute(t.ledger.select().limit(1)).one()
        conn.execute(delete(t.ledger).where(t.ledger.c.id == first.id))
        conn.execute(update(t.balances).values(amount=t.balances.c.amount - first.amount))
    problems = verify.verify(rt).problems
    assert any("ledger rows differ from what the transaction records" in p for p in problems)
    assert any(
        "value credited by transactions (2000) differs from the ledger (1000)" in p
        for p in problems
    )


def test_a_voucher_whose_batch_does_not_exist_is_named(rt: Runtime) -> None:
    # vouchers.batch_id has no foreign key (migration 0007_vouchers_fk): verify checks it.
    pins = healthy(rt)
    serial = int(pins[3][0])
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.vouchers).where(t.vouchers.c.serial == serial).values(batch_id=999_999)
        )
    [problem] = verify.verify(rt).problems
    assert problem == (
        f"1 vouchers whose batch does not exist (serial/batch id) (e.g. {serial}/999999)"
    )
