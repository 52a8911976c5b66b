"""Migration 0006_policy on a database that already holds subscribers, and back."""

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from voms.config import Settings
from voms.db.engine import make_engine
from voms.db.migrate import alembic_config, current_revision, upgrade

_SUBSCRIBER = (
    "INSERT INTO subscribers (id, msisdn, service_provider_id, product_type_id, state, "
    "created_at) VALUES (:id, :msisdn, 1, 1, :state, '2026-01-01')"
)


def test_upgrading_allows_expired_accounts_and_keeps_the_catalog(empty_url: str) -> None:
    engine = make_engine(Settings(database_url=empty_url))
    upgrade(engine, "0005_console")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO service_providers VALUES (1, 'A', 'A', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO product_types (id, service_provider_id, code, name, created_at) "
                "VALUES (1, 1, 'G', 'G', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO voucher_types (id, service_provider_id, code, name, pin_length, "
                "validity_days, reservation_timeout_s, timeout_action, created_at) "
                "VALUES (1, 1, 'T', 'T', 14, 365, 300, 'revoke', '2026-01-01')"
            )
        )
        conn.execute(text(_SUBSCRIBER), {"id": 1, "msisdn": "1", "state": "frozen"})
        with pytest.raises(IntegrityError), conn.begin_nested():
            conn.execute(text(_SUBSCRIBER), {"id": 2, "msisdn": "2", "state": "expired"})
    upgrade(engine)
    try:
        with engine.begin() as conn:
            selection = conn.execute(text("SELECT scenario_selection FROM voucher_types"))
            assert selection.scalar_one() == "prompt"
            conn.execute(text(_SUBSCRIBER), {"id": 2, "msisdn": "2", "state": "expired"})
        with pytest.raises(IntegrityError), engine.begin() as conn:  # the CHECK still holds
            conn.execute(text(_SUBSCRIBER), {"id": 3, "msisdn": "3", "state": "asleep"})
        # Down again only without expired accounts.
        with pytest.raises(RuntimeError, match="expired subscribers"):
            command.downgrade(alembic_config(engine), "0005_console")
        with engine.begin() as conn:
            conn.execute(text("UPDATE subscribers SET state = 'deactivated' WHERE id = 2"))
        command.downgrade(alembic_config(engine), "0005_console")
        assert current_revision(engine) == "0005_console"
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        engine.dispose()
