"""Housekeeping jobs on both databases: what each does, history, leases, resuming."""

import struct
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from tests import factories
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, ResultError
from voms.domain.roles import Role
from voms.jobs.scheduler import Scheduler
from voms.runtime import Runtime
from voms.services import care, housekeeping, lifecycle, redemption, reversal
from voms.services.auth import CONSOLE, Principal
from voms.services.generation import Sealer, write_chunk, write_copy
from voms.services.housekeeping import runner
from voms.services.housekeeping.registry import JOBS
from voms.services.redemption import RedemptionRequest
from voms.services.sealing import COPY_HEADER, COPY_TRAILER, SealedCopy, seal_copy

MSISDN = "254700000001"
LONG_AGO = utcnow() - timedelta(days=400)


class Injected(Exception):
    """A failure injected between two chunks."""


def count(rt: Runtime, table: Any, *where: Any) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def fail_after(chunks: int) -> runner.Progress:
    seen = 0

    def progress(rows: int, total: int) -> None:
        nonlocal seen
        seen += 1
        if seen == chunks:
            raise Injected("stop here")

    return progress


def small_chunks(rt: Runtime, size: int) -> None:
    rt.settings = rt.settings.model_copy(update={"housekeeping_chunk_size": size})


def expire_batch_long_ago(rt: Runtime, batch_id: int) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.batches).where(t.batches.c.id == batch_id).values(expires_at=LONG_AGO)
        )


def batch_id_of(rt: Runtime, serial: str) -> int:
    with rt.engine.connect() as conn:
        return int(
            conn.execute(
                select(t.vouchers.c.batch_id).where(t.vouchers.c.serial == int(serial))
            ).scalar_one()
        )


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)


def redeem(rt: Runtime, pin: str) -> dict[str, Any]:
    return redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))


def redeemed_and_deleted_long_ago(rt: Runtime, *, redeemed: str, deleted: str) -> None:
    """Back-date a redeemed and a deleted voucher past the archive retention, with the
    redemption and the range deletion that made them so (they share their moment)."""
    v, x, e = t.vouchers, t.transactions, t.voucher_events
    with rt.engine.begin() as conn:
        conn.execute(update(v).where(v.c.serial == int(redeemed)).values(redeemed_at=LONG_AGO))
        conn.execute(
            update(x).where(x.c.serial == int(redeemed), x.c.result_code == 0).values(at=LONG_AGO)
        )
        conn.execute(update(v).where(v.c.serial == int(deleted)).values(state_changed_at=LONG_AGO))
        conn.execute(
            update(e)
            .where(e.c.action == "voucher_delete", e.c.serial_from == int(deleted))
            .values(at=LONG_AGO)
        )


# --- archive -----------------------------------------------------------------------------


def test_archiving_moves_old_redeemed_deleted_and_expired_vouchers_and_lookups_still_find_them(
    rt: Runtime, catalog: None
) -> None:
    live = factories.active_batch(rt, count=6)
    expired = factories.active_batch(rt, count=4)
    redeem(rt, live[0][1])
    redeem(rt, live[1][1])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", live[2][0], reason="damaged")
    redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=live[3][1]))
    expire_batch_long_ago(rt, batch_id_of(rt, expired[0][0]))
    # Only live[0] was redeemed long ago; live[1] is recent and stays.
    redeemed_and_deleted_long_ago(rt, redeemed=live[0][0], deleted=live[2][0])

    result = housekeeping.run_job(rt, CONSOLE, "voucher_archive")

    assert result["outcome"] == "succeeded"
    assert result["rows_affected"] == 6
    with rt.engine.connect() as conn:
        a = t.voucher_archive
        archived = dict(conn.execute(select(a.c.serial, a.c.state)).all())
        remaining = set(conn.execute(select(t.vouchers.c.serial)).scalars())
    assert archived == {
        int(live[0][0]): "redeemed",
        int(live[2][0]): "deleted",
        **{int(serial): "expired" for serial, _ in expired},
    }
    assert remaining == {int(serial) for serial, _ in live} - set(archived)
    # Lookups by serial and by PIN still find an archived voucher.
    found = care.voucher_by_serial(rt, CONSOLE, live[0][0])
    assert (found["state"], found["archived"], found["redeemed_by"]) == ("redeemed", True, MSISDN)
    assert care.voucher_by_pin(rt, CONSOLE, expired[1][1])["serial"] == expired[1][0]
    assert care.voucher_by_pin(rt, CONSOLE, expired[1][1])["state"] == "expired"
    # A second run finds nothing more to do.
    assert housekeeping.run_job(rt, CONSOLE, "voucher_archive")["rows_affected"] == 0


def test_an_archived_pin_answers_its_final_state_and_is_no_bad_pin(
    rt: Runtime, catalog: None
) -> None:
    live = factories.active_batch(rt, count=3)
    expired = factories.active_batch(rt, count=1)
    redeem(rt, live[0][1])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", live[1][0], reason="damaged")
    expire_batch_long_ago(rt, batch_id_of(rt, expired[0][0]))
    redeemed_and_deleted_long_ago(rt, redeemed=live[0][0], deleted=live[1][0])
    housekeeping.run_job(rt, CONSOLE, "voucher_archive")
    assert count(rt, t.voucher_archive) == 3

    codes = []
    for pin in (live[0][1], live[1][1], expired[0][1]):
        for _ in range(rt.settings.max_bad_pin_attempts):
            with pytest.raises(ResultError) as refused:
                redeem(rt, pin)
            codes.append(refused.value.result.code)

    per_pin = rt.settings.max_bad_pin_attempts
    assert codes == [2009] * per_pin + [2013] * per_pin + [2014] * per_pin
    assert redeem(rt, live[2][1])["result_code"] == 0  # never blacklisted
    with rt.engine.connect() as conn:
        serials = conn.execute(
            select(t.transactions.c.serial).where(t.transactions.c.result_code == 2009)
        ).scalars()
        assert set(serials) == {int(live[0][0])}


def test_an_archive_run_that_fails_midway_resumes_without_loss_or_double_work(
    rt: Runtime, catalog: None
) -> None:
    pairs = factories.active_batch(rt, count=250)
    expire_batch_long_ago(rt, batch_id_of(rt, pairs[0][0]))
    small_chunks(rt, 100)

    first = housekeeping.run_job(rt, CONSOLE, "voucher_archive", progress=fail_after(2))

    assert (first["outcome"], first["rows_affected"]) == ("failed", 200)
    assert "Injected: stop here" in first["error"]
    assert count(rt, t.voucher_archive) == 200
    assert count(rt, t.vouchers) == 50
    second = housekeeping.run_job(rt, CONSOLE, "voucher_archive")
    assert (second["outcome"], second["rows_affected"]) == ("succeeded", 50)
    with rt.engine.connect() as conn:
        archived = conn.execute(select(t.voucher_archive.c.serial)).scalars().all()
    assert sorted(archived) == sorted(int(serial) for serial, _ in pairs)
    runs = housekeeping.list_runs(rt, CONSOLE, job="voucher_archive")["runs"]
    assert [(r["outcome"], r["rows_affected"]) for r in runs] == [
        ("succeeded", 50),
        ("failed", 200),
    ]


def test_archiving_goes_only_where_archivable_vouchers_are_and_later_runs_take_what_aged(
    rt: Runtime, catalog: None
) -> None:
    live = factories.active_batch(rt, count=400)
    redeem(rt, live[10][1])
    redeem(rt, live[390][1])
    held = redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=live[200][1]))
    redemption.commit(rt, CONSOLE, held["reservation_id"])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", live[300][0], live[301][0], reason="lost")
    redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=live[50][1]))
    expired = factories.active_batch(rt, count=150)
    redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=expired[7][1]))
    expire_batch_long_ago(rt, batch_id_of(rt, expired[0][0]))
    small_chunks(rt, 100)

    today = housekeeping.run_job(rt, CONSOLE, "voucher_archive")

    # Only the expired batch (its reserved voucher stays): two windows of its 150 serials,
    # none over the 400 live vouchers, and no redemption old enough to walk.
    assert today["rows_affected"] == 149
    assert (today["detail"]["serial_ranges"], today["detail"]["chunks"]) == (1, 2)
    later = housekeeping.run_job(rt, CONSOLE, "voucher_archive", now=utcnow() + timedelta(days=181))

    # The redemption, the commit and the range deletion of today are past the retention
    # now: one window over the 2 deleted serials, one chunk of the 3 redemptions.
    assert later["rows_affected"] == 5
    assert (later["detail"]["serial_ranges"], later["detail"]["chunks"]) == (1, 2)
    with rt.engine.connect() as conn:
        a = t.voucher_archive
        archived = dict(conn.execute(select(a.c.serial, a.c.state)).all())
    expected = {
        int(live[10][0]): "redeemed",
        int(live[390][0]): "redeemed",
        int(live[200][0]): "redeemed",
        int(live[300][0]): "deleted",
        int(live[301][0]): "deleted",
        **{int(serial): "expired" for i, (serial, _) in enumerate(expired) if i != 7},
    }
    assert archived == expected
    assert count(rt, t.vouchers) == 400 + 150 - len(expected)
    # Nothing more is due: the next run walks nothing but the batches' list.
    again = housekeeping.run_job(rt, CONSOLE, "voucher_archive", now=utcnow() + timedelta(days=182))
    assert (again["rows_affected"], again["detail"]["serial_ranges"]) == (0, 0)
    assert again["detail"].get("chunks", 0) == 0


def test_a_voucher_reactivated_by_a_reversal_is_not_archived_by_its_old_redemption(
    rt: Runtime, catalog: None
) -> None:
    live = factories.active_batch(rt, count=3)
    done = redeem(rt, live[0][1])
    body = {"reason": "wrong number", "reactivate_voucher": True}
    reversal.reverse(rt, CONSOLE, done["transaction_id"], body)

    later = housekeeping.run_job(rt, CONSOLE, "voucher_archive", now=utcnow() + timedelta(days=181))

    assert later["rows_affected"] == 0
    assert count(rt, t.vouchers) == 3


def _archived_pin(rt: Runtime) -> tuple[Sealer, int, bytes]:
    """A batch archived whole: a sealer for it, its last serial, and the lookup hash of
    the PIN its first voucher had."""
    pairs = factories.active_batch(rt, count=3)
    batch_id = batch_id_of(rt, pairs[0][0])
    expire_batch_long_ago(rt, batch_id)
    housekeeping.run_job(rt, CONSOLE, "voucher_archive")
    with rt.engine.connect() as conn:
        archived = conn.execute(
            select(t.voucher_archive.c.pin_hash).where(
                t.voucher_archive.c.serial == int(pairs[0][0])
            )
        ).scalar_one()
    return Sealer.for_batch(rt.keyring, batch_id, 14), int(pairs[-1][0]), archived


def test_an_archived_pin_is_never_issued_again(rt: Runtime, catalog: None) -> None:
    sealer, last, archived = _archived_pin(rt)
    serial = last + 1000
    row = sealer.seal([serial])[0]
    colliding = (row[0], row[1], archived, *row[3:])  # the PIN an archived voucher had

    with rt.engine.begin() as conn:
        write_chunk(conn, sealer, [colliding])

    with rt.engine.connect() as conn:
        written = conn.execute(
            select(t.vouchers.c.pin_hash).where(t.vouchers.c.serial == serial)
        ).scalar_one()
    holders = count(rt, t.vouchers, t.vouchers.c.pin_hash == archived)
    assert written != archived
    assert holders == 0


def test_an_archived_pin_is_never_issued_again_through_the_binary_copy(
    rt: Runtime, catalog: None
) -> None:
    """The COPY path (PostgreSQL) asks the database which of a chunk's PINs were archived,
    over the chunk's serial range, and draws those again."""
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite writes no binary COPY")
    sealer, last, archived = _archived_pin(rt)
    first = last + 1000
    sealed = seal_copy(sealer, range(first, first + 3))
    record = struct.Struct(sealed.record_format)
    body = sealed.data[len(COPY_HEADER) : -len(COPY_TRAILER)]
    records = [list(each) for each in record.iter_unpack(body)]
    records[1][6] = archived  # the middle voucher gets the PIN an archived voucher had
    data = COPY_HEADER + b"".join(record.pack(*each) for each in records) + COPY_TRAILER

    with rt.engine.begin() as conn:
        write_copy(conn, sealer, SealedCopy(data, 3, sealed.record_format))

    with rt.engine.connect() as conn:
        written = dict(
            conn.execute(
                select(t.vouchers.c.serial, t.vouchers.c.pin_hash).where(
                    t.vouchers.c.serial.between(first, first + 2)
                )
            ).all()
        )
    assert sorted(written) == [first, first + 1, first + 2]  # none lost, none doubled
    assert written[first + 1] != archived
    assert written[first] == records[0][6]
    assert written[first + 2] == records[2][6]
    assert count(rt, t.vouchers, t.vouchers.c.pin_hash == archived) == 0


# --- expiry counts -------------------------------------------------------------------------


def test_expiry_counts_count_unused_vouchers_of_expired_batches_and_withdraw_amended_ones(
    rt: Runtime, catalog: None
) -> None:
    pairs = factories.active_batch(rt, count=8)
    other = factories.active_batch(rt, count=3)
    redeem(rt, pairs[0][1])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", pairs[1][0])
    batch_id = batch_id_of(rt, pairs[0][0])
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.batches)
            .where(t.batches.c.id == batch_id)
            .values(expires_at=utcnow() - timedelta(days=1))
        )

    result = housekeeping.run_job(rt, CONSOLE, "expiry_counts")

    assert result["rows_affected"] == 6
    with rt.engine.connect() as conn:
        rows = conn.execute(select(t.batch_expiries.c.batch_id, t.batch_expiries.c.expired_count))
        assert dict(rows.all()) == {batch_id: 6}
    assert housekeeping.run_job(rt, CONSOLE, "expiry_counts")["rows_affected"] == 0
    lifecycle.amend_batch(rt, CONSOLE, batch_id, utcnow() + timedelta(days=30))
    assert housekeeping.run_job(rt, CONSOLE, "expiry_counts")["detail"]["withdrawn"] == 1
    assert count(rt, t.batch_expiries) == 0
    assert other  # the live batch was never counted


# --- reservations, blacklists, request ids -------------------------------------------------


def test_reservation_timeouts_apply_the_voucher_types_action(rt: Runtime, catalog: None) -> None:
    pairs = factories.active_batch(rt, count=2)
    for _, pin in pairs:
        redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))

    result = housekeeping.run_job(
        rt, CONSOLE, "reservation_timeouts", now=utcnow() + timedelta(days=1)
    )

    assert result["rows_affected"] == 2
    assert count(rt, t.reservations, t.reservations.c.state == "open") == 0
    assert housekeeping.run_job(rt, CONSOLE, "reservation_timeouts")["rows_affected"] == 0


def test_blacklists_are_released_when_over(rt: Runtime) -> None:
    now = utcnow()
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.pin_attempts),
            [
                {
                    "msisdn": "1",
                    "failures": 5,
                    "blacklisted_until": now - timedelta(minutes=1),
                    "updated_at": now,
                },
                {
                    "msisdn": "2",
                    "failures": 5,
                    "blacklisted_until": now + timedelta(hours=1),
                    "updated_at": now,
                },
            ],
        )
    assert housekeeping.run_job(rt, CONSOLE, "blacklist_release")["rows_affected"] == 1
    with rt.engine.connect() as conn:
        assert conn.execute(select(t.pin_attempts.c.msisdn)).scalars().all() == ["2"]


def test_request_ids_past_retention_are_purged_in_chunks(rt: Runtime) -> None:
    old = utcnow() - timedelta(hours=rt.settings.idempotency_retention_hours + 1)
    rows = [
        {
            "scope": "key:1",
            "request_id": f"r{i}",
            "request_hash": "h",
            "status_code": 200,
            "response": {},
            "created_at": old - timedelta(seconds=i % 7),
        }
        for i in range(250)
    ]
    rows.append({**rows[0], "request_id": "fresh", "created_at": utcnow()})
    with rt.engine.begin() as conn:
        conn.execute(insert(t.idempotency_keys), rows)
    small_chunks(rt, 100)
    chunks: list[int] = []

    result = housekeeping.run_job(
        rt, CONSOLE, "request_id_purge", progress=lambda rows, total: chunks.append(rows)
    )

    assert result["rows_affected"] == 250 == sum(chunks)
    assert len(chunks) >= 3
    assert count(rt, t.idempotency_keys) == 1


# --- leases, history, scheduler ------------------------------------------------------------


def test_a_job_has_one_runner_at_a_time(rt: Runtime, catalog: None) -> None:
    pairs = factories.active_batch(rt, count=30)
    expire_batch_long_ago(rt, batch_id_of(rt, pairs[0][0]))
    small_chunks(rt, 10)
    inside, go_on = threading.Event(), threading.Event()

    def hold(rows: int, total: int) -> None:
        inside.set()
        assert go_on.wait(30)

    results: list[dict[str, Any]] = []
    first = threading.Thread(
        target=lambda: results.append(
            housekeeping.run_job(rt, CONSOLE, "voucher_archive", progress=hold)
        )
    )
    first.start()
    try:
        assert inside.wait(30)
        with pytest.raises(Conflict, match="running elsewhere"):
            housekeeping.run_job(rt, CONSOLE, "voucher_archive")
        jobs = {job["name"]: job for job in housekeeping.list_jobs(rt, CONSOLE)}
        assert jobs["voucher_archive"]["running_on"] is not None
        # Other jobs are not held up.
        assert housekeeping.run_job(rt, CONSOLE, "blacklist_release")["outcome"] == "succeeded"
    finally:
        go_on.set()
        first.join(30)
    assert results[0]["rows_affected"] == 30
    assert housekeeping.run_job(rt, CONSOLE, "voucher_archive")["outcome"] == "succeeded"


def test_a_runner_that_died_frees_the_job_when_its_lease_expires(rt: Runtime) -> None:
    dead = runner.claim(rt, "blacklist_release", "cli")
    with pytest.raises(runner.JobBusy):
        runner.claim(rt, "blacklist_release", "cli")
    with rt.engine.begin() as conn:
        conn.execute(update(t.job_leases).values(expires_at=utcnow() - timedelta(seconds=1)))

    result = runner.run(rt, "blacklist_release")

    assert result["outcome"] == "succeeded"
    old = housekeeping.get_run(rt, CONSOLE, dead.run_id)
    assert old["outcome"] == "abandoned"
    assert old["finished_at"] is not None


def test_each_scheduled_slot_runs_once_across_schedulers(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(
        update={
            "job_schedules": {
                name: "off" for name in housekeeping.JOBS if name != "blacklist_release"
            }
        }
    )
    one, two = Scheduler(rt), Scheduler(rt)
    slot = utcnow().replace(second=0, microsecond=0)
    one.next_due = {"blacklist_release": slot}
    two.next_due = {"blacklist_release": slot}

    assert one.tick(slot + timedelta(seconds=1)) == ["blacklist_release"]
    one._running["blacklist_release"].result(30)
    assert two.tick(slot + timedelta(seconds=2)) == []

    runs = housekeeping.list_runs(rt, CONSOLE)["runs"]
    assert [(r["job"], r["trigger"], r["outcome"]) for r in runs] == [
        ("blacklist_release", "schedule", "succeeded")
    ]
    assert one.next_due["blacklist_release"] > slot
    one.stop()
    two.stop()


def test_a_failed_run_records_its_error(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.job_cursors).values(
                job="key_reencryption", position=0, detail={}, updated_at=utcnow()
            )
        )
        # A ciphertext under a key the key file does not have cannot be re-encrypted.
    factories.standard_catalog(rt)
    factories.active_batch(rt, count=1)
    with rt.engine.begin() as conn:
        conn.execute(update(t.vouchers).values(encryption_key_id=99))

    result = housekeeping.run_job(rt, CONSOLE, "key_reencryption")

    assert result["outcome"] == "failed"
    assert "encryption key 99 is not in the key file" in result["error"]
    run = housekeeping.list_runs(rt, CONSOLE, outcome="failed")["runs"][0]
    assert (run["job"], run["finished_at"] is not None) == ("key_reencryption", True)


def test_history_pages_and_roles(rt: Runtime) -> None:
    for _ in range(5):
        runner.run(rt, "blacklist_release")
    page = housekeeping.list_runs(rt, CONSOLE, limit=2)
    assert len(page["runs"]) == 2
    rest = housekeeping.list_runs(rt, CONSOLE, limit=10, cursor=int(page["next_cursor"]))
    assert len(rest["runs"]) == 3
    assert rest["next_cursor"] is None
    auditor = Principal(name="a", role=Role.AUDITOR)
    assert len(housekeeping.list_jobs(rt, auditor)) == len(JOBS)
    with pytest.raises(Forbidden):
        housekeeping.run_job(rt, auditor, "blacklist_release")
    with pytest.raises(Forbidden):
        housekeeping.list_runs(rt, Principal(name="c", role=Role.CHANNEL))
