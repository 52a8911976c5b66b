"""Sales: electronic PINs sold in one call, and ranges of printed cards activated.

An electronic sale is one transaction: the seller is charged (refused beyond its credit
limit), vouchers come out of stock (the seller's own electronic stock of the type, then
that of the resellers above it), become active, and are answered with their PINs. The
answer is the one place PINs leave the system in clear: it is audited without them, and
the idempotency record keeps it without them too. A retry with the same ``request_id``
decrypts the same vouchers' PINs again.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import Connection, Row, insert, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Invalid, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.roles import Permission
from voms.domain.serials import format_serial
from voms.runtime import Runtime
from voms.services import audit, idempotency, ranges
from voms.services.auth import Principal
from voms.services.catalog import Code
from voms.services.lifecycle import record_event
from voms.services.resellers import accounts, stock
from voms.services.uow import AnsweredBefore, UnitOfWork

MAX_SALE_COUNT = 100  # PINs in one answer
_sales, _sold, _v, _vt = t.sales, t.sale_vouchers, t.vouchers, t.voucher_types


class SaleIn(BaseModel):
    """POST /api/v1/sales."""

    model_config = ConfigDict(extra="forbid")

    voucher_type: Code
    count: int = Field(ge=1, le=MAX_SALE_COUNT)
    request_id: Annotated[
        str, StringConstraints(min_length=1, max_length=idempotency.MAX_REQUEST_ID_LENGTH)
    ]
    reseller: Code | None = None
    deliver_to_msisdn: str | None = Field(None, max_length=32)

    @field_validator("deliver_to_msisdn")
    @classmethod
    def _msisdn(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return normalize_msisdn(value)
        except ResultError:
            raise ValueError("not an MSISDN (digits, an optional leading +)") from None


@dataclass(frozen=True)
class Sold:
    """A sale's answer, and whether it is the first (False: a retry answered again)."""

    answer: dict[str, Any]
    first: bool


def unit_price(conn: Connection, voucher_type_id: int, currency: str) -> int:
    """What a voucher of the type is sold for: what its default scenario (or its only
    one) credits in balance types of ``currency``."""
    sc, credit, bt = t.scenarios, t.scenario_credits, t.balance_types
    scenarios = conn.execute(
        select(sc.c.id, sc.c.is_default).where(sc.c.voucher_type_id == voucher_type_id)
    ).all()
    chosen = [row.id for row in scenarios if row.is_default] or (
        [scenarios[0].id] if len(scenarios) == 1 else []
    )
    if not chosen:
        raise Conflict("the voucher type has no default scenario to take its price from")
    price = conn.execute(
        select(credit.c.amount)
        .join(bt, bt.c.id == credit.c.balance_type_id)
        .where(credit.c.scenario_id == chosen[0], bt.c.currency == currency)
    ).scalars()
    total = sum(price)
    if total <= 0:
        raise Conflict(f"the voucher type credits nothing in {currency}: it has no price")
    return int(total)


def _voucher_type_id(conn: Connection, code: str, reseller: Row[Any]) -> int:
    row = conn.execute(
        select(_vt.c.id, _vt.c.service_provider_id).where(_vt.c.code == code)
    ).first()
    if row is None or row.service_provider_id != reseller.service_provider_id:
        raise NotFound(f"voucher type '{code}' not found")
    return int(row.id)


def _seller(conn: Connection, actor: Principal, code: str | None) -> Row[Any]:
    if code is not None:
        return accounts.visible(conn, actor, code)
    if actor.reseller_id is None:
        raise Invalid("reseller: required for a key not scoped to one reseller")
    row = conn.execute(
        select(t.resellers.c.code).where(t.resellers.c.id == actor.reseller_id)
    ).scalar()
    return accounts.visible(conn, actor, str(row))


def sell(rt: Runtime, actor: Principal, body: object) -> Sold:
    """Sell ``count`` electronic PINs of a voucher type for a reseller (see the module)."""
    actor.require(Permission.SELL)
    data = accounts.parse(SaleIn, body)
    if data.deliver_to_msisdn is not None and not rt.settings.kannel_sendsms_url:
        raise Conflict("deliver_to_msisdn needs SMS through Kannel (VOMS_KANNEL_SENDSMS_URL)")
    scope = idempotency.scope_of(actor)
    fingerprint = idempotency.fingerprint(rt.keyring, "sale", data.model_dump())
    try:
        with UnitOfWork(rt) as uow:
            uow.idempotent(scope, data.request_id, fingerprint)
            answer, pins = _sell(rt, uow.conn, actor, data)
            uow.answer(answer, 201)
            uow.commit()
            return Sold(_with_pins(answer, pins), first=True)
    except AnsweredBefore as again:  # the first answer, its PINs read again (audited)
        with UnitOfWork(rt) as uow:
            sold = Sold(_again(rt, uow.conn, actor, again.first.body), first=False)
            uow.commit()
            return sold


def _sell(
    rt: Runtime, conn: Connection, actor: Principal, data: SaleIn
) -> tuple[dict[str, Any], dict[int, str]]:
    seller = _seller(conn, actor, data.reseller)
    voucher_type_id = _voucher_type_id(conn, data.voucher_type, seller)
    price = unit_price(conn, voucher_type_id, seller.currency)
    sale_id = str(uuid.uuid4())
    value = price * data.count
    commission, due = accounts.charge_sale(conn, seller, value, sale_id, actor)
    now = utcnow()
    holders = [level.id for level in accounts.chain(conn, seller)]
    taken = stock.take_electronic(conn, holders, voucher_type_id, data.count, now)
    if len(taken) < data.count:
        raise Conflict(
            f"not enough electronic stock of {data.voucher_type} for reseller "
            f"'{seller.code}': {len(taken)} of {data.count}"
        )
    for batch_id in sorted({row.batch_id for row in taken}):
        serials = [row.serial for row in taken if row.batch_id == batch_id]
        ranges.activate_serials(conn, actor.name, batch_id, serials, now)
        record_event(
            conn,
            actor,
            "sale",
            batch_id=batch_id,
            serial_from=min(serials),
            serial_to=max(serials),
            affected=len(serials),
            detail={"sale_id": sale_id, "reseller": seller.code},
            now=now,
        )
    conn.execute(
        insert(_sales).values(
            id=sale_id,
            at=now,
            kind="epin",
            reseller_id=seller.id,
            voucher_type_id=voucher_type_id,
            count=data.count,
            unit_price=price,
            value=value,
            commission=commission,
            currency=seller.currency,
            deliver_to_msisdn=data.deliver_to_msisdn,
            request_id=data.request_id,
            api_key_id=actor.api_key_id,
            actor=actor.name,
        )
    )
    conn.execute(insert(_sold), [{"serial": row.serial, "sale_id": sale_id} for row in taken])
    width = rt.settings.serial_width
    answer = {
        "sale_id": sale_id,
        "reseller": seller.code,
        "voucher_type": data.voucher_type,
        "count": data.count,
        "unit_price": price,
        "value": value,
        "commission": commission,
        "charged": value - commission,
        "currency": seller.currency,
        "balance_due": due,
        "available_credit": seller.credit_limit - due,
        "deliver_to_msisdn": data.deliver_to_msisdn,
        "request_id": data.request_id,
        "at": now.isoformat(),
        "vouchers": [
            {"serial": format_serial(row.serial, width), "expires_at": row.expires_at.isoformat()}
            for row in taken
        ],
    }
    _audit(conn, actor, "sale.create", seller, answer)
    pins = {
        row.serial: rt.keyring.decrypt(row.encryption_key_id, row.pin_ciphertext) for row in taken
    }
    return answer, pins


def _audit(
    conn: Connection, actor: Principal, action: str, seller: Row[Any], answer: dict[str, Any]
) -> None:
    """The sale in the audit log: who sold what to whom, which serials; never a PIN."""
    detail = {key: answer[key] for key in ("reseller", "voucher_type", "count", "value")}
    detail["deliver_to_msisdn"] = answer["deliver_to_msisdn"]
    detail["serials"] = [each["serial"] for each in answer["vouchers"]]
    audit.record(conn, actor, action, "sale", answer["sale_id"], seller.service_provider_id, detail)


def _pins(rt: Runtime, vouchers: Sequence[Any]) -> dict[int, str]:
    """The vouchers' PINs by serial, decrypted from their stored ciphertexts."""
    return {
        row.serial: rt.keyring.decrypt(row.encryption_key_id, row.pin_ciphertext)
        for row in vouchers
    }


def _with_pins(answer: dict[str, Any], pins: dict[int, str]) -> dict[str, Any]:
    vouchers = [{**each, "pin": pins[int(each["serial"])]} for each in answer["vouchers"]]
    return {**answer, "vouchers": vouchers}


def _again(
    rt: Runtime, conn: Connection, actor: Principal, answer: dict[str, Any]
) -> dict[str, Any]:
    """The first answer of a sale again, its PINs decrypted anew from the vouchers."""
    serials = [int(each["serial"]) for each in answer["vouchers"]]
    rows = conn.execute(
        select(_v.c.serial, _v.c.encryption_key_id, _v.c.pin_ciphertext)
        .join(_sold, _sold.c.serial == _v.c.serial)
        .where(_sold.c.sale_id == answer["sale_id"], _v.c.serial.in_(serials))
    ).all()
    if len(rows) != len(serials):
        raise Conflict("this sale's vouchers were archived: its PINs cannot be shown again")
    seller = accounts.find(conn, answer["reseller"])
    assert seller is not None
    _audit(conn, actor, "sale.repeat", seller, answer)
    pins = {
        row.serial: rt.keyring.decrypt(row.encryption_key_id, row.pin_ciphertext) for row in rows
    }
    return _with_pins(answer, pins)


# --- activating printed cards -------------------------------------------------------------


def activate(rt: Runtime, actor: Principal, code: str, body: object) -> dict[str, Any]:
    """Reseller ``code`` activates a range of its printed cards and pays for them (face
    value minus commission) as for a sale; frozen and deleted cards are not charged."""
    actor.require(Permission.SELL)
    width = rt.settings.serial_width
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        seller = accounts.visible(conn, actor, code)
        first, last = stock.serial_range(rt, body)
        held = stock.held_range(conn, seller, first, last)
        count = stock.count_payable(conn, held.batch_id, first, last)
        price = unit_price(conn, held.voucher_type_id, seller.currency)
        sale_id = str(uuid.uuid4())
        commission, due = accounts.charge_sale(conn, seller, price * count, sale_id, actor)
        now = utcnow()
        stock.take_range(conn, held, first, last, actor, now)
        conn.execute(
            insert(_sales).values(
                id=sale_id,
                at=now,
                kind="activation",
                reseller_id=seller.id,
                voucher_type_id=held.voucher_type_id,
                count=count,
                unit_price=price,
                value=price * count,
                commission=commission,
                currency=seller.currency,
                serial_from=first,
                serial_to=last,
                api_key_id=actor.api_key_id,
                actor=actor.name,
            )
        )
        record_event(
            conn,
            actor,
            "activate",
            batch_id=held.batch_id,
            serial_from=first,
            serial_to=last,
            affected=count,
            detail={"sale_id": sale_id, "reseller": code},
            now=now,
        )
        answer = {
            "sale_id": sale_id,
            "reseller": code,
            "kind": "activation",
            "serial_from": format_serial(first, width),
            "serial_to": format_serial(last, width),
            "count": count,
            "unit_price": price,
            "value": price * count,
            "commission": commission,
            "charged": price * count - commission,
            "currency": seller.currency,
            "balance_due": due,
            "available_credit": seller.credit_limit - due,
            "at": now,
        }
        audit.record(
            conn,
            actor,
            "sale.activate",
            "sale",
            sale_id,
            seller.service_provider_id,
            {"reseller": code, "serial_from": first, "serial_to": last, "count": count},
        )
        uow.commit()
        return answer


# --- reading ------------------------------------------------------------------------------


def _sale_view(row: Row[Any], width: int) -> dict[str, Any]:
    def serial(value: int | None) -> str | None:
        return None if value is None else format_serial(value, width)

    return {
        "sale_id": row.id,
        "at": row.at,
        "kind": row.kind,
        "reseller": row.reseller,
        "voucher_type": row.voucher_type,
        "count": row.count,
        "unit_price": row.unit_price,
        "value": row.value,
        "commission": row.commission,
        "currency": row.currency,
        "serial_from": serial(row.serial_from),
        "serial_to": serial(row.serial_to),
        "deliver_to_msisdn": row.deliver_to_msisdn,
        "request_id": row.request_id,
        "actor": row.actor,
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _cursor(raw: str) -> tuple[datetime, str]:
    """A page's last sale as ``<microseconds since 1970>_<sale id>``: URL-safe as it is."""
    micros, _, sale_id = raw.partition("_")
    if not micros.isdigit() or len(micros) > 18 or not sale_id:
        raise Invalid("malformed cursor")
    return _EPOCH + timedelta(microseconds=int(micros)), sale_id


def _cursor_of(at: datetime, sale_id: str) -> str:
    return f"{(at - _EPOCH) // timedelta(microseconds=1)}_{sale_id}"


def list_sales(
    rt: Runtime, actor: Principal, code: str, *, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """Sales of reseller ``code``, newest first (never a PIN)."""
    actor.require(Permission.RESELLER_READ)
    if not 1 <= limit <= accounts.MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {accounts.MAX_PAGE}")
    after = _cursor(cursor) if cursor is not None else None
    r = t.resellers
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        reseller = accounts.visible(conn, actor, code)
        query = (
            select(_sales, r.c.code.label("reseller"), _vt.c.code.label("voucher_type"))
            .join(r, r.c.id == _sales.c.reseller_id)
            .join(_vt, _vt.c.id == _sales.c.voucher_type_id)
            .where(_sales.c.reseller_id == reseller.id)
            .order_by(_sales.c.at.desc(), _sales.c.id.desc())
            .limit(limit + 1)
        )
        if after is not None:
            query = query.where(
                (_sales.c.at < after[0]) | ((_sales.c.at == after[0]) & (_sales.c.id < after[1]))
            )
        rows = conn.execute(query).all()
    width = rt.settings.serial_width
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": [_sale_view(row, width) for row in rows[:limit]],
        "next_cursor": _cursor_of(last.at, last.id) if last is not None else None,
    }
