"""db.bulk on SQLite (executemany) and PostgreSQL (COPY): the same contract on both."""

import os
from typing import Any

import pytest
from sqlalchemy import func, select

from tests import factories
from voms.db import bulk
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services import generation
from voms.services.auth import CONSOLE

COLUMNS = generation.VOUCHER_COLUMNS


@pytest.fixture
def batch_id(rt: Runtime) -> int:
    factories.standard_catalog(rt)
    created = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=10)
    return int(created.batch["batch_id"])


def _row(serial: int, batch_id: int, pin_hash: bytes | None = None) -> tuple[Any, ...]:
    return (serial, batch_id, pin_hash or os.urandom(32), 1, os.urandom(42), 1, "available")


def _serials(rt: Runtime) -> list[int]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(t.vouchers.c.serial).order_by("serial")).scalars())


def test_rows_whose_unique_value_is_taken_are_left_out_and_returned(
    rt: Runtime, batch_id: int
) -> None:
    first = _row(1, batch_id)
    with rt.engine.begin() as conn:
        assert bulk.load(conn, t.vouchers, COLUMNS, [first], skip_taken="pin_hash") == []
    clash = _row(3, batch_id, pin_hash=first[2])
    rows = [_row(2, batch_id), clash, _row(4, batch_id)]
    with rt.engine.begin() as conn:
        assert bulk.load(conn, t.vouchers, COLUMNS, rows, skip_taken="pin_hash") == [clash]
    assert _serials(rt) == [1, 2, 4]


def test_a_primary_key_clash_is_an_error_even_when_skipping(rt: Runtime, batch_id: int) -> None:
    with rt.engine.begin() as conn:
        bulk.load(conn, t.vouchers, COLUMNS, [_row(1, batch_id)], skip_taken="pin_hash")
    # sqlite3's "UNIQUE constraint failed", psycopg's UniqueViolation "duplicate key".
    with (
        pytest.raises(Exception, match=r"(?i)unique|duplicate key"),
        rt.engine.begin() as conn,
    ):
        bulk.load(conn, t.vouchers, COLUMNS, [_row(1, batch_id)], skip_taken="pin_hash")
    assert _serials(rt) == [1]


def test_an_all_or_nothing_load_writes_nothing_on_a_clash(rt: Runtime, batch_id: int) -> None:
    first = _row(1, batch_id)
    with rt.engine.begin() as conn:
        bulk.load(conn, t.vouchers, COLUMNS, [first])
    with rt.engine.begin() as conn:
        with pytest.raises(bulk.DuplicateKey):
            bulk.load(conn, t.vouchers, COLUMNS, [_row(2, batch_id), _row(3, batch_id, first[2])])
        # The caller's transaction is still usable after the clash.
        assert conn.execute(select(func.count()).select_from(t.vouchers)).scalar_one() == 1
    assert _serials(rt) == [1]
