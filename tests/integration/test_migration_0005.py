"""Migration 0005 on a database that already holds redemptions, and back."""

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from voms.config import Settings
from voms.db.engine import make_engine
from voms.db.migrate import alembic_config, current_revision, upgrade

_LEDGER = (
    "INSERT INTO ledger (at, subscriber_id, balance_type_id, amount, balance_after, cause, "
    "transaction_id, serial, actor) VALUES ('2026-01-01', 1, 1, :amount, 0, :cause, :tx, 5, 'x')"
)


def test_upgrading_keeps_the_ledger_and_lets_a_reversed_voucher_be_credited_again(
    empty_url: str,
) -> None:
    engine = make_engine(Settings(database_url=empty_url))
    upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO service_providers VALUES (1, 'A', 'A', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO balance_types (id, service_provider_id, code, name, unit, "
                "created_at) VALUES (1, 1, 'CASH', 'Cash', 'cent', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO product_types (id, service_provider_id, code, name, created_at) "
                "VALUES (1, 1, 'G', 'G', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO subscribers (id, msisdn, service_provider_id, product_type_id, "
                "state, created_at) VALUES (1, '254700000001', 1, 1, 'active', '2026-01-01')"
            )
        )
        conn.execute(text(_LEDGER), {"amount": 1000, "cause": "redemption", "tx": "t1"})
    upgrade(engine)
    try:
        with pytest.raises(IntegrityError), engine.begin() as conn:  # the backstop holds
            conn.execute(text(_LEDGER), {"amount": 1000, "cause": "redemption", "tx": "t2"})
        with engine.begin() as conn:
            conn.execute(text("UPDATE ledger SET reversed_by = 'r1' WHERE transaction_id = 't1'"))
            conn.execute(text(_LEDGER), {"amount": -1000, "cause": "reversal", "tx": "r1"})
            conn.execute(text(_LEDGER), {"amount": 1000, "cause": "redemption", "tx": "t2"})
            assert conn.execute(text("SELECT count(*) FROM ledger")).scalar_one() == 3
        # Down again only without reversals: deleting them would break the balances.
        with pytest.raises(RuntimeError, match="ledger rows of reversals"):
            command.downgrade(alembic_config(engine), "0004")
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM ledger WHERE transaction_id IN ('r1', 't2')"))
        command.downgrade(alembic_config(engine), "0004")
        assert current_revision(engine) == "0004"
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(_LEDGER), {"amount": -1, "cause": "reversal", "tx": "r2"})
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        engine.dispose()
