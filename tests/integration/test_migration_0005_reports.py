"""Migration 0005 on a database that already holds vouchers and transactions: the
per-batch counts start from the vouchers present; earlier transactions reach the
rollups, not the counts a second time."""

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import insert, select, text

from voms.config import Settings
from voms.db import tables as t
from voms.db.engine import make_engine
from voms.db.migrate import upgrade
from voms.runtime import Runtime
from voms.services.reports import rollups

_VOUCHER = (
    "INSERT INTO vouchers (serial, batch_id, pin_hash, lookup_key_id, pin_ciphertext, "
    "encryption_key_id, state) VALUES (:serial, 1, :h, 1, :h, 1, :state)"
)


def test_upgrading_counts_the_vouchers_present_once(empty_url: str, keys_file: Path) -> None:
    engine = make_engine(Settings(database_url=empty_url))
    upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO service_providers VALUES (1, 'A', 'A', '2026-01-01')"))
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
                "generated_count, serial_first, serial_last, expires_at, created_by, "
                "created_at, updated_at) VALUES (1, 1, 1, 'active', 4, 4, 5, 8, "
                "'2030-01-01', 'x', '2026-01-01', '2026-01-01')"
            )
        )
        for serial, state in ((5, "available"), (6, "redeemed"), (7, "frozen")):
            conn.execute(
                text(_VOUCHER), {"serial": serial, "h": bytes([serial]) * 32, "state": state}
            )
        conn.execute(
            text(
                "INSERT INTO voucher_archive (serial, batch_id, pin_hash, lookup_key_id, state, "
                "voucher_state, expires_at, archived_at) VALUES (8, 1, :h, 1, 'redeemed', "
                "'redeemed', '2030-01-01', '2026-02-01')"
            ),
            {"h": b"\x08" * 32},
        )
        conn.execute(
            insert(t.transactions).values(
                id="t6",
                at=datetime(2026, 1, 5, 10, tzinfo=UTC),
                kind="redemption",
                channel="ussd",
                serial=6,
                voucher_type_id=1,
                result_code=0,
                credits=[],
                service_provider_id=1,
                actor="x",
            )
        )
    upgrade(engine)
    with engine.connect() as conn:
        moves = {(b, s): n for b, s, n in conn.execute(select(t.voucher_state_moves))}
        cursor = conn.execute(
            select(t.job_cursors.c.detail).where(t.job_cursors.c.job == "report_rollups")
        ).scalar_one()
    engine.dispose()
    assert moves == {(1, "available"): -3, (1, "redeemed"): 2, (1, "frozen"): 1}
    assert datetime.fromisoformat(cursor["counts_from"]) > datetime(2026, 1, 5, tzinfo=UTC)

    from voms.runtime import build_runtime

    rt: Runtime = build_runtime(Settings(database_url=empty_url, keys_file=keys_file))
    try:
        rollups.fold(rt, until=datetime.now(UTC))
        with rt.engine.connect() as conn:
            again = {(b, s): n for b, s, n in conn.execute(select(t.voucher_state_moves))}
            hourly = conn.execute(select(t.report_hourly.c.hour, t.report_hourly.c.count)).all()
    finally:
        rt.engine.dispose()
    assert again == moves  # the redemption of serial 6 was counted by the upgrade already
    assert hourly == [(datetime(2026, 1, 5, 10, tzinfo=UTC), 1)]
