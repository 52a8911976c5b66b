"""Legacy voucher import on SQLite and PostgreSQL: all or nothing, every bad line named."""

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from tests import factories
from voms.crypto import Keyring
from voms.db import tables as t
from voms.domain.errors import Conflict, Invalid
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime
from voms.services import generation, housekeeping, lifecycle, redemption, voucher_import
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest
from voms.services.voucher_import import ImportRefused

NEXT_YEAR = (datetime.now(UTC) + timedelta(days=365)).date().isoformat()


def new_pin(length: int = 14) -> str:
    return with_check_digit("".join(secrets.choice("0123456789") for _ in range(length - 1)))


def legacy(rows: Iterable[tuple[Any, ...]], header: bool = True) -> list[str]:
    lines = ["serial,pin,voucher_type,expires_at\n"] if header else []
    return lines + [",".join(str(value) for value in row) + "\n" for row in rows]


def run_import(rt: Runtime, lines: list[str], **options: Any) -> dict[str, Any]:
    return voucher_import.import_vouchers(rt, CONSOLE, lambda: lines, **options)


def counts(rt: Runtime) -> tuple[int, int]:
    with rt.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(t.batches)).scalar_one(),
            conn.execute(select(func.count()).select_from(t.vouchers)).scalar_one(),
        )


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)


def test_a_legacy_file_becomes_one_inactive_batch_whose_pins_redeem(
    rt: Runtime, catalog: None
) -> None:
    serials = [5_000_001, 5_000_002, 5_000_005, 5_000_009]  # gaps: sold and used before
    pins = [new_pin() for _ in serials]
    batch = run_import(
        rt, legacy((s, p, "TOPUP10", NEXT_YEAR) for s, p in zip(serials, pins, strict=True))
    )
    assert batch["state"] == "generated"
    assert batch["count"] == 4
    assert (batch["serial_first"], batch["serial_last"]) == ("000005000001", "000005000009")
    # A date means the end of that day.
    assert batch["expires_at"] == datetime.fromisoformat(NEXT_YEAR).replace(tzinfo=UTC) + timedelta(
        days=1
    )

    lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "activate")
    factories.subscriber(rt)
    answer = redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pins[2]))
    assert answer["result_code"] == 0
    assert answer["serial"] == "000005000005"


def test_every_bad_line_is_reported_with_its_number_and_nothing_is_imported(
    rt: Runtime, catalog: None
) -> None:
    factories.voucher_type(rt, "TOPUP50")
    generated = factories.active_batch(rt, count=3)
    existing_serial, existing_pin = generated[0]
    good = new_pin()
    twice = new_pin()
    bad_luhn = good[:-1] + str((int(good[-1]) + 1) % 10)
    past = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    other_year = (datetime.now(UTC) + timedelta(days=400)).date().isoformat()
    lines = legacy(
        [
            (7_000_001, good, "TOPUP10", NEXT_YEAR),  # line 2: fine
            (7_000_002, new_pin(), "TOPUP10"),  # 3
            ("70000x3", new_pin(), "TOPUP10", NEXT_YEAR),  # 4
            (7_000_004, new_pin(), "NOPE", NEXT_YEAR),  # 5
            (7_000_005, "1234abcd567890", "TOPUP10", NEXT_YEAR),  # 6
            (7_000_006, new_pin(12), "TOPUP10", NEXT_YEAR),  # 7
            (7_000_007, bad_luhn, "TOPUP10", NEXT_YEAR),  # 8
            (7_000_008, new_pin(), "TOPUP10", "31/12/2027"),  # 9
            (7_000_009, new_pin(), "TOPUP10", past),  # 10
            (7_000_010, new_pin(), "TOPUP50", NEXT_YEAR),  # 11
            (7_000_011, new_pin(), "TOPUP10", other_year),  # 12
            (7_000_001, new_pin(), "TOPUP10", NEXT_YEAR),  # 13: serial of line 2
            (7_000_013, twice, "TOPUP10", NEXT_YEAR),  # 14
            (7_000_014, twice, "TOPUP10", NEXT_YEAR),  # 15: PIN of line 14
            (int(existing_serial), new_pin(), "TOPUP10", NEXT_YEAR),  # 16
            (7_000_016, existing_pin, "TOPUP10", NEXT_YEAR),  # 17
        ]
    )
    before = counts(rt)
    with pytest.raises(ImportRefused) as refused:
        run_import(rt, lines)
    reasons = {bad.line: bad.reason for bad in refused.value.bad_lines}
    assert reasons == {
        3: "expected 4 fields (serial, pin, voucher_type, expires_at), found 3",
        4: "serial: a serial must be a string of digits",
        5: "unknown voucher type 'NOPE'",
        6: "PIN must be digits",
        7: "PIN has 12 digits; voucher type TOPUP10 needs 14",
        8: "PIN check digit (Luhn) is wrong",
        9: "expiry '31/12/2027' is not an ISO 8601 date (2027-12-31) or time",
        10: reasons[10],
        11: "voucher type TOPUP50 differs from TOPUP10 on line 2 (one import makes one batch)",
        12: "expiry differs from line 2's (one import makes one batch, with one expiry)",
        13: "duplicate serial (first on line 2)",
        15: "duplicate PIN (first on line 14)",
        16: reasons[16],
        17: "PIN already issued to another voucher",
    }
    assert reasons[10].startswith("expired on ")
    assert reasons[16].startswith("serial already exists (batch ")
    assert str(refused.value) == "14 bad line(s); nothing was imported"
    assert counts(rt) == before
    for pin in (good, twice, existing_pin, bad_luhn):
        assert all(pin not in reason for reason in reasons.values())
    with rt.engine.connect() as conn:
        refusal = conn.execute(
            select(t.audit_log.c.detail).where(t.audit_log.c.action == "batch.import_refused")
        ).scalar_one()
    assert refusal["bad_lines"] == 14
    assert refusal["issued_pins"] == 1


def test_blank_lines_are_skipped_and_the_header_is_optional(rt: Runtime, catalog: None) -> None:
    rows = [(8_000_001, new_pin(), "TOPUP10", NEXT_YEAR), (8_000_002, "12", "TOPUP10", NEXT_YEAR)]
    lines = legacy(rows, header=False)
    lines.insert(1, "\n")
    with pytest.raises(ImportRefused) as refused:
        run_import(rt, lines)
    assert [bad.line for bad in refused.value.bad_lines] == [3]


def test_a_serial_inside_another_batch_s_range_is_refused(rt: Runtime, catalog: None) -> None:
    batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=3)
    lifecycle.change_vouchers(rt, CONSOLE, "delete", batch["serial_first"])
    inside = int(batch["serial_first"]) + 1
    with pytest.raises(ImportRefused) as refused:
        run_import(rt, legacy([(inside, new_pin(), "TOPUP10", NEXT_YEAR)]))
    assert "serial already exists" in refused.value.bad_lines[0].reason


def test_a_file_whose_range_would_enclose_a_batch_is_refused(rt: Runtime, catalog: None) -> None:
    batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=2)
    below, above = int(batch["serial_first"]) - 5, int(batch["serial_last"]) + 5
    rows = [(below, new_pin(), "TOPUP10", NEXT_YEAR), (above, new_pin(), "TOPUP10", NEXT_YEAR)]
    with pytest.raises(Invalid, match=f"span batch {batch['batch_id']}"):
        run_import(rt, legacy(rows))


def test_generated_serials_never_run_into_imported_ones(rt: Runtime, catalog: None) -> None:
    high = 100_000_000_500  # above the serial counter of a fresh installation
    run_import(rt, legacy([(high, new_pin(), "TOPUP10", NEXT_YEAR)]))
    batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=2)
    assert int(batch["serial_first"]) == high + 1


def test_a_retried_import_with_its_request_id_imports_nothing_more(
    rt: Runtime, catalog: None
) -> None:
    lines = legacy([(9_000_001, new_pin(), "TOPUP10", NEXT_YEAR)])
    first = run_import(rt, lines, request_id="legacy-1")
    again = run_import(rt, lines, request_id="legacy-1")
    assert again["batch_id"] == first["batch_id"]
    assert counts(rt) == (1, 1)
    with pytest.raises(Conflict, match="different parameters"):
        run_import(
            rt, legacy([(9_000_002, new_pin(), "TOPUP10", NEXT_YEAR)]), request_id="legacy-1"
        )


def test_a_file_that_changes_between_check_and_write_imports_nothing(
    rt: Runtime, catalog: None
) -> None:
    versions = [
        legacy([(9_100_001, new_pin(), "TOPUP10", NEXT_YEAR)] * 1),
        legacy([(9_100_001, new_pin(), "TOPUP10", NEXT_YEAR)]),
    ]

    def read() -> list[str]:
        return versions.pop(0)

    with pytest.raises(Conflict, match="changed"):
        voucher_import.import_vouchers(rt, CONSOLE, read)
    assert counts(rt) == (0, 0)


def test_an_empty_file_is_refused(rt: Runtime, catalog: None) -> None:
    with pytest.raises(Invalid, match="no vouchers"):
        run_import(rt, legacy([]))


def test_a_pin_issued_under_an_older_lookup_key_or_archived_is_refused(
    rt: Runtime, catalog: None
) -> None:
    archived_serial, archived_pin = factories.active_batch(rt, count=2)[0]
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.batches)
            .where(t.batches.c.serial_first <= int(archived_serial))
            .values(expires_at=datetime.now(UTC) - timedelta(days=1000))
        )
    housekeeping.run_job(rt, CONSOLE, "voucher_archive")
    with rt.engine.connect() as conn:
        assert conn.execute(
            select(func.count()).where(t.voucher_archive.c.serial == int(archived_serial))
        ).scalar_one()
    _, old_key_pin = factories.active_batch(rt, count=2)[0]
    rt.keyring = Keyring(
        lookup_keys={**rt.keyring.lookup_keys, 2: b"\x02" * 32},
        encryption_keys=rt.keyring.encryption_keys,
        active_lookup_key_id=2,
        active_encryption_key_id=rt.keyring.active_encryption_key_id,
    )
    lines = legacy(
        [
            (8_000_001, new_pin(), "TOPUP10", NEXT_YEAR),
            (8_000_002, archived_pin, "TOPUP10", NEXT_YEAR),  # line 3
            (8_000_003, old_key_pin, "TOPUP10", NEXT_YEAR),  # line 4
        ]
    )
    before = counts(rt)
    with pytest.raises(ImportRefused) as refused:
        run_import(rt, lines)
    assert {bad.line: bad.reason for bad in refused.value.bad_lines} == {
        3: "PIN already issued to another voucher",
        4: "PIN already issued to another voucher",
    }
    assert counts(rt) == before


def test_a_pin_archived_between_check_and_write_imports_nothing(
    rt: Runtime, catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = new_pin()
    real_scan = voucher_import._scan

    def scan_then_archive(*args: Any, **kwargs: Any) -> Any:
        found = real_scan(*args, **kwargs)
        # Meanwhile the archive job moves in a voucher that had this PIN.
        with rt.engine.begin() as conn:
            conn.execute(
                insert(t.voucher_archive).values(
                    serial=9_999_999,
                    batch_id=1,
                    pin_hash=rt.keyring.lookup_hash(pin),
                    lookup_key_id=rt.keyring.active_lookup_key_id,
                    state="redeemed",
                    voucher_state="redeemed",
                    expires_at=datetime.now(UTC),
                    archived_at=datetime.now(UTC),
                )
            )
        return found

    monkeypatch.setattr(voucher_import, "_scan", scan_then_archive)
    before = counts(rt)
    with pytest.raises(Conflict, match="archived meanwhile"):
        run_import(rt, legacy([(8_100_001, pin, "TOPUP10", NEXT_YEAR)]))
    assert counts(rt) == before
