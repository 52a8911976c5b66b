"""Migration 0007: vouchers.batch_id loses its foreign key, on a database with vouchers."""

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from voms.config import Settings
from voms.db.engine import make_engine
from voms.db.migrate import alembic_config, current_revision, upgrade

_VOUCHER = (
    "INSERT INTO vouchers (serial, batch_id, pin_hash, lookup_key_id, pin_ciphertext, "
    "encryption_key_id, state) VALUES (:serial, :batch, :h, 1, :h, 1, 'available')"
)


def _catalog_and_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO service_providers (id, code, name, created_at) "
                "VALUES (1, 'A', 'A', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO voucher_types (id, service_provider_id, code, name, pin_length, "
                "validity_days, reservation_timeout_s, timeout_action, created_at) "
                "VALUES (1, 1, 'T', 'T', 14, 1, 1, 'hold', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO batches (id, service_provider_id, voucher_type_id, state, count, "
                "serial_first, serial_last, expires_at, created_by, created_at, updated_at) "
                "VALUES (1, 1, 1, 'generated', 1, 5, 5, '2030-01-01', 'x', '2026-01-01', "
                "'2026-01-01')"
            )
        )
        conn.execute(text(_VOUCHER), {"serial": 5, "batch": 1, "h": b"x" * 32})


def _foreign_keys(engine: Engine) -> list[str | None]:
    with engine.connect() as conn:
        return [fk["name"] for fk in inspect(conn).get_foreign_keys("vouchers")]


def test_the_foreign_key_goes_and_comes_back_only_when_every_voucher_has_its_batch(
    empty_url: str,
) -> None:
    engine = make_engine(Settings(database_url=empty_url))
    try:
        upgrade(engine, "0006_scale")
        _catalog_and_batch(engine)
        assert _foreign_keys(engine) == ["fk_vouchers_batch_id_batches"]
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text(_VOUCHER), {"serial": 6, "batch": 2, "h": b"y" * 32})

        upgrade(engine)
        assert _foreign_keys(engine) == []
        with engine.begin() as conn:
            assert conn.execute(text("SELECT batch_id FROM vouchers")).scalar_one() == 1
            conn.execute(text(_VOUCHER), {"serial": 6, "batch": 2, "h": b"y" * 32})
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
                sql = conn.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE name = 'vouchers'"
                ).scalar_one()
                assert "REFERENCES" not in sql
                assert "CONSTRAINT uq_vouchers_pin_hash UNIQUE (pin_hash)" in sql

        # A voucher without its batch: the key cannot come back, and nothing changes.
        with pytest.raises((DBAPIError, RuntimeError)):
            command.downgrade(alembic_config(engine), "0006_scale")
        engine.dispose()
        assert current_revision(engine) == "0007_vouchers_fk"
        assert _foreign_keys(engine) == []

        with engine.begin() as conn:
            conn.execute(text("DELETE FROM vouchers WHERE serial = 6"))
        command.downgrade(alembic_config(engine), "0006_scale")
        engine.dispose()
        assert current_revision(engine) == "0006_scale"
        assert _foreign_keys(engine) == ["fk_vouchers_batch_id_batches"]
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text(_VOUCHER), {"serial": 6, "batch": 2, "h": b"y" * 32})
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    finally:
        engine.dispose()
