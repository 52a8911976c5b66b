"""The built-in wallet's use cases: subscribers, their balances and ledger, adjustments."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import Connection, Row, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from voms.billing.engine import Account, Change, Credit
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Invalid, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.roles import Permission
from voms.domain.states import SubscriberState, check_subscriber_move
from voms.runtime import Runtime
from voms.services import audit, billing, idempotency
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.catalog import MAX_AMOUNT, Code
from voms.services.uow import AnsweredBefore, UnitOfWork

SubscriberStateName = Literal["active", "expired", "frozen", "suspended", "deactivated"]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00")
    return value


class SubscriberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    msisdn: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    service_provider: Code
    product_type: Code
    state: SubscriberStateName = "active"
    account_expires_at: datetime | None = None

    _check_expiry = field_validator("account_expires_at")(_aware)


class SubscriberUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_type: Code | None = None
    state: SubscriberStateName | None = None
    account_expires_at: datetime | None = None

    _check_expiry = field_validator("account_expires_at")(_aware)


class AdjustmentIn(BaseModel):
    """A correction of one balance by care or an administrator; the reason is mandatory."""

    model_config = ConfigDict(extra="forbid")

    balance_type: Code
    amount: Annotated[int, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT)]
    reason: Reason
    balance_expiry_extension_days: Annotated[int, Field(ge=0, le=36_500)] = 0
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("an adjustment changes the balance")
        return value


# --- reading ---------------------------------------------------------------------------


def _msisdn(raw: str) -> str:
    try:
        return normalize_msisdn(raw)
    except ResultError:
        raise Invalid(f"'{raw}' is not a subscriber number (MSISDN)") from None


def _subscriber_row(conn: Connection, msisdn: str) -> Row[Any]:
    s, sp, pt = t.subscribers, t.service_providers, t.product_types
    row = conn.execute(
        select(s, sp.c.code.label("sp_code"), pt.c.code.label("pt_code"))
        .join(sp, sp.c.id == s.c.service_provider_id)
        .join(pt, pt.c.id == s.c.product_type_id)
        .where(s.c.msisdn == msisdn)
    ).first()
    if row is None:
        raise NotFound(f"subscriber '{msisdn}' not found")
    return row


def _public(conn: Connection, row: Row[Any]) -> dict[str, Any]:
    b, bt = t.balances, t.balance_types
    balances = conn.execute(
        select(bt.c.code, b.c.amount, b.c.expires_at)
        .join(bt, bt.c.id == b.c.balance_type_id)
        .where(b.c.subscriber_id == row.id)
        .order_by(bt.c.code)
    ).all()
    return {
        "msisdn": row.msisdn,
        "service_provider": row.sp_code,
        "product_type": row.pt_code,
        "state": row.state,
        "account_expires_at": row.account_expires_at,
        "created_at": row.created_at,
        "balances": [
            {"balance_type": code, "amount": amount, "expires_at": expires_at}
            for code, amount, expires_at in balances
        ],
    }


def get_subscriber(
    rt: Runtime, actor: Principal, msisdn: str, service_provider: str | None = None
) -> dict[str, Any]:
    """A subscriber's state, product type, account expiry and balances; one with no
    wallet here, as the charging system of ``service_provider`` (or the key's) reports it."""
    actor.require(Permission.LOOKUP)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        try:
            row = _subscriber_row(conn, _msisdn(msisdn))
        except NotFound:
            asked = billing.external_subscriber(rt, uow, actor, _msisdn(msisdn), service_provider)
            if asked is None:
                raise
        else:
            actor.require_scope(row.service_provider_id)
            return _public(conn, row)
    return billing.ask_charging_system(asked)


def ledger_of(
    rt: Runtime, actor: Principal, msisdn: str, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    """The newest ledger rows of a subscriber: every change of a balance, with its cause;
    ``before_id`` pages on (rows older than that id)."""
    actor.require(Permission.LOOKUP)
    lg, bt = t.ledger, t.balance_types
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = _subscriber_row(conn, _msisdn(msisdn))
        actor.require_scope(row.service_provider_id)
        entries = conn.execute(
            select(
                lg.c.id,
                lg.c.at,
                bt.c.code.label("balance_type"),
                lg.c.amount,
                lg.c.balance_after,
                lg.c.cause,
                lg.c.transaction_id,
                lg.c.serial,
                lg.c.reason,
                lg.c.actor,
            )
            .join(bt, bt.c.id == lg.c.balance_type_id)
            .where(lg.c.subscriber_id == row.id)
            .where(lg.c.id < before_id if before_id is not None else true())
            .order_by(lg.c.id.desc())
            .limit(max(1, min(limit, 1001)))
        )
        return [dict(entry._mapping) for entry in entries]


# --- writing ---------------------------------------------------------------------------


def _product_type_id(conn: Connection, sp_id: int, code: str) -> int:
    pt = t.product_types
    pt_id = conn.execute(
        select(pt.c.id).where(pt.c.service_provider_id == sp_id, pt.c.code == code)
    ).scalar()
    if pt_id is None:
        raise NotFound(f"product type '{code}' not found")
    return int(pt_id)


def create_subscriber(rt: Runtime, actor: Principal, body: SubscriberIn) -> dict[str, Any]:
    """Create a subscriber with an empty wallet."""
    msisdn = _msisdn(body.msisdn)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, body.service_provider)
        actor.require(Permission.SUBSCRIBER_WRITE, sp_id)
        values = {
            "msisdn": msisdn,
            "service_provider_id": sp_id,
            "product_type_id": _product_type_id(conn, sp_id, body.product_type),
            "state": body.state,
            "account_expires_at": body.account_expires_at,
            "created_at": utcnow(),
        }
        try:
            with conn.begin_nested():
                conn.execute(insert(t.subscribers).values(**values))
        except IntegrityError:
            raise Conflict(f"subscriber '{msisdn}' already exists") from None
        audit.record(
            conn,
            actor,
            "subscriber.create",
            "subscriber",
            msisdn,
            sp_id,
            body.model_dump(mode="json"),
        )
        result = _public(conn, _subscriber_row(conn, msisdn))
        uow.commit()
        return result


def update_subscriber(
    rt: Runtime, actor: Principal, msisdn: str, body: SubscriberUpdate
) -> dict[str, Any]:
    """Change a subscriber's state, product type or account expiry."""
    msisdn = _msisdn(msisdn)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _subscriber_row(conn, msisdn)
        actor.require(Permission.SUBSCRIBER_WRITE, row.service_provider_id)
        if body.state is not None:
            check_subscriber_move(SubscriberState(row.state), SubscriberState(body.state))
        changes = body.model_dump(exclude_unset=True)
        values = {k: v for k, v in changes.items() if k != "product_type"}
        if body.product_type is not None:
            values["product_type_id"] = _product_type_id(
                conn, row.service_provider_id, body.product_type
            )
        if values:
            conn.execute(update(t.subscribers).where(t.subscribers.c.id == row.id).values(values))
            audit.record(
                conn,
                actor,
                "subscriber.update",
                "subscriber",
                msisdn,
                row.service_provider_id,
                body.model_dump(mode="json", exclude_unset=True),
            )
        result = _public(conn, _subscriber_row(conn, msisdn))
        uow.commit()
        return result


def adjust_balance(
    rt: Runtime, actor: Principal, msisdn: str, body: AdjustmentIn
) -> dict[str, Any]:
    """Credit or debit one balance with a reason; written to the ledger and the audit log."""
    msisdn = _msisdn(msisdn)
    fingerprint = idempotency.fingerprint(
        rt.keyring, "adjustment", {"msisdn": msisdn, **body.model_dump(exclude={"request_id"})}
    )
    try:
        with UnitOfWork(rt) as uow:
            uow.idempotent(idempotency.scope_of(actor), body.request_id, fingerprint)
            account = rt.billing.load_account(uow, msisdn, lock=True)
            if account is None:
                raise NotFound(f"subscriber '{msisdn}' not found")
            actor.require(Permission.WALLET_ADJUST, account.service_provider_id)
            change = Change(
                credits=(_credit(uow.conn, account, body),),
                cause="adjustment",
                actor=actor.name,
                at=uow.started_at,
                reason=body.reason,
            )
            rt.billing.check(account, change)
            applied = rt.billing.apply(uow, account, change)
            result = {
                "msisdn": msisdn,
                "balance_type": body.balance_type,
                "amount": body.amount,
                "balance": applied.credits[0].balance,
                "expires_at": _iso(applied.credits[0].expires_at),
                "reason": body.reason,
                "at": uow.started_at.isoformat(),
            }
            audit.record(
                uow.conn,
                actor,
                "wallet.adjust",
                "subscriber",
                msisdn,
                account.service_provider_id,
                body.model_dump(exclude={"request_id"}),
            )
            uow.answer(result)
            uow.commit()
    except AnsweredBefore as again:
        return again.first.body
    return result


def _credit(conn: Connection, account: Account, body: AdjustmentIn) -> Credit:
    bt = t.balance_types
    row = conn.execute(
        select(bt.c.id, bt.c.max_balance).where(
            bt.c.service_provider_id == account.service_provider_id, bt.c.code == body.balance_type
        )
    ).first()
    if row is None:
        raise NotFound(f"balance type '{body.balance_type}' not found")
    return Credit(
        balance_type_id=row.id,
        balance_type=body.balance_type,
        amount=body.amount,
        balance_expiry_extension_days=body.balance_expiry_extension_days,
        max_balance=row.max_balance,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
