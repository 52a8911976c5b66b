"""The vouchers table's layout on PostgreSQL: a voucher's state change is a HOT update."""

import pytest
from sqlalchemy import text

from tests import factories
from voms.runtime import Runtime


def test_redeeming_generated_vouchers_touches_no_index(rt: Runtime) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no fill factor")
    # Real generator (binary COPY), then a few vouchers of the first, full page change
    # state in one transaction, as a redemption changes them.
    factories.standard_catalog(rt)
    factories.active_batch(rt, count=300)
    with rt.engine.begin() as conn:
        changed = conn.execute(
            text(
                "UPDATE vouchers SET state = 'redeemed', state_changed_at = now(),"
                " redeemed_at = now(), redeemed_by = '254700000001'"
                " WHERE serial IN (SELECT serial FROM vouchers ORDER BY serial LIMIT 5)"
            )
        ).rowcount
        hot = conn.execute(
            text("SELECT pg_stat_get_xact_tuples_hot_updated('vouchers'::regclass)")
        ).scalar_one()
        on_first_page = conn.execute(
            text(
                "SELECT count(*) FROM vouchers WHERE state = 'redeemed'"
                " AND (ctid::text::point)[0] = 0"
            )
        ).scalar_one()
    assert changed == 5
    assert on_first_page == 5  # the new versions stayed on their page…
    assert hot == 5  # …and no index got an entry for them
