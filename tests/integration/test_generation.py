"""Generation against SQLite and PostgreSQL: serial ranges, secret PINs, failure."""

from typing import Any

import pytest
from sqlalchemy import func, select

from tests import factories
from voms.db import tables as t
from voms.domain.pins import luhn_valid
from voms.runtime import Runtime
from voms.services import generation, lifecycle
from voms.services.auth import CONSOLE


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)


def _vouchers(rt: Runtime, batch_id: int) -> list[Any]:
    v = t.vouchers
    with rt.engine.connect() as conn:
        return conn.execute(select(v).where(v.c.batch_id == batch_id).order_by(v.c.serial)).all()


@pytest.mark.usefixtures("catalog")
def test_a_generated_batch_has_one_contiguous_serial_range_and_valid_pins(rt: Runtime) -> None:
    batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=25)
    assert batch["state"] == "generated"
    assert batch["generated_count"] == batch["count"] == 25
    assert batch["serial_first"] == "100000000001"
    assert batch["serial_last"] == "100000000025"
    rows = _vouchers(rt, batch["batch_id"])
    assert [r.serial for r in rows] == list(range(100000000001, 100000000026))
    pins = [rt.keyring.decrypt(r.encryption_key_id, r.pin_ciphertext) for r in rows]
    assert all(len(pin) == 14 and luhn_valid(pin) for pin in pins)
    assert len(set(pins)) == 25
    assert [r.pin_hash for r in rows] == [rt.keyring.lookup_hash(pin) for pin in pins]
    assert {r.state for r in rows} == {"available"}


@pytest.mark.usefixtures("catalog")
def test_consecutive_batches_get_disjoint_increasing_serials(rt: Runtime) -> None:
    first = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=3)
    second = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=4)
    assert int(second["serial_first"]) == int(first["serial_last"]) + 1
    assert int(second["serial_last"]) - int(second["serial_first"]) + 1 == 4


@pytest.mark.usefixtures("catalog")
def test_the_factory_returns_activated_serials_and_pins(rt: Runtime) -> None:
    pairs = factories.active_batch(rt, count=5)
    assert len(pairs) == 5
    assert all(luhn_valid(pin) for _, pin in pairs)
    page = lifecycle.list_batches(rt, CONSOLE)
    assert [b["state"] for b in page["items"]] == ["active"]


@pytest.mark.usefixtures("catalog")
def test_a_large_batch_is_made_by_worker_processes_in_chunks(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"generation_chunk_size": 1000})
    seen: list[int] = []
    batch = generation.generate_batch(
        rt, CONSOLE, voucher_type="TOPUP10", count=4500, progress=seen.append
    )
    assert batch["state"] == "generated"
    assert seen == [1000, 2000, 3000, 4000, 4500]
    with rt.engine.connect() as conn:
        count, distinct = conn.execute(
            select(func.count(), func.count(t.vouchers.c.pin_hash.distinct()))
        ).one()
    assert count == distinct == 4500
