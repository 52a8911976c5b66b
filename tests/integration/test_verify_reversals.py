"""`voms verify` knows reversals: healthy ones pass, broken links and amounts are named."""

from typing import Any

from sqlalchemy import delete, update

from tests import factories
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services import redemption, reversal, verify
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

MSISDN = "254700000001"


def _reversed(rt: Runtime, reactivate: bool) -> dict[str, Any]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    pins = factories.active_batch(rt, count=2)
    done = redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pins[0][1]))
    body = {"reason": "test", "reactivate_voucher": reactivate}
    return reversal.reverse(rt, CONSOLE, done["transaction_id"], body)


def test_reversed_redemptions_balance_with_or_without_the_voucher_back(rt: Runtime) -> None:
    _reversed(rt, reactivate=True)
    report = verify.verify(rt)
    assert report.ok, report.problems
    assert report.counts["vouchers_redeemed"] == 0


def test_a_reversal_whose_link_was_lost_is_named(rt: Runtime) -> None:
    answer = _reversed(rt, reactivate=False)
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.transactions)
            .where(t.transactions.c.id == answer["transaction_id"])
            .values(reversed_by=None)
        )
    problems = verify.verify(rt).problems
    assert any("reversals whose transaction does not name them" in p for p in problems)
    assert any("ledger credits marked reversed whose transaction is not" in p for p in problems)


def test_a_reversal_without_its_ledger_rows_is_named(rt: Runtime) -> None:
    answer = _reversed(rt, reactivate=False)
    with rt.engine.begin() as conn:
        conn.execute(delete(t.ledger).where(t.ledger.c.transaction_id == answer["reversal_id"]))
        conn.execute(update(t.balances).values(amount=t.balances.c.amount + 1000))
    problems = verify.verify(rt).problems
    assert any("ledger rows differ from what the transaction records" in p for p in problems)
