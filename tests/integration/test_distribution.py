"""Partners and encrypted exports, against SQLite and PostgreSQL; files opened by gpg."""

import csv
import hashlib
import io
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from sqlalchemy import func, select

from tests import factories
from tests.pgp import GOOD_UID, PartnerKeys, make_short_lived_key, stop_agent
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.distribution import LinkExpired
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import distribution, lifecycle
from voms.services.auth import CONSOLE, Principal
from voms.services.distribution import ExportIn, PartnerIn


def add_partner(
    rt: Runtime, key: str, name: str = "printshop", actor: Principal = CONSOLE, **fields: Any
) -> dict[str, Any]:
    return distribution.create_partner(
        rt, actor, PartnerIn(name=name, public_key=key, contact="ops@print.example", **fields)
    )


def export(rt: Runtime, actor: Principal = CONSOLE, **fields: Any) -> tuple[dict[str, Any], bytes]:
    """Run an export to a file in memory; the record and the encrypted bytes."""
    out = io.BytesIO()
    fields.setdefault("partner", "printshop")
    record = distribution.create_export(rt, actor, ExportIn(**fields), output=out)
    return record, out.getvalue()


def rows_of(keys: PartnerKeys, ciphertext: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(keys.decrypt(ciphertext).decode())))


def exported(rt: Runtime) -> dict[int, tuple[int | None, int | None]]:
    """Every voucher's (partner id, export id), (None, None) if never exported."""
    v, e = t.vouchers, t.voucher_exports
    with rt.engine.connect() as conn:
        return {
            row.serial: (row.partner_id, row.export_id)
            for row in conn.execute(
                select(v.c.serial, e.c.partner_id, e.c.export_id).select_from(
                    v.outerjoin(e, e.c.serial == v.c.serial)
                )
            )
        }


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)


# --- partners ------------------------------------------------------------------------


def test_a_partner_is_added_with_its_key_fingerprint_and_user_id(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    partner = add_partner(rt, partner_keys.good)
    assert partner["key_fingerprint"] == partner_keys.good_fingerprint
    assert partner["key_user_ids"] == [GOOD_UID]
    assert partner["state"] == "active"
    assert distribution.list_partners(rt, CONSOLE) == [partner]
    assert distribution.get_partner(rt, CONSOLE, "printshop") == partner


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("expired", "expired"),
        ("revoked", "revoked"),
        ("sign_only", "no usable encryption subkey"),
        ("secret", "public key starts with"),
    ],
)
def test_unusable_keys_are_refused_with_the_reason(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, which: str, reason: str
) -> None:
    with pytest.raises(Invalid, match=reason):
        add_partner(rt, getattr(partner_keys, which))
    assert distribution.list_partners(rt, CONSOLE) == []


def test_text_that_is_no_key_is_refused(rt: Runtime, catalog: None) -> None:
    with pytest.raises(Invalid, match="public key"):
        add_partner(rt, "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbm90IGEga2V5\n-----END PGP")


def test_two_keys_in_one_block_are_refused(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    both = partner_keys.gpg("--armor", "--export", partner_keys.good_fingerprint, "Retail Chain")
    with pytest.raises(Invalid, match="2 keys"):
        add_partner(rt, both.stdout.decode())


def test_partner_names_are_unique(rt: Runtime, catalog: None, partner_keys: PartnerKeys) -> None:
    add_partner(rt, partner_keys.good)
    with pytest.raises(Conflict, match="already exists"):
        add_partner(rt, partner_keys.other)


def test_a_disabled_partner_gets_no_more_exports(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    batch = factories.active_batch(rt, count=3)
    assert distribution.disable_partner(rt, CONSOLE, "printshop")["state"] == "disabled"
    with pytest.raises(Conflict, match="disabled"):
        export(rt, serial_from=batch[0][0], serial_to=batch[-1][0])


# --- exports -------------------------------------------------------------------------


def test_an_export_decrypts_with_gpg_to_the_vouchers_and_their_pins(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=25)
    record, ciphertext = export(rt, voucher_type="TOPUP10")

    text = partner_keys.decrypt(ciphertext).decode()
    assert text.splitlines()[0].startswith("serial,pin,voucher_type,expires_at")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["serial"], r["pin"]) for r in rows] == vouchers
    assert {r["voucher_type"] for r in rows} == {"TOPUP10"}
    assert {(r["value"], r["currency"]) for r in rows} == {("1000", "KES")}
    assert record["voucher_count"] == 25
    assert record["reissued_count"] == 0
    assert record["key_fingerprint"] == partner_keys.good_fingerprint
    assert record["sha256"] == hashlib.sha256(ciphertext).hexdigest()
    assert record["size_bytes"] == len(ciphertext)
    for pin in (pin for _, pin in vouchers):
        assert pin.encode() not in ciphertext


def test_exported_vouchers_remember_their_partner_and_export(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    first = factories.active_batch(rt, count=4)
    second = factories.active_batch(rt, count=4)
    record, _ = export(rt, serial_from=first[0][0], serial_to=first[-1][0])
    marks = exported(rt)
    assert {marks[int(s)] for s, _ in first} == {(_partner_id(rt), record["export_id"])}
    assert {marks[int(s)] for s, _ in second} == {(None, None)}


def test_filters_select_by_batch_serial_range_and_voucher_type(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    factories.voucher_type(rt, "TOPUP50")
    add_partner(rt, partner_keys.good)
    a = factories.active_batch(rt, count=5)
    b = factories.active_batch(rt, "TOPUP50", count=5)
    c = factories.active_batch(rt, count=5)
    batch_b = _batch_of(rt, b[0][0])

    _, by_batch = export(rt, batch_id=batch_b)
    assert [r["serial"] for r in rows_of(partner_keys, by_batch)] == [s for s, _ in b]

    # A range across three batches, narrowed to one type: the TOPUP10 vouchers inside it.
    _, by_range = export(rt, serial_from=a[3][0], serial_to=c[1][0], voucher_type="TOPUP10")
    assert [r["serial"] for r in rows_of(partner_keys, by_range)] == [
        a[3][0],
        a[4][0],
        c[0][0],
        c[1][0],
    ]
    _, by_type = export(rt, voucher_type="TOPUP10", reissue=True)
    assert [r["serial"] for r in rows_of(partner_keys, by_type)] == [s for s, _ in a + c]


def _partner_id(rt: Runtime, name: str = "printshop") -> int:
    with rt.engine.connect() as conn:
        return int(
            conn.execute(select(t.partners.c.id).where(t.partners.c.name == name)).scalar_one()
        )


def _batch_of(rt: Runtime, serial: str) -> int:
    with rt.engine.connect() as conn:
        return int(
            conn.execute(
                select(t.vouchers.c.batch_id).where(t.vouchers.c.serial == int(serial))
            ).scalar_one()
        )


def test_only_vouchers_still_usable_are_exported(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    from voms.services import redemption
    from voms.services.redemption import RedemptionRequest

    add_partner(rt, partner_keys.good)
    factories.subscriber(rt)
    vouchers = factories.active_batch(rt, count=6)
    serials = [s for s, _ in vouchers]
    redeemed = redemption.redeem(
        rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=vouchers[0][1])
    )
    assert redeemed["result_code"] == 0
    reserved = redemption.reserve(
        rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=vouchers[1][1])
    )
    assert reserved["result_code"] == 0
    lifecycle.change_vouchers(rt, CONSOLE, "delete", serials[2])
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", serials[3], reason="investigation")

    _, ciphertext = export(rt, serial_from=serials[0], serial_to=serials[-1])
    # Frozen vouchers may go to a print shop (unfrozen on delivery); the rest may not.
    assert [r["serial"] for r in rows_of(partner_keys, ciphertext)] == serials[3:]


@pytest.mark.parametrize("batch_action", ["freeze", None])
def test_inactive_and_frozen_batches_are_exported(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, batch_action: str | None
) -> None:
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=3, activate=batch_action is not None)
    batch_id = _batch_of(rt, vouchers[0][0])
    if batch_action:
        lifecycle.change_batch(rt, CONSOLE, batch_id, batch_action)
    record, _ = export(rt, batch_id=batch_id)
    assert record["voucher_count"] == 3


def test_deleted_failed_and_generating_batches_are_never_exported(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    from voms.services import generation

    add_partner(rt, partner_keys.good)
    deleted = _batch_of(rt, factories.active_batch(rt, count=2)[0][0])
    lifecycle.change_batch(rt, CONSOLE, deleted, "delete")
    generating = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=5)
    for batch_id in (deleted, generating.batch["batch_id"]):
        with pytest.raises(Conflict, match="not exported"):
            export(rt, batch_id=batch_id)
    with pytest.raises(Invalid, match="no exportable vouchers"):
        export(rt, voucher_type="TOPUP10")


def test_expired_vouchers_are_not_exported(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    batch_id = _batch_of(rt, factories.active_batch(rt, count=2)[0][0])
    lifecycle.amend_batch(rt, CONSOLE, batch_id, utcnow() - timedelta(days=1))
    with pytest.raises(Invalid, match="no exportable vouchers"):
        export(rt, batch_id=batch_id)


def test_exporting_vouchers_again_needs_reissue_and_is_recorded(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    add_partner(rt, partner_keys.other, name="retail")
    vouchers = factories.active_batch(rt, count=6)
    batch_id = _batch_of(rt, vouchers[0][0])
    first, _ = export(rt, serial_from=vouchers[0][0], serial_to=vouchers[2][0])

    with pytest.raises(Conflict, match="3 of the 6 matching vouchers were exported before"):
        export(rt, partner="retail", batch_id=batch_id)
    again, ciphertext = export(rt, partner="retail", batch_id=batch_id, reissue=True)

    assert again["voucher_count"] == 6
    assert again["reissued_count"] == 3
    assert again["reissue"] is True
    retail_rows = rows_of(partner_keys, ciphertext)
    assert [(r["serial"], r["pin"]) for r in retail_rows] == vouchers
    marks = exported(rt)
    assert {marks[int(s)] for s, _ in vouchers} == {(_partner_id(rt, "retail"), again["export_id"])}
    listed = distribution.list_exports(rt, CONSOLE)
    assert [e["export_id"] for e in listed] == [again["export_id"], first["export_id"]]
    with rt.engine.connect() as conn:
        actions = conn.execute(
            select(t.audit_log.c.action).where(t.audit_log.c.object_type == "export")
        ).scalars()
        assert sorted(actions) == ["export.create", "export.reissue"]


def test_the_export_is_in_the_vouchers_history(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=2)
    export(rt, serial_from=vouchers[0][0], serial_to=vouchers[1][0])
    with rt.engine.connect() as conn:
        history = lifecycle.history(conn, int(vouchers[1][0]), rt.settings.serial_width)
    assert [event["action"] for event in history][-1] == "export"


def test_no_pin_reaches_the_audit_log_or_the_export_record(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=5)
    record, _ = export(rt, voucher_type="TOPUP10")
    with rt.engine.connect() as conn:
        audit_rows = [str(tuple(row)) for row in conn.execute(select(t.audit_log))]
        export_rows = [str(tuple(row)) for row in conn.execute(select(t.exports))]
        events = [str(tuple(row)) for row in conn.execute(select(t.voucher_events))]
    for _, pin in vouchers:
        for text in [str(record), *audit_rows, *export_rows, *events]:
            assert pin not in text


def test_an_xlsx_export_opens_in_a_spreadsheet_library_after_gpg(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=12)
    record, ciphertext = export(rt, voucher_type="TOPUP10", format="xlsx")
    assert record["file_name"].endswith(".xlsx.gpg")
    workbook = openpyxl.load_workbook(io.BytesIO(partner_keys.decrypt(ciphertext)), read_only=True)
    rows = list(workbook.active.iter_rows(values_only=True))
    assert rows[0][:4] == ("serial", "pin", "voucher_type", "expires_at")
    assert [(r[0], r[1]) for r in rows[1:]] == vouchers
    assert {(r[2], r[4], r[5]) for r in rows[1:]} == {("TOPUP10", 1000, "KES")}


def test_a_failure_while_writing_rolls_the_whole_export_back(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    from dataclasses import replace

    from voms.crypto import Keyring, KeyringError

    add_partner(rt, partner_keys.good)
    factories.active_batch(rt, count=7)
    # A server started with the wrong key file cannot decrypt the PINs: the export
    # fails part-way through the file.
    wrong_keys = replace(rt, keyring=Keyring.new().with_new_encryption_key())
    wrong_keys = replace(wrong_keys, keyring=_without_key(wrong_keys.keyring, 1))
    with pytest.raises(KeyringError):
        export(wrong_keys, voucher_type="TOPUP10")
    assert set(exported(rt).values()) == {(None, None)}
    assert distribution.list_exports(rt, CONSOLE) == []


def _without_key(keyring: Any, key_id: int) -> Any:
    from voms.crypto import Keyring

    return Keyring(
        lookup_keys=keyring.lookup_keys,
        encryption_keys={k: v for k, v in keyring.encryption_keys.items() if k != key_id},
        active_lookup_key_id=keyring.active_lookup_key_id,
        active_encryption_key_id=keyring.active_encryption_key_id,
    )


# --- scope ---------------------------------------------------------------------------


def test_a_distributor_of_another_provider_cannot_export_or_see_the_partner(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    factories.standard_catalog(rt, "BETA")
    add_partner(rt, partner_keys.good, service_provider="ACME")
    batch_id = _batch_of(rt, factories.active_batch(rt, count=2)[0][0])
    beta = Principal(name="beta-distributor", role=Role.DISTRIBUTOR, service_provider_id=2)
    with pytest.raises(Forbidden):
        export(rt, beta, batch_id=batch_id)
    with pytest.raises(Forbidden):
        distribution.get_partner(rt, beta, "printshop")
    assert distribution.list_partners(rt, beta) == []
    operator = Principal(name="operator", role=Role.OPERATOR)
    with pytest.raises(Forbidden):
        export(rt, operator, batch_id=batch_id)


def test_a_partner_of_one_provider_gets_no_vouchers_of_another(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    factories.standard_catalog(rt, "BETA")
    add_partner(rt, partner_keys.good, service_provider="BETA")
    factories.active_batch(rt, count=2)
    with pytest.raises(Forbidden, match="does not serve"):
        export(rt, voucher_type="TOPUP10")


def test_a_serial_range_over_two_providers_is_refused(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    factories.standard_catalog(rt, "BETA")
    add_partner(rt, partner_keys.good)
    a = factories.active_batch(rt, count=2)
    b = factories.active_batch(rt, "TOPUP10_BETA", count=2)
    with pytest.raises(Invalid, match="several service providers"):
        export(rt, serial_from=a[0][0], serial_to=b[1][0])


def test_unknown_references_are_not_found(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    add_partner(rt, partner_keys.good)
    with pytest.raises(NotFound, match="partner 'nobody'"):
        export(rt, partner="nobody", voucher_type="TOPUP10")
    with pytest.raises(NotFound, match="voucher type 'NOPE'"):
        export(rt, voucher_type="NOPE")
    with pytest.raises(NotFound, match="batch 99"):
        export(rt, batch_id=99)


def test_an_export_needs_a_filter_and_a_whole_serial_range() -> None:
    with pytest.raises(ValueError, match="give batch_id"):
        ExportIn(partner="printshop")
    with pytest.raises(ValueError, match="go together"):
        ExportIn(partner="printshop", serial_from="100000000001")


def test_an_imported_batch_with_gaps_exports_in_serial_order(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voms.domain.pins import with_check_digit
    from voms.services import voucher_import

    # Small chunks, so that the gaps fall across several of them.
    monkeypatch.setattr(distribution, "CLAIM_ROWS", 3)
    add_partner(rt, partner_keys.good)
    serials = [5_000_001, 5_000_002, 5_000_010, 5_000_011, 5_000_500, 5_009_999, 5_010_000]
    pins = [with_check_digit(f"{9_000_000_000_000 + n:013d}") for n in range(len(serials))]
    year = (utcnow() + timedelta(days=100)).date().isoformat()
    lines = [f"{s},{p},TOPUP10,{year}\n" for s, p in zip(serials, pins, strict=True)]
    batch = voucher_import.import_vouchers(rt, CONSOLE, lambda: lines)
    record, ciphertext = export(rt, batch_id=batch["batch_id"])
    assert record["voucher_count"] == 7
    assert [(int(r["serial"]), r["pin"]) for r in rows_of(partner_keys, ciphertext)] == list(
        zip(serials, pins, strict=True)
    )


def _kept_chunks(rt: Runtime, export_id: int) -> int:
    c = t.export_file_chunks
    with rt.engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).where(c.c.export_id == export_id)).scalar_one()
        )


def _check_expired_files_are_purged(
    rt: Runtime, partner_keys: PartnerKeys, purge: Callable[[datetime | None], int]
) -> None:
    """A kept file survives ``purge`` while its link is valid and is deleted after."""
    add_partner(rt, partner_keys.good)
    factories.active_batch(rt, count=3)
    record = distribution.create_export(rt, CONSOLE, ExportIn(partner="printshop", batch_id=1))
    assert record["download_token"]
    assert purge(None) == 0
    assert _kept_chunks(rt, record["export_id"]) == 1
    later = utcnow() + timedelta(minutes=rt.settings.export_link_minutes + 1)

    assert purge(later) == 1

    assert _kept_chunks(rt, record["export_id"]) == 0
    with pytest.raises(LinkExpired):
        distribution.open_export_file(rt, CONSOLE, record["export_id"], record["download_token"])


def test_kept_files_are_deleted_once_their_link_has_expired(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    _check_expired_files_are_purged(
        rt, partner_keys, lambda now: distribution.purge_export_files(rt, now=now)
    )


def test_the_housekeeping_job_purges_expired_export_files(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    from voms.services import housekeeping

    def purge(now: datetime | None) -> int:
        run = housekeeping.run_job(rt, CONSOLE, "export_file_purge", now=now)
        assert run["outcome"] == "succeeded"
        return int(run["rows_affected"])

    _check_expired_files_are_purged(rt, partner_keys, purge)


def test_two_simultaneous_exports_never_hand_out_the_same_voucher_twice(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    import threading

    add_partner(rt, partner_keys.good)
    add_partner(rt, partner_keys.other, name="retail")
    factories.active_batch(rt, count=2_000)
    start = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def run(partner: str) -> None:
        start.wait()
        try:
            outcomes[partner] = export(rt, partner=partner, batch_id=1)[0]["voucher_count"]
        except Conflict as exc:
            outcomes[partner] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in ("printshop", "retail")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = [value for value in outcomes.values() if isinstance(value, int)]
    refused = [value for value in outcomes.values() if isinstance(value, Conflict)]
    assert (counts, len(refused)) == ([2_000], 1)
    assert len(distribution.list_exports(rt, CONSOLE)) == 1
    assert len({marks for marks in exported(rt).values()}) == 1


def test_no_pin_reaches_the_logs_even_at_debug_level(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from voms.services import voucher_import

    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=20)
    legacy_pin = "79927398713"  # a valid Luhn number, of the wrong length for TOPUP10
    with caplog.at_level(logging.DEBUG):
        export(rt, voucher_type="TOPUP10", format="xlsx")
        with pytest.raises(voucher_import.ImportRefused):
            voucher_import.import_vouchers(
                rt, CONSOLE, lambda: [f"900001,{legacy_pin},TOPUP10,2099-01-01\n"]
            )
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert "gnupg" in {record.name for record in caplog.records}  # gpg's chatter was seen
    for pin in [legacy_pin, *(pin for _, pin in vouchers)]:
        assert pin not in logged


def test_a_key_that_expired_since_it_was_added_is_refused_until_the_partner_gets_a_new_one(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, tmp_path: Path
) -> None:
    home = tmp_path / "gnupg"
    armored, expires_at = make_short_lived_key(home, seconds=3)
    try:
        add_partner(rt, armored)
    finally:
        stop_agent(home)
    vouchers = factories.active_batch(rt, count=3)
    time.sleep(max(0.0, expires_at - time.time() + 1))
    with pytest.raises(Conflict, match="expired"):
        export(rt, voucher_type="TOPUP10")
    assert set(exported(rt).values()) == {(None, None)}

    renewed = distribution.replace_partner_key(
        rt, CONSOLE, "printshop", distribution.PartnerKeyIn(public_key=partner_keys.good)
    )
    assert renewed["key_fingerprint"] == partner_keys.good_fingerprint
    _, ciphertext = export(rt, voucher_type="TOPUP10")
    assert [(r["serial"], r["pin"]) for r in rows_of(partner_keys, ciphertext)] == vouchers
    with pytest.raises(Invalid, match="revoked"):
        distribution.replace_partner_key(
            rt, CONSOLE, "printshop", distribution.PartnerKeyIn(public_key=partner_keys.revoked)
        )


# --- exports in steps and in the background ---------------------------------------------


def _wait_for(rt: Runtime, export_id: int, state: str) -> dict[str, Any]:
    for _ in range(600):
        record = distribution.get_export(rt, CONSOLE, export_id)
        if record["state"] == state:
            return record
        time.sleep(0.05)
    raise AssertionError(f"export {export_id} is still {record['state']}")


def test_an_export_holds_the_write_lock_for_one_chunk_at_a_time_and_shows_its_progress(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distribution, "CLAIM_ROWS", 10)
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=95)
    seen: list[tuple[str, int, int]] = []

    def progress(done: int, total: int) -> None:
        # Other writers go on while the export runs: this would wait for the export's
        # lock, on this very thread, if the export were one transaction.
        with rt.engine.begin() as conn:
            conn.execute(
                t.audit_log.insert().values(
                    at=utcnow(), actor="x", action="a", object_type="o", object_id="1", detail={}
                )
            )
        [running] = distribution.list_exports(rt, CONSOLE)
        seen.append((running["state"], running["exported_count"], total))

    out = io.BytesIO()
    body = ExportIn(partner="printshop", voucher_type="TOPUP10")
    record = distribution.create_export(rt, CONSOLE, body, output=out, progress=progress)
    assert record["state"] == "exported"
    assert record["exported_count"] == record["voucher_count"] == 95
    assert len(seen) == 10
    assert {state for state, _, _ in seen} == {"exporting"}
    assert {total for _, _, total in seen} == {95}
    assert [count for _, count, _ in seen] == sorted(count for _, count, _ in seen)
    assert [(r["serial"], r["pin"]) for r in rows_of(partner_keys, out.getvalue())] == vouchers


def test_a_large_export_ordered_over_the_api_runs_in_the_background(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    rt.settings = rt.settings.model_copy(update={"background_export_threshold": 5})
    add_partner(rt, partner_keys.good)
    vouchers = factories.active_batch(rt, count=12)
    small = distribution.order_export(
        rt, CONSOLE, ExportIn(partner="printshop", serial_from=vouchers[0][0],
                              serial_to=vouchers[4][0])
    )  # fmt: skip
    assert small["state"] == "exported"
    ordered = distribution.order_export(
        rt, CONSOLE, ExportIn(partner="printshop", voucher_type="TOPUP10", reissue=True)
    )
    assert ordered["state"] == "exporting"
    assert ordered["voucher_count"] == 12
    assert ordered["download_token"]
    done = _wait_for(rt, ordered["export_id"], "exported")
    assert (done["exported_count"], done["reissued_count"]) == (12, 5)
    assert done["download_expires_at"] is not None
    found = distribution.open_export_file(
        rt, CONSOLE, ordered["export_id"], ordered["download_token"]
    )
    ciphertext = b"".join(found.chunks)
    assert [(r["serial"], r["pin"]) for r in rows_of(partner_keys, ciphertext)] == vouchers


def test_a_background_export_that_fails_is_kept_failed_with_its_marks_undone(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys
) -> None:
    from dataclasses import replace

    from voms.crypto import Keyring

    add_partner(rt, partner_keys.good)
    add_partner(rt, partner_keys.other, name="retail")
    vouchers = factories.active_batch(rt, count=30)
    first, _ = export(rt, serial_from=vouchers[0][0], serial_to=vouchers[9][0])
    before = exported(rt)
    wrong_keys = replace(rt, keyring=_without_key(Keyring.new().with_new_encryption_key(), 1))
    wrong_keys.settings = rt.settings.model_copy(update={"background_export_threshold": 0})
    ordered = distribution.order_export(
        wrong_keys, CONSOLE, ExportIn(partner="retail", voucher_type="TOPUP10", reissue=True)
    )
    failed = _wait_for(rt, ordered["export_id"], "failed")
    assert failed["error"] == "KeyringError"
    # The reissue's marks are gone, and the ten vouchers exported before have theirs back.
    assert exported(rt) == before
    assert {before[int(s)] for s, _ in vouchers[:10]} == {(first_partner(rt), first["export_id"])}
    with pytest.raises(Conflict, match="failed; it has no file"):
        distribution.open_export_file(rt, CONSOLE, ordered["export_id"], ordered["download_token"])
    again, ciphertext = export(rt, partner="retail", voucher_type="TOPUP10", reissue=True)
    assert again["reissued_count"] == 10
    assert len(rows_of(partner_keys, ciphertext)) == 30


class Killed(Exception):
    pass


def first_partner(rt: Runtime) -> int:
    return _partner_id(rt, "printshop")


def test_an_export_left_by_a_dead_process_is_failed_and_undone(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(distribution, "CLAIM_ROWS", 10)
    add_partner(rt, partner_keys.good)
    factories.active_batch(rt, count=40)

    def die(done: int, total: int) -> None:
        if done >= 20:
            raise Killed

    # The process dies after two chunks: nothing of ours runs any more, no clean-up.
    monkeypatch.setattr(distribution, "_abandon", lambda *args, **kwargs: None)
    body = ExportIn(partner="printshop", voucher_type="TOPUP10")
    with pytest.raises(Killed):
        distribution.create_export(rt, CONSOLE, body, output=io.BytesIO(), progress=die)
    [left] = distribution.list_exports(rt, CONSOLE)
    assert left["state"] == "exporting"
    assert {m for m in exported(rt).values() if m != (None, None)}

    assert distribution.fail_stalled_exports(rt) == []  # it stepped just now
    later = utcnow() + distribution.STALLED_AFTER + timedelta(seconds=1)
    assert distribution.purge_export_files(rt, later) == 0
    [failed] = distribution.list_exports(rt, CONSOLE)
    assert (failed["state"], failed["error"]) == ("failed", "stalled")
    assert set(exported(rt).values()) == {(None, None)}
    again, _ = export(rt, voucher_type="TOPUP10")
    assert again["voucher_count"] == 40


def test_a_reissue_that_cannot_forget_the_marks_it_replaced_stays_complete(
    rt: Runtime, catalog: None, partner_keys: PartnerKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_partner(rt, partner_keys.good)
    factories.active_batch(rt, count=5)
    export(rt, voucher_type="TOPUP10")

    def broken(export_id: int) -> Any:
        def step(*args: Any) -> None:
            raise OSError("connection lost")

        return step

    monkeypatch.setattr(distribution, "_dropper", broken)
    again, _ = export(rt, voucher_type="TOPUP10", reissue=True)
    assert distribution.get_export(rt, CONSOLE, again["export_id"])["state"] == "exported"
    assert {mark for mark in exported(rt).values()} == {(first_partner(rt), again["export_id"])}
    monkeypatch.undo()
    # The replaced marks left behind do not stand in the way of the next reissue.
    third, _ = export(rt, voucher_type="TOPUP10", reissue=True)
    assert third["reissued_count"] == 5
