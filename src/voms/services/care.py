"""Customer care lookups of one voucher, by serial or by PIN. Never the PIN itself.

Besides its history, a voucher shows the failed attempts made against it (who, when,
channel, result code), newest first: the last few in the voucher's view, the rest page
by page, each page one backward range scan of the transactions' (serial, at, id) index.
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import Connection, Row, select, tuple_

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Invalid, NotFound, ResultError
from voms.domain.pins import MAX_PIN_LENGTH, MIN_PIN_LENGTH, check_pin
from voms.domain.roles import Permission
from voms.domain.serials import format_serial, parse_serial
from voms.domain.states import BatchState, VoucherState, effective_voucher_state, is_expired
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.lifecycle import history
from voms.services.transactions import decode_cursor, encode_cursor, result_text
from voms.services.uow import UnitOfWork

_PIN_LENGTHS = frozenset(range(MIN_PIN_LENGTH, MAX_PIN_LENGTH + 1))
# Redemption-family attempts that changed the voucher (shown in its history).
_VOUCHER_CHANGES = ("redemption", "reservation", "commit", "revoke", "reversal")
ATTEMPTS_SHOWN = 20  # failed attempts in a voucher's view; more with GET …/attempts
MAX_ATTEMPTS_PAGE = 1000


class PinLookupIn(BaseModel):
    """POST /api/v1/vouchers/lookup (a PIN never travels in a URL)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    pin: Annotated[str, StringConstraints(max_length=64)]


_v, _b, _vt = t.vouchers, t.batches, t.voucher_types
_VOUCHER = select(
    _v.c.serial,
    _v.c.batch_id,
    _v.c.state,
    _v.c.redeemed_at,
    _v.c.redeemed_by,
    _b.c.state.label("batch_state"),
    _b.c.expires_at,
    _b.c.service_provider_id,
    _vt.c.code.label("voucher_type"),
).select_from(_v.join(_b, _b.c.id == _v.c.batch_id).join(_vt, _vt.c.id == _b.c.voucher_type_id))


# Archived vouchers (redeemed, expired or deleted long ago): their state was fixed when
# they were archived.
_a = t.voucher_archive
_ARCHIVED = select(
    _a.c.serial,
    _a.c.batch_id,
    _a.c.state,
    _a.c.voucher_state,
    _a.c.redeemed_at,
    _a.c.redeemed_by,
    _b.c.state.label("batch_state"),
    _a.c.expires_at,
    _b.c.service_provider_id,
    _vt.c.code.label("voucher_type"),
).select_from(_a.join(_b, _b.c.id == _a.c.batch_id).join(_vt, _vt.c.id == _b.c.voucher_type_id))


def _archived_public(conn: Connection, row: Row[Any], width: int) -> dict[str, Any]:
    return {
        "serial": format_serial(row.serial, width),
        "state": row.state,
        "voucher_state": row.voucher_state,
        "batch_id": row.batch_id,
        "batch_state": row.batch_state,
        "voucher_type": row.voucher_type,
        "expires_at": row.expires_at,
        "redeemed_at": row.redeemed_at,
        "redeemed_by": row.redeemed_by,
        "archived": True,
        "history": _history(conn, row.serial, width),
        "failed_attempts": failed_attempts(conn, row.serial, ATTEMPTS_SHOWN),
    }


def _public(conn: Connection, row: Row[Any], width: int) -> dict[str, Any]:
    batch_state, own_state = BatchState(row.batch_state), VoucherState(row.state)
    return {
        "serial": format_serial(row.serial, width),
        "state": effective_voucher_state(
            batch_state, own_state, is_expired(row.expires_at, utcnow())
        ),
        "voucher_state": own_state.value,
        "batch_id": row.batch_id,
        "batch_state": batch_state.value,
        "voucher_type": row.voucher_type,
        "expires_at": row.expires_at,
        "redeemed_at": row.redeemed_at,
        "redeemed_by": row.redeemed_by,
        "archived": False,
        "history": _history(conn, row.serial, width),
        "failed_attempts": failed_attempts(conn, row.serial, ATTEMPTS_SHOWN),
    }


def _history(conn: Connection, serial: int, width: int) -> list[dict[str, Any]]:
    """Batch and range operations covering the voucher, and what channels did to it."""
    entries = history(conn, serial, width)
    tx = t.transactions
    for row in conn.execute(
        select(tx.c.at, tx.c.kind, tx.c.actor, tx.c.channel, tx.c.recipient_msisdn)
        .where(tx.c.serial == serial, tx.c.result_code == 0, tx.c.kind.in_(_VOUCHER_CHANGES))
        .order_by(tx.c.at, tx.c.id)
    ):
        entries.append(
            {
                "at": row.at,
                "actor": row.actor,
                "action": row.kind,
                "batch_id": None,
                "serial_from": format_serial(serial, width),
                "serial_to": format_serial(serial, width),
                "reason": None,
                "channel": row.channel,
                "msisdn": row.recipient_msisdn,
            }
        )
    entries.sort(key=lambda entry: entry["at"])
    return entries


def failed_attempts(
    conn: Connection, serial: int, limit: int, cursor: str | None = None
) -> dict[str, Any]:
    """Failed attempts on the voucher, newest first: ``items`` and ``next_cursor``."""
    tx = t.transactions
    conditions = [tx.c.serial == serial, tx.c.result_code != 0]
    if cursor is not None:
        at, transaction_id = decode_cursor(cursor)
        conditions.append(tuple_(tx.c.at, tx.c.id) < tuple_(at, transaction_id))
    rows = conn.execute(
        select(
            tx.c.id,
            tx.c.at,
            tx.c.kind,
            tx.c.channel,
            tx.c.actor,
            tx.c.msisdn,
            tx.c.recipient_msisdn,
            tx.c.result_code,
        )
        .where(*conditions)
        .order_by(tx.c.at.desc(), tx.c.id.desc())
        .limit(limit + 1)
    ).all()
    page = rows[:limit]
    return {
        "items": [
            {
                "transaction_id": row.id,
                "at": row.at,
                "kind": row.kind,
                "channel": row.channel,
                "actor": row.actor,
                "msisdn": row.msisdn,
                "recipient_msisdn": row.recipient_msisdn,
                "result_code": row.result_code,
                "result_text": result_text(row.result_code),
            }
            for row in page
        ],
        "next_cursor": encode_cursor(page[-1].at, page[-1].id) if len(rows) > limit else None,
    }


def _found(actor: Principal, row: Row[*tuple[Any, ...]] | None, what: str) -> Row[Any]:
    # Out of scope looks like absent: a scoped key learns nothing of other providers.
    if row is None or (
        actor.service_provider_id is not None
        and row.service_provider_id != actor.service_provider_id
    ):
        raise NotFound(f"voucher {what} not found")
    return row


def voucher_by_serial(rt: Runtime, actor: Principal, serial: str) -> dict[str, Any]:
    """A voucher's effective state, expiry, redemption and history, by serial."""
    actor.require(Permission.LOOKUP)
    width = rt.settings.serial_width
    number = parse_serial(serial, width)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        live = conn.execute(_VOUCHER.where(_v.c.serial == number)).first()
        if live is None:
            archived = conn.execute(_ARCHIVED.where(_a.c.serial == number)).first()
            if archived is not None:
                found = _found(actor, archived, format_serial(number, width))
                return _archived_public(conn, found, width)
        return _public(conn, _found(actor, live, format_serial(number, width)), width)


def voucher_by_pin(rt: Runtime, actor: Principal, pin: str) -> dict[str, Any]:
    """The same, found by PIN: its keyed hash under every live lookup key."""
    actor.require(Permission.LOOKUP)
    try:
        clean = check_pin(pin, _PIN_LENGTHS)
    except ResultError as exc:
        raise Invalid(f"pin: {exc.result.text.lower()}") from None
    hashes = rt.keyring.lookup_hashes(clean)
    width = rt.settings.serial_width
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        live = conn.execute(_VOUCHER.where(_v.c.pin_hash.in_(hashes))).first()
        if live is None:
            archived = conn.execute(_ARCHIVED.where(_a.c.pin_hash.in_(hashes))).first()
            if archived is not None:
                return _archived_public(conn, _found(actor, archived, "with this PIN"), width)
        return _public(conn, _found(actor, live, "with this PIN"), width)


def voucher_attempts(
    rt: Runtime, actor: Principal, serial: str, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """Failed attempts on one voucher (live or archived), newest first, page by page."""
    actor.require(Permission.LOOKUP)
    if not 1 <= limit <= MAX_ATTEMPTS_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_ATTEMPTS_PAGE}")
    width = rt.settings.serial_width
    number = parse_serial(serial, width)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        row = (
            conn.execute(
                select(_b.c.service_provider_id)
                .select_from(_v.join(_b, _b.c.id == _v.c.batch_id))
                .where(_v.c.serial == number)
            ).first()
            or conn.execute(
                select(_b.c.service_provider_id)
                .select_from(_a.join(_b, _b.c.id == _a.c.batch_id))
                .where(_a.c.serial == number)
            ).first()
        )
        _found(actor, row, format_serial(number, width))
        return failed_attempts(conn, number, limit, cursor)


def redeem_on_behalf(
    rt: Runtime,
    actor: Principal,
    *,
    msisdn: str,
    pin: str,
    reason: str,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Redeem a PIN a subscriber reads out to care (channel ``care``); the reason goes to
    the audit log with the outcome, never the PIN."""
    from voms.services import audit, redemption

    actor.require(Permission.REDEEM)
    reason = reason.strip()
    if not 1 <= len(reason) <= 200:
        raise Invalid("give a reason of 1 to 200 characters")
    response = redemption.redeem(
        rt,
        actor,
        redemption.RedemptionRequest(msisdn=msisdn, pin=pin, channel="care", request_id=request_id),
    )
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        audit.record(
            conn,
            actor,
            "care.redeem_on_behalf",
            "transaction",
            response.get("transaction_id") or "-",
            actor.service_provider_id,
            {
                "reason": reason,
                "msisdn": response.get("recipient_msisdn") or msisdn[:32],
                "serial": response.get("serial"),
                "result_code": response["result_code"],
            },
        )
        uow.commit()
    return response
