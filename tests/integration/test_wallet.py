"""The built-in wallet: subscribers, adjustments, the ledger invariant, limits."""

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from tests import factories
from voms.db import tables as t
from voms.domain.errors import Conflict, NotFound, ResultError
from voms.runtime import Runtime
from voms.services import audit, verify, wallet
from voms.services.auth import CONSOLE
from voms.services.wallet import AdjustmentIn

MSISDN = "254700000001"


def adjust(rt: Runtime, amount: int, reason: str = "care", **fields: object) -> dict[str, object]:
    body = AdjustmentIn.model_validate(
        {"balance_type": "CASH", "amount": amount, "reason": reason, **fields}
    )
    return wallet.adjust_balance(rt, CONSOLE, MSISDN, body)


@pytest.fixture
def subscriber(rt: Runtime) -> None:
    factories.service_provider(rt)
    factories.balance_type(rt, "CASH", max_balance=10_000)
    factories.product_type(rt, "GOLD")
    factories.subscriber(rt, MSISDN)


def test_every_adjustment_writes_a_ledger_row_and_an_audit_entry(
    rt: Runtime, subscriber: None
) -> None:
    assert adjust(rt, 700)["balance"] == 700
    assert adjust(rt, -200, "refund reversal")["balance"] == 500
    with rt.engine.connect() as conn:
        rows = conn.execute(select(t.ledger.c.amount, t.ledger.c.balance_after)).all()
        entries = audit.list_entries(conn, object_type="subscriber")
    assert sorted(rows) == [(-200, 500), (700, 700)]
    assert [e["action"] for e in entries] == ["wallet.adjust", "wallet.adjust", "subscriber.create"]
    assert verify.verify(rt).problems == []


def test_an_adjustment_needs_a_reason_and_a_non_zero_amount() -> None:
    with pytest.raises(ValidationError):
        AdjustmentIn.model_validate({"balance_type": "CASH", "amount": 5})
    with pytest.raises(ValidationError):
        AdjustmentIn.model_validate({"balance_type": "CASH", "amount": 5, "reason": "  "})
    with pytest.raises(ValidationError):
        AdjustmentIn.model_validate({"balance_type": "CASH", "amount": 0, "reason": "x"})


def test_a_balance_never_falls_below_zero_nor_rises_above_its_limit(
    rt: Runtime, subscriber: None
) -> None:
    adjust(rt, 100)
    with pytest.raises(Conflict):
        adjust(rt, -101)
    with pytest.raises(ResultError) as limit:
        adjust(rt, 9_901)
    assert limit.value.result.code == 5004
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.ledger)).scalar_one() == 1
    assert wallet.get_subscriber(rt, CONSOLE, MSISDN)["balances"][0]["amount"] == 100


def test_an_adjustment_with_a_request_id_is_applied_once(rt: Runtime, subscriber: None) -> None:
    first = adjust(rt, 100, request_id="adj-1")
    assert adjust(rt, 100, request_id="adj-1") == first
    with pytest.raises(Conflict):
        adjust(rt, 200, request_id="adj-1")
    assert wallet.get_subscriber(rt, CONSOLE, MSISDN)["balances"][0]["amount"] == 100


def test_unknown_subscribers_and_balance_types_are_404(rt: Runtime, subscriber: None) -> None:
    with pytest.raises(NotFound):
        wallet.get_subscriber(rt, CONSOLE, "254799999999")
    with pytest.raises(NotFound):
        wallet.adjust_balance(
            rt,
            CONSOLE,
            MSISDN,
            AdjustmentIn(balance_type="SMS", amount=1, reason="x"),
        )
