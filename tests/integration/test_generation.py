"""Generation against SQLite and PostgreSQL: serial ranges, secret PINs, failure."""

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests import factories
from voms.crypto import Keyring
from voms.db import bulk
from voms.db import tables as t
from voms.domain.errors import Conflict, ResultError
from voms.domain.pins import luhn_valid
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import care, generation, lifecycle, redemption, sealing
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest


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
    # Chunks of 1000 from the workers (the last of 500), in whatever order they were
    # ready, and pieces of 125 this process sealed while none was.
    assert len(seen) >= 5
    assert seen == sorted(seen)
    assert seen[-1] == 4500
    with rt.engine.connect() as conn:
        count, distinct = conn.execute(
            select(func.count(), func.count(t.vouchers.c.pin_hash.distinct()))
        ).one()
    assert count == distinct == 4500


def test_chunks_come_out_of_serial_order_while_the_workers_start() -> None:
    """The writer seals pieces itself while no worker chunk is ready: those come first,
    from serials after the ones the workers were given. (Why a resumed generation cannot
    start at ``serial_first + generated_count``.)"""
    sealer = sealing.Sealer.for_batch(Keyring.new(), 1, 14)
    first = 100_000_000_001
    with generation.started_workers(1) as workers:
        chunks = generation._chunks(sealer, [(first, first + 4999)], 1000, workers, os.urandom)
        starts = []
        serials = []
        for chunk in chunks:
            assert isinstance(chunk, sealing.Sealed)
            starts.append(chunk.rows[0][0])
            serials += [row[0] for row in chunk.rows]
    assert starts[0] == first + 2000  # after the two chunks the worker was given
    assert starts != sorted(starts)
    assert sorted(serials) == list(range(first, first + 5000))


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("workers", [0, 1])
def test_a_generation_resumed_after_a_crash_writes_exactly_the_missing_serials(
    rt: Runtime, workers: int
) -> None:
    rt.settings = rt.settings.model_copy(update={"generation_chunk_size": 100})
    batch = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=300).batch
    first = int(batch["serial_first"])
    # What a generation killed after its first transaction can leave: a piece the writer
    # sealed itself (serials 200-249 of the batch) while the workers sealed the first
    # chunks, committed with its progress, and nothing before it.
    sealer = sealing.Sealer.for_batch(rt.keyring, batch["batch_id"], 14)
    sealed = sealer.seal_chunk(range(first + 200, first + 250))
    with rt.engine.begin() as conn:
        generation.write_chunk(conn, sealer, sealed.rows, aliases=sealed.aliases)
        generation._advance(conn, batch["batch_id"], 50)

    done = generation.fill_batch(rt, CONSOLE, batch["batch_id"], workers=workers)

    assert (done["state"], done["generated_count"]) == ("generated", 300)
    rows = _vouchers(rt, batch["batch_id"])
    assert [r.serial for r in rows] == list(range(first, first + 300))
    assert len({r.pin_hash for r in rows}) == 300
    # Two gaps, before and after the piece: none of the written serials sealed again.
    kept = {r.serial: r.pin_hash for r in rows if first + 200 <= r.serial < first + 250}
    assert kept == {row[0]: row[2] for row in sealed.rows}


@pytest.mark.usefixtures("catalog")
def test_a_resumed_generation_refuses_a_range_that_does_not_match_its_progress(
    rt: Runtime,
) -> None:
    batch = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=30).batch
    with rt.engine.begin() as conn:
        generation._advance(conn, batch["batch_id"], 10)  # counted, never written
    with pytest.raises(Conflict, match="does not hold the 10 vouchers its progress counts"):
        generation.fill_batch(rt, CONSOLE, batch["batch_id"], workers=0)
    assert lifecycle.get_batch(rt, CONSOLE, batch["batch_id"])["state"] == "failed"
    assert _vouchers(rt, batch["batch_id"]) == []


def _replayed_entropy(seed: bytes) -> sealing.RandomBytes:
    """The same random words every time it is created: the seed, then the OS CSPRNG."""
    queue = bytearray(seed)

    def randbytes(n: int) -> bytes:
        head = bytes(queue[:n])
        del queue[:n]
        return head + os.urandom(n - len(head))

    return randbytes


def _pins(rt: Runtime, batch_id: int) -> list[str]:
    return [
        rt.keyring.decrypt(r.encryption_key_id, r.pin_ciphertext) for r in _vouchers(rt, batch_id)
    ]


@pytest.mark.usefixtures("catalog")
def test_pins_that_collide_with_earlier_vouchers_are_drawn_again(rt: Runtime) -> None:
    seed = os.urandom(8 * 400)
    first = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=20).batch
    generation.fill_batch(
        rt, CONSOLE, first["batch_id"], workers=0, randbytes=_replayed_entropy(seed)
    )
    # The second batch draws exactly the first batch's PINs first: all twenty collide
    # on the UNIQUE lookup hash and must be drawn again, transparently.
    assert [p.decode() for p in sealing.draw_pins(20, 14, _replayed_entropy(seed))] == _pins(
        rt, first["batch_id"]
    )
    second = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=20).batch
    done = generation.fill_batch(
        rt, CONSOLE, second["batch_id"], workers=0, randbytes=_replayed_entropy(seed)
    )
    assert done["state"] == "generated"
    assert done["generated_count"] == 20
    assert not set(_pins(rt, first["batch_id"])) & set(_pins(rt, second["batch_id"]))
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count(t.vouchers.c.pin_hash.distinct()))).scalar_one() == 40


def _rotate_lookup_key(rt: Runtime) -> None:
    rt.keyring = Keyring(
        lookup_keys={**rt.keyring.lookup_keys, 2: b"\x02" * 32},
        encryption_keys=rt.keyring.encryption_keys,
        active_lookup_key_id=2,
        active_encryption_key_id=rt.keyring.active_encryption_key_id,
    )


@pytest.mark.usefixtures("catalog")
def test_after_a_lookup_key_rotation_no_pin_issued_under_an_older_key_is_issued_again(
    rt: Runtime,
) -> None:
    seed = os.urandom(8 * 400)
    first = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=20).batch
    generation.fill_batch(
        rt, CONSOLE, first["batch_id"], workers=0, randbytes=_replayed_entropy(seed)
    )
    _rotate_lookup_key(rt)
    # The new batch draws the first batch's PINs first; hashed under the new key they do
    # not collide on the UNIQUE column, but a redemption would find two vouchers.
    second = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=20).batch
    done = generation.fill_batch(
        rt, CONSOLE, second["batch_id"], workers=0, randbytes=_replayed_entropy(seed)
    )
    assert done["generated_count"] == 20
    old, new = _pins(rt, first["batch_id"]), _pins(rt, second["batch_id"])
    assert not set(old) & set(new)
    with rt.engine.connect() as conn:
        key_ids = set(
            conn.execute(
                select(t.vouchers.c.lookup_key_id).where(
                    t.vouchers.c.batch_id == second["batch_id"]
                )
            ).scalars()
        )
    assert key_ids == {2}
    for pin in old + new:
        assert care.voucher_by_pin(rt, CONSOLE, pin)["serial"]


@pytest.mark.usefixtures("catalog")
def test_a_failure_midway_leaves_a_failed_batch_whose_vouchers_are_never_usable(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt.settings = rt.settings.model_copy(update={"generation_chunk_size": 100})
    monkeypatch.setattr(bulk, "SQLITE_ROWS_PER_TRANSACTION", 200)
    real_load, real_copy, loads = bulk.load, bulk.copy_binary, []

    def breaks_on_the_fourth_chunk(real: Any) -> Any:
        def load(*args: Any, **kwargs: Any) -> Any:
            loads.append(1)
            if len(loads) == 4:
                raise OSError("disk full")
            return real(*args, **kwargs)

        return load

    # Rows (SQLite) or binary COPY streams (PostgreSQL): whichever the generator writes.
    monkeypatch.setattr(bulk, "load", breaks_on_the_fourth_chunk(real_load))
    monkeypatch.setattr(bulk, "copy_binary", breaks_on_the_fourth_chunk(real_copy))
    factories.subscriber(rt, "254700000001")
    batch = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=1000).batch
    with pytest.raises(OSError, match="disk full"):
        generation.fill_batch(rt, CONSOLE, batch["batch_id"], workers=0)
    monkeypatch.setattr(bulk, "load", real_load)
    monkeypatch.setattr(bulk, "copy_binary", real_copy)

    failed = lifecycle.get_batch(rt, CONSOLE, batch["batch_id"])
    assert failed["state"] == "failed"
    assert failed["error"] == "OSError"
    written = _vouchers(rt, batch["batch_id"])
    # Progress is committed with the vouchers it counts: whole transactions only.
    assert failed["generated_count"] == len(written) in (200, 300)
    for action in ("activate", "freeze", "unfreeze"):
        with pytest.raises(Conflict):
            lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], action)
    pin = rt.keyring.decrypt(written[0].encryption_key_id, written[0].pin_ciphertext)
    with pytest.raises(ResultError) as refused:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin))
    assert refused.value.result is Result.BATCH_NOT_ACTIVE
    assert lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "delete")["state"] == "deleted"
    # The next batch is unaffected and gets serials after the failed batch's range.
    after = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=5)
    assert int(after["serial_first"]) == int(batch["serial_last"]) + 1


@pytest.mark.usefixtures("catalog")
def test_a_batch_left_generating_by_a_dead_process_is_marked_failed(rt: Runtime) -> None:
    orphan = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=50).batch
    assert generation.fail_stalled_batches(rt, CONSOLE, timedelta(minutes=5)) == []
    assert generation.fail_stalled_batches(rt, CONSOLE, timedelta(0)) == [orphan["batch_id"]]
    assert lifecycle.get_batch(rt, CONSOLE, orphan["batch_id"])["state"] == "failed"
    with pytest.raises(Conflict):
        generation.fill_batch(rt, CONSOLE, orphan["batch_id"])


def test_a_killed_generation_leaves_no_usable_voucher(rt: Runtime, tmp_path: Path) -> None:
    """A real crash: the CLI generating a large batch is killed with SIGKILL."""
    factories.standard_catalog(rt)
    env = {
        **os.environ,
        "VOMS_DATABASE_URL": rt.settings.database_url,
        "VOMS_KEYS_FILE": str(rt.settings.keys_file),
        "VOMS_GENERATION_CHUNK_SIZE": "1000",
    }
    voms = Path(sys.executable).with_name("voms")
    process = subprocess.Popen(
        [str(voms), "batch", "generate", "--type", "TOPUP10", "--count", "5000000"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            page = lifecycle.list_batches(rt, CONSOLE)["items"]
            if page and page[0]["generated_count"] > 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("generation made no progress")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    batch = lifecycle.list_batches(rt, CONSOLE)["items"][0]
    assert batch["state"] == "generating"
    assert 0 < batch["generated_count"] < batch["count"]
    with pytest.raises(Conflict):
        lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "activate")
    assert generation.fail_stalled_batches(rt, CONSOLE, timedelta(0)) == [batch["batch_id"]]
    assert lifecycle.get_batch(rt, CONSOLE, batch["batch_id"])["state"] == "failed"


@pytest.mark.usefixtures("catalog")
def test_no_pin_is_stored_in_clear_anywhere_in_the_database(rt: Runtime) -> None:
    pairs = factories.active_batch(rt, count=300)
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", pairs[0][0], pairs[9][0], "stolen")
    pins = {pin for _, pin in pairs}
    dump = []
    with rt.engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                dump.extend(repr(value) for value in row)
                dump.extend(value.hex() for value in row if isinstance(value, bytes))
    text = "\n".join(dump)
    assert not [pin for pin in pins if pin in text]
    path = rt.settings.sqlite_path()
    if path is not None:  # and not in the file's bytes (pages, WAL), whatever the encoding
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert not [pin for pin in pins if pin.encode() in raw]


@pytest.mark.usefixtures("catalog")
def test_no_pin_reaches_the_logs(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    rt.settings = rt.settings.model_copy(update={"generation_chunk_size": 100})
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # every statement
        try:
            pairs = factories.active_batch(rt, count=450)
            care.voucher_by_pin(rt, CONSOLE, pairs[3][1])
        finally:
            logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert "FROM vouchers" in caplog.text  # the statements were logged, with parameters
    assert not [pin for _, pin in pairs if pin in caplog.text]
