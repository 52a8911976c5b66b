"""Lifecycle and care services on SQLite and PostgreSQL: effective states, history, keys."""

import itertools
import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests import factories
from voms.crypto import Keyring
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, ResultError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import care, generation, lifecycle, redemption
from voms.services.auth import CONSOLE, Principal
from voms.services.redemption import RedemptionRequest

MSISDN = "254700000001"


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)


def _redeem_code(rt: Runtime, pin: str) -> int:
    try:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))
    except ResultError as error:
        return error.result.code
    return 0


@pytest.mark.usefixtures("catalog")
def test_batch_and_voucher_states_combine_into_what_redemption_sees(rt: Runtime) -> None:
    batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=4)
    pairs = [(serial, rt.keyring.decrypt(k, c)) for serial, k, c in _stored(rt, batch["batch_id"])]
    assert care.voucher_by_serial(rt, CONSOLE, pairs[0][0])["state"] == "inactive"
    assert _redeem_code(rt, pairs[0][1]) == Result.NOT_YET_ACTIVE.code
    lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "activate")
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", pairs[1][0])
    assert _redeem_code(rt, pairs[1][1]) == Result.FROZEN.code
    lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "freeze", "stolen")
    assert _redeem_code(rt, pairs[0][1]) == Result.BATCH_NOT_ACTIVE.code
    assert care.voucher_by_serial(rt, CONSOLE, pairs[0][0])["state"] == "frozen"
    lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "unfreeze")
    # Unfreezing the batch leaves the voucher frozen on its own.
    assert _redeem_code(rt, pairs[1][1]) == Result.FROZEN.code
    assert _redeem_code(rt, pairs[0][1]) == 0
    lifecycle.change_vouchers(rt, CONSOLE, "delete", pairs[2][0])
    assert _redeem_code(rt, pairs[2][1]) == Result.DELETED.code
    lifecycle.amend_batch(rt, CONSOLE, batch["batch_id"], utcnow() - timedelta(seconds=1))
    assert _redeem_code(rt, pairs[3][1]) == Result.EXPIRED.code
    assert care.voucher_by_serial(rt, CONSOLE, pairs[3][0])["state"] == "expired"


def _stored(rt: Runtime, batch_id: int) -> list[tuple[str, int, bytes]]:
    v = t.vouchers
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(v.c.serial, v.c.encryption_key_id, v.c.pin_ciphertext)
            .where(v.c.batch_id == batch_id)
            .order_by(v.c.serial)
        ).all()
    return [(f"{r.serial:012d}", r.encryption_key_id, r.pin_ciphertext) for r in rows]


@pytest.mark.usefixtures("catalog")
def test_the_history_tells_who_did_what_to_which_serials_and_why(rt: Runtime) -> None:
    pairs = factories.active_batch(rt, count=5)
    alice = Principal(name="alice", role=CONSOLE.role)
    lifecycle.change_vouchers(rt, alice, "freeze", pairs[1][0], pairs[3][0], "damaged")
    lifecycle.change_vouchers(rt, alice, "unfreeze", pairs[1][0], pairs[3][0])
    redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pairs[2][1]))
    shown = care.voucher_by_serial(rt, CONSOLE, pairs[2][0])
    assert [(h["action"], h["actor"], h["reason"]) for h in shown["history"]] == [
        ("generate", "console", None),
        ("generated", "console", None),
        ("activate", "console", None),
        ("voucher_freeze", "alice", "damaged"),
        ("voucher_unfreeze", "alice", None),
        ("redemption", "console", None),
    ]
    assert shown["history"][3]["serial_from"] == pairs[1][0]
    assert shown["history"][3]["serial_to"] == pairs[3][0]
    assert shown["state"] == "redeemed"
    assert shown["redeemed_by"] == MSISDN
    assert shown["redeemed_at"] is not None
    # Vouchers outside the range do not show the range's operations.
    untouched = care.voucher_by_serial(rt, CONSOLE, pairs[0][0])
    assert [h["action"] for h in untouched["history"]] == ["generate", "generated", "activate"]
    with rt.engine.connect() as conn:
        audited = conn.execute(
            select(t.audit_log.c.action).where(t.audit_log.c.actor == "alice")
        ).scalars()
        assert list(audited) == ["voucher.freeze", "voucher.unfreeze"]


@pytest.mark.usefixtures("catalog")
def test_a_pin_is_found_under_every_live_lookup_key(rt: Runtime) -> None:
    old = factories.active_batch(rt, count=2)
    rotated = Keyring(
        lookup_keys={**rt.keyring.lookup_keys, 2: b"\x02" * 32},
        encryption_keys=rt.keyring.encryption_keys,
        active_lookup_key_id=2,
        active_encryption_key_id=rt.keyring.active_encryption_key_id,
    )
    rt.keyring = rotated
    new = factories.active_batch(rt, count=2)
    with rt.engine.connect() as conn:
        key_ids = dict(
            (r.serial, r.lookup_key_id)
            for r in conn.execute(select(t.vouchers.c.serial, t.vouchers.c.lookup_key_id))
        )
    assert key_ids[int(old[0][0])] == 1
    assert key_ids[int(new[0][0])] == 2
    for serial, pin in old + new:
        assert care.voucher_by_pin(rt, CONSOLE, pin)["serial"] == serial


@pytest.mark.usefixtures("catalog")
def test_concurrent_orders_get_disjoint_serial_ranges(rt: Runtime) -> None:
    results: list[dict[str, object]] = []
    errors: list[BaseException] = []

    def order() -> None:
        try:
            results.append(generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=50))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=order) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ranges = sorted((int(str(b["serial_first"])), int(str(b["serial_last"]))) for b in results)
    assert all(last - first == 49 for first, last in ranges)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
    with rt.engine.connect() as conn:
        assert len(conn.execute(select(t.vouchers.c.serial)).all()) == 200


@pytest.mark.usefixtures("catalog")
def test_a_batch_too_large_for_its_pin_space_is_refused(rt: Runtime) -> None:
    factories.voucher_type(rt, "SHORT", pin_length=8)
    with pytest.raises(Exception, match="too many") as refused:
        generation.create_batch(rt, CONSOLE, voucher_type="SHORT", count=1_000_001)
    assert getattr(refused.value, "http_status", None) == 422
    assert generation.generate_batch(rt, CONSOLE, voucher_type="SHORT", count=50)["state"] == (
        "generated"
    )


@pytest.mark.usefixtures("catalog")
def test_serials_never_exceed_their_width(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"serial_width": 12})
    with rt.engine.begin() as conn:
        conn.execute(
            t.counters.update().where(t.counters.c.name == "serial").values(next_value=10**12 - 3)
        )
    with pytest.raises(Conflict, match="exhausted"):
        generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=5)
    assert (
        generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=3)["serial_last"]
        == "999999999999"
    )


@pytest.mark.usefixtures("catalog")
def test_the_creator_is_remembered_for_four_eyes(rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"require_approval": True})
    maker = Principal(name="maker", role=CONSOLE.role)
    batch = generation.generate_batch(rt, maker, voucher_type="TOPUP10", count=2)
    assert batch["created_by"] == "maker"
    with pytest.raises(Exception, match="four-eyes"):
        lifecycle.change_batch(rt, maker, batch["batch_id"], "activate")
    checker = replace(maker, name="checker")
    assert lifecycle.change_batch(rt, checker, batch["batch_id"], "activate")["state"] == "active"


@pytest.mark.usefixtures("catalog")
def test_concurrent_orders_with_one_request_id_make_one_batch(rt: Runtime) -> None:
    operator = Principal(name="ordering-key", role=CONSOLE.role, api_key_id=77)
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def order() -> None:
        start.wait()
        try:
            batch = generation.generate_batch(
                rt, operator, voucher_type="TOPUP10", count=30, request_id="same-order"
            )
            results.append(int(batch["batch_id"]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=order) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    with rt.engine.connect() as conn:
        assert len(conn.execute(select(t.batches.c.id)).all()) == 1
        assert len(conn.execute(select(t.vouchers.c.serial)).all()) == 30
