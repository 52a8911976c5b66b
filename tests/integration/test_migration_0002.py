"""Migration 0002 on a database that already holds vouchers."""

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from voms.config import Settings
from voms.db.engine import make_engine
from voms.db.migrate import upgrade

_BATCH = (
    "INSERT INTO batches (id, service_provider_id, voucher_type_id, state, count, "
    "serial_first, serial_last, expires_at, created_by, created_at, updated_at) "
    "VALUES (:id, 1, 1, 'generated', :count, :first, :last, '2030-01-01', 'x', "
    "'2026-01-01', '2026-01-01')"
)


def test_upgrading_a_database_with_vouchers_keeps_them_and_allows_gapped_batches(
    empty_url: str,
) -> None:
    engine = make_engine(Settings(database_url=empty_url))
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO service_providers VALUES (1, 'A', 'A', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO voucher_types (id, service_provider_id, code, name, pin_length, "
                "validity_days, reservation_timeout_s, timeout_action, created_at) "
                "VALUES (1, 1, 'T', 'T', 14, 1, 1, 'hold', '2026-01-01')"
            )
        )
        conn.execute(text(_BATCH), {"id": 1, "count": 1, "first": 5, "last": 5})
        conn.execute(
            text(
                "INSERT INTO vouchers (serial, batch_id, pin_hash, lookup_key_id, "
                "pin_ciphertext, encryption_key_id, state) "
                "VALUES (5, 1, :h, 1, :h, 1, 'available')"
            ),
            {"h": b"x" * 32},
        )
    upgrade(engine)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT batch_id FROM vouchers")).scalar_one() == 1
            assert "partners" in inspect(conn).get_table_names()
            conn.execute(text(_BATCH), {"id": 2, "count": 2, "first": 10, "last": 20})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(_BATCH), {"id": 3, "count": 12, "first": 30, "last": 40})
        with engine.connect() as conn:
            checks = {c["name"] for c in inspect(conn).get_check_constraints("batches")}
            assert checks == {
                "ck_batches_count_positive",
                "ck_batches_serial_range",
                "ck_batches_state",
            }
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    finally:
        engine.dispose()
