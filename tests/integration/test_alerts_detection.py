"""Alert detection on both databases, without sending: occurrences, ends, forgetting."""

from datetime import timedelta

from sqlalchemy import select

from tests import factories
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import alerts, wallet
from voms.services.alerts import detection
from voms.services.auth import CONSOLE
from voms.services.housekeeping.context import JobContext

ALICE = "254700000201"


def _alerts(rt: Runtime) -> list[tuple[str, str, bool]]:
    a = t.alerts
    with rt.engine.connect() as conn:
        return [
            (row.kind, row.occurrence_key.count(":"), row.resolved_at is not None)
            for row in conn.execute(select(a).order_by(a.c.id))
        ]


def test_occurrences_end_and_are_forgotten_after_the_retention(rt: Runtime) -> None:
    # Subscriber alerts are looked for only where they can be sent.
    rt.settings = rt.settings.model_copy(
        update={"kannel_sendsms_url": "http://127.0.0.1:9/cgi-bin/sendsms"}
    )
    factories.standard_catalog(rt)
    factories.subscriber(rt, ALICE)
    alerts.update_settings(
        rt,
        CONSOLE,
        "ACME",
        alerts.AlertSettingsIn.model_validate(
            {"low_balance": {"CASH": 1000}, "voucher_stock": {"TOPUP10": 5}}
        ),
    )

    def detect(days_later: int = 0) -> int:
        now = utcnow() + timedelta(days=days_later)
        return detection.detect(JobContext(rt=rt, now=now, chunk_size=100))

    def credit(amount: int) -> None:
        wallet.adjust_balance(
            rt, CONSOLE, ALICE, wallet.AdjustmentIn(balance_type="CASH", amount=amount, reason="t")
        )

    credit(500)
    assert detect() == 2  # ALICE's low balance, no TOPUP10 in stock
    assert detect() == 0
    credit(600)  # 11.00: no longer low
    detect()
    credit(-600)  # low again: a new occurrence
    assert detect() == 1
    assert _alerts(rt) == [
        ("low_balance", 3, True),  # ended: its key got its id appended
        ("voucher_stock", 1, False),
        ("low_balance", 2, False),
    ]
    detect(days_later=91)
    # The ended one is forgotten; open ones never are (they would be sent again).
    assert [kind for kind, _, _ in _alerts(rt)] == ["voucher_stock", "low_balance"]


def test_without_kannel_no_subscriber_alert_is_looked_for(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, ALICE)
    alerts.update_settings(
        rt, CONSOLE, "ACME", alerts.AlertSettingsIn.model_validate({"low_balance": {"CASH": 1000}})
    )
    assert detection.detect(JobContext(rt=rt, now=utcnow(), chunk_size=100)) == 0
    assert _alerts(rt) == []
