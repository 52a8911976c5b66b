"""Migration 0005_left on a database that already holds exports."""

from sqlalchemy import text

from voms.config import Settings
from voms.db.engine import make_engine
from voms.db.migrate import upgrade


def test_exports_made_before_the_upgrade_are_complete(empty_url: str) -> None:
    engine = make_engine(Settings(database_url=empty_url))
    upgrade(engine, "0004")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO service_providers VALUES (1, 'A', 'A', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO partners (id, name, public_key, key_fingerprint, key_user_ids, "
                "state, created_by, created_at) "
                "VALUES (1, 'p', 'k', 'f', '[]', 'active', 'x', '2026-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO exports (id, service_provider_id, partner_id, format, filters, "
                "reissue, voucher_count, reissued_count, key_fingerprint, file_name, sha256, "
                "size_bytes, created_by, created_at) VALUES (1, 1, 1, 'csv', '{}', false, 7, "
                "0, 'f', 'e.csv.gpg', 's', 1, 'x', '2026-01-02')"
            )
        )
    upgrade(engine, "head")
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT state, exported_count, updated_at, error FROM exports")
        ).one()
    engine.dispose()
    assert (row.state, row.exported_count, row.error) == ("exported", 7, None)
    assert str(row.updated_at).startswith("2026-01-02")
