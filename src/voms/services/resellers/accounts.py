"""Reseller accounts: the tree, who may see which part of it, credit and commission.

A reseller owes the operator the face value of what it sells minus its commission
(``due``; negative when it paid in advance). Each reseller above the seller earns the
difference between its commission and the one below it, so a sale's commissions add up
to the top reseller's rate, whatever the depth.
"""

from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from sqlalchemy import Connection, Row, func, insert, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit, idempotency
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.catalog import Code, Currency, Name
from voms.services.uow import AnsweredBefore, UnitOfWork

MAX_DEPTH = 8  # levels of the tree; its paths fit their column
MAX_AMOUNT = 10**15  # minor units: far above any credit line, far below 64 bits
MAX_PAGE = 1000
BASIS_POINTS = 10_000

_r, _sp = t.resellers, t.service_providers
Reference = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ResellerIn(BaseModel):
    """POST /api/v1/resellers."""

    model_config = ConfigDict(extra="forbid")

    code: Code
    name: Name
    service_provider: Code
    credit_limit: int = Field(ge=0, le=MAX_AMOUNT)
    commission_percent: Decimal = Field(ge=0, le=100, max_digits=5, decimal_places=2)
    parent: Code | None = None
    currency: Currency | None = None
    contact: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class ResellerUpdate(BaseModel):
    """PATCH /api/v1/resellers/{code}: the fields given change, the others stay;
    ``contact`` null removes it."""

    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    credit_limit: int | None = Field(None, ge=0, le=MAX_AMOUNT)
    commission_percent: Decimal | None = Field(None, ge=0, le=100, max_digits=5, decimal_places=2)
    contact: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None


class PaymentIn(BaseModel):
    """POST /api/v1/resellers/{code}/payments: money received from the reseller."""

    model_config = ConfigDict(extra="forbid")

    amount: int = Field(gt=0, le=MAX_AMOUNT)
    reference: Reference
    request_id: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=idempotency.MAX_REQUEST_ID_LENGTH)
        ]
        | None
    ) = None


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: object) -> M:
    """``body`` (JSON text or already parsed) as ``model``, or Invalid (422) saying why."""
    try:
        if isinstance(body, str | bytes):
            return model.model_validate_json(body or b"null")
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False):
            where = ".".join(str(part) for part in error["loc"])
            what = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {what}" if where else what)
        raise Invalid("; ".join(problems)) from None


# --- reading and scope --------------------------------------------------------------------

_parent = _r.alias("parent")
_RESELLERS = (
    select(
        _r,
        _sp.c.code.label("service_provider"),
        _parent.c.code.label("parent_code"),
    )
    .join(_sp, _sp.c.id == _r.c.service_provider_id)
    .outerjoin(_parent, _parent.c.id == _r.c.parent_id)
)


def find(conn: Connection, code: str) -> Row[Any] | None:
    return conn.execute(_RESELLERS.where(_r.c.code == code)).first()


def path_of(conn: Connection, reseller_id: int) -> str:
    path = conn.execute(select(_r.c.path).where(_r.c.id == reseller_id)).scalar()
    if path is None:  # the key's reseller is gone: the key sees nothing
        raise Forbidden("this key's reseller no longer exists")
    return str(path)


def in_subtree(path: str, top_path: str) -> bool:
    """True when the reseller at ``path`` is the one at ``top_path`` or below it."""
    return path.startswith(top_path)


def visible(conn: Connection, actor: Principal, code: str) -> Row[Any]:
    """The reseller ``code`` as ``actor`` may see it: 403 outside its scope, then 404.

    A reseller's key gets 403 for an unknown code too: it may not learn which codes
    exist outside its subtree.
    """
    row = find(conn, code)
    if actor.reseller_id is not None:
        if row is None or not in_subtree(row.path, path_of(conn, actor.reseller_id)):
            raise Forbidden("outside this key's resellers")
        return row
    if row is None:
        raise NotFound(f"reseller '{code}' not found")
    actor.require_scope(row.service_provider_id)
    return row


def chain(conn: Connection, reseller: Row[Any]) -> list[Row[Any]]:
    """The reseller, then its parent, and so on up to the top of its tree."""
    ids = [int(part) for part in reseller.path.strip("/").split("/")]
    rows = {row.id: row for row in conn.execute(select(_r).where(_r.c.id.in_(ids)))}
    return [rows[each] for each in reversed(ids)]


def view(row: Row[Any]) -> dict[str, Any]:
    return {
        "code": row.code,
        "name": row.name,
        "service_provider": row.service_provider,
        "parent": row.parent_code,
        "currency": row.currency,
        "credit_limit": row.credit_limit,
        "commission_percent": float(Decimal(row.commission_bp) / 100),
        "balance_due": row.due,
        "available_credit": row.credit_limit - row.due,
        "contact": row.contact,
        "created_by": row.created_by,
        "created_at": row.created_at,
    }


def get_reseller(rt: Runtime, actor: Principal, code: str) -> dict[str, Any]:
    """One reseller with what it owes and the credit it has left."""
    actor.require(Permission.RESELLER_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return view(visible(conn, actor, code))


def list_resellers(
    rt: Runtime,
    actor: Principal,
    *,
    parent: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Resellers the caller may see (a reseller's key: its subtree), by code."""
    actor.require(Permission.RESELLER_READ)
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    query = _RESELLERS.order_by(_r.c.code).limit(limit + 1)
    if cursor is not None:
        query = query.where(_r.c.code > cursor)
    if actor.service_provider_id is not None:
        query = query.where(_r.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        if actor.reseller_id is not None:
            query = query.where(_r.c.path.startswith(path_of(conn, actor.reseller_id)))
        if parent is not None:
            query = query.where(_r.c.parent_id == visible(conn, actor, parent).id)
        rows = conn.execute(query).all()
    return {
        "items": [view(row) for row in rows[:limit]],
        "next_cursor": rows[limit - 1].code if len(rows) > limit else None,
    }


# --- creating -----------------------------------------------------------------------------


def _currency_of_provider(conn: Connection, sp_id: int) -> str:
    bt = t.balance_types
    currencies = (
        conn.execute(
            select(bt.c.currency)
            .where(bt.c.service_provider_id == sp_id, bt.c.currency.is_not(None))
            .distinct()
        )
        .scalars()
        .all()
    )
    if len(currencies) != 1:
        raise Invalid("currency is required: the provider's balance types name none or several")
    return str(currencies[0])


def _differences(row: Row[Any], wanted: dict[str, Any]) -> list[str]:
    return sorted(name for name, value in wanted.items() if getattr(row, name) != value)


def create_reseller(rt: Runtime, actor: Principal, body: object) -> tuple[dict[str, Any], bool]:
    """Create a reseller (under ``parent``, when given); True when it is new.

    The same body again answers the existing reseller; a different one is a Conflict
    naming the fields. A reseller's key creates resellers only below its own, with no
    more credit and commission than their parent has.
    """
    actor.require(Permission.RESELLER_WRITE)
    data = parse(ResellerIn, body)
    commission_bp = int(data.commission_percent * 100)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        parent = visible(conn, actor, data.parent) if data.parent is not None else None
        if actor.reseller_id is not None and parent is None:
            raise Forbidden("a reseller's key creates resellers below its own only")
        sp_id = service_provider_id_by_code(conn, data.service_provider)
        actor.require_scope(sp_id)
        currency = data.currency or (
            parent.currency if parent is not None else _currency_of_provider(conn, sp_id)
        )
        if parent is not None:
            _check_below(actor, parent, sp_id, currency, commission_bp, data.credit_limit)
        wanted = {
            "name": data.name,
            "service_provider_id": sp_id,
            "parent_id": parent.id if parent is not None else None,
            "currency": currency,
            "credit_limit": data.credit_limit,
            "commission_bp": commission_bp,
            "contact": data.contact,
        }
        existing = find(conn, data.code)
        if existing is not None:
            visible(conn, actor, data.code)
            differ = _differences(existing, wanted)
            if differ:
                raise Conflict(
                    f"reseller '{data.code}' exists with other values of: {', '.join(differ)}"
                )
            uow.commit()
            return view(existing), False
        now = utcnow()
        new_id = conn.execute(
            insert(_r)
            .values(code=data.code, path="", due=0, created_by=actor.name, created_at=now, **wanted)
            .returning(_r.c.id)
        ).scalar_one()
        path = f"{parent.path if parent is not None else '/'}{new_id}/"
        conn.execute(update(_r).where(_r.c.id == new_id).values(path=path))
        audit.record(
            conn,
            actor,
            "reseller.create",
            "reseller",
            data.code,
            sp_id,
            {**data.model_dump(mode="json"), "currency": currency},
        )
        row = find(conn, data.code)
        assert row is not None
        uow.commit()
        return view(row), True


def _check_below(
    actor: Principal,
    parent: Row[Any],
    sp_id: int,
    currency: str,
    commission_bp: int,
    credit_limit: int,
) -> None:
    if parent.service_provider_id != sp_id:
        raise Conflict(f"reseller '{parent.code}' belongs to another service provider")
    if parent.path.count("/") - 1 >= MAX_DEPTH:
        raise Conflict(f"resellers nest at most {MAX_DEPTH} levels deep")
    if currency != parent.currency:
        raise Conflict(f"a sub-reseller keeps its parent's currency ({parent.currency})")
    if commission_bp > parent.commission_bp:
        raise Conflict(
            "a sub-reseller's commission may not exceed its parent's "
            f"({Decimal(parent.commission_bp) / 100}%)"
        )
    if actor.reseller_id is not None and credit_limit > parent.credit_limit:
        raise Forbidden("a reseller's key may not give more credit than its parent has")


def update_reseller(rt: Runtime, actor: Principal, code: str, body: object) -> dict[str, Any]:
    """Change a reseller's name, credit limit, commission or contact (audited).

    A sub-reseller's commission stays at most its parent's, and a reseller's at least
    that of every reseller below it. A reseller's key changes only resellers below its
    own (never its own terms), and gives no more credit than their parent has.
    """
    actor.require(Permission.RESELLER_WRITE)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = visible(conn, actor, code)
        data = parse(ResellerUpdate, body)
        given = data.model_fields_set
        if not given:
            raise Invalid("give at least one of: name, credit_limit, commission_percent, contact")
        if actor.reseller_id is not None and row.id == actor.reseller_id:
            raise Forbidden("a reseller's key may not change its own reseller's terms")
        if "name" in given and data.name is None:
            raise Invalid("name: may not be null")
        parent = conn.execute(select(_r).where(_r.c.id == row.parent_id)).first()
        changes: dict[str, Any] = {}
        if data.name is not None:
            changes["name"] = data.name
        if "credit_limit" in given:
            if data.credit_limit is None:
                raise Invalid("credit_limit: may not be null")
            ceiling = parent.credit_limit if parent is not None else None
            if (
                actor.reseller_id is not None
                and ceiling is not None
                and data.credit_limit > ceiling
            ):
                raise Forbidden("a reseller's key may not give more credit than its parent has")
            changes["credit_limit"] = data.credit_limit
        if "commission_percent" in given:
            if data.commission_percent is None:
                raise Invalid("commission_percent: may not be null")
            commission_bp = int(data.commission_percent * 100)
            _check_commission(conn, row, parent, commission_bp)
            changes["commission_bp"] = commission_bp
        if "contact" in given:
            changes["contact"] = data.contact or None
        changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
        if changed:
            conn.execute(update(_r).where(_r.c.id == row.id).values(**changed))
            detail = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in changed.items()}
            audit.record(
                conn, actor, "reseller.update", "reseller", code, row.service_provider_id, detail
            )
        found = find(conn, code)
        assert found is not None
        uow.commit()
        return view(found)


def _check_commission(
    conn: Connection, row: Row[Any], parent: Row[Any] | None, commission_bp: int
) -> None:
    if parent is not None and commission_bp > parent.commission_bp:
        raise Conflict(
            "a sub-reseller's commission may not exceed its parent's "
            f"({Decimal(parent.commission_bp) / 100}%)"
        )
    highest_below = conn.execute(
        select(func.max(_r.c.commission_bp)).where(_r.c.parent_id == row.id)
    ).scalar()
    if highest_below is not None and commission_bp < highest_below:
        raise Conflict(
            "a reseller's commission may not fall below that of a reseller under it "
            f"({Decimal(highest_below) / 100}%)"
        )


# --- money --------------------------------------------------------------------------------


def _entry(
    conn: Connection,
    reseller_id: int,
    kind: str,
    amount: int,
    due_after: int,
    actor: Principal,
    *,
    sale_id: str | None = None,
    reference: str | None = None,
) -> None:
    conn.execute(
        insert(t.reseller_entries).values(
            # Taken after the account row is locked, so that time order is lock order and
            # a statement's opening balance is the last entry before it.
            at=utcnow(),
            reseller_id=reseller_id,
            kind=kind,
            amount=amount,
            due_after=due_after,
            sale_id=sale_id,
            reference=reference,
            actor=actor.name,
        )
    )


def charge_sale(
    conn: Connection, seller: Row[Any], value: int, sale_id: str, actor: Principal
) -> tuple[int, int]:
    """Charge ``value`` minus commission to the seller, within its credit limit, and
    credit each reseller above it its share; (the seller's commission, its due after).

    Accounts are locked from the seller upwards, always in that order, before any stock.
    """
    levels = chain(conn, seller)
    commission = value * seller.commission_bp // BASIS_POINTS
    net = value - commission
    due = conn.execute(
        update(_r)
        .where(_r.c.id == seller.id, _r.c.due + net <= _r.c.credit_limit)
        .values(due=_r.c.due + net)
        .returning(_r.c.due)
    ).scalar()
    if due is None:
        raise Conflict(
            f"credit limit of reseller '{seller.code}' exceeded: this sale costs {net} "
            f"{seller.currency}"
        )
    _entry(conn, seller.id, "sale", value, due - net + value, actor, sale_id=sale_id)
    _entry(conn, seller.id, "commission", commission, due, actor, sale_id=sale_id)
    below = commission
    for upper in levels[1:]:
        share = max(0, value * upper.commission_bp // BASIS_POINTS - below)
        below += share
        if share == 0:
            continue
        upper_due = conn.execute(
            update(_r).where(_r.c.id == upper.id).values(due=_r.c.due - share).returning(_r.c.due)
        ).scalar_one()
        _entry(conn, upper.id, "commission", share, upper_due, actor, sale_id=sale_id)
    return commission, int(due)


def record_payment(
    rt: Runtime, actor: Principal, code: str, body: object
) -> tuple[dict[str, Any], bool]:
    """Record money received from a reseller: what it owes goes down. True when new.

    Only the operator's keys record payments, never a reseller's own.
    """
    actor.require(Permission.RESELLER_WRITE)
    if actor.reseller_id is not None:
        raise Forbidden("a reseller's key may not record payments")
    try:
        return _record_payment(rt, actor, code, body), True
    except AnsweredBefore as again:
        return again.first.body, False


def _record_payment(rt: Runtime, actor: Principal, code: str, body: object) -> dict[str, Any]:
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        reseller = visible(conn, actor, code)
        data = parse(PaymentIn, body)
        fingerprint = idempotency.fingerprint(
            rt.keyring, "reseller.payment", {"reseller": code, **data.model_dump()}
        )
        uow.idempotent(idempotency.scope_of(actor), data.request_id, fingerprint)
        due = conn.execute(
            update(_r)
            .where(_r.c.id == reseller.id)
            .values(due=_r.c.due - data.amount)
            .returning(_r.c.due)
        ).scalar_one()
        _entry(conn, reseller.id, "payment", data.amount, due, actor, reference=data.reference)
        audit.record(
            conn,
            actor,
            "reseller.payment",
            "reseller",
            code,
            reseller.service_provider_id,
            data.model_dump(),
        )
        answer = {
            "reseller": code,
            "amount": data.amount,
            "currency": reseller.currency,
            "reference": data.reference,
            "balance_due": int(due),
            "available_credit": reseller.credit_limit - int(due),
        }
        uow.answer(answer, 201)
        uow.commit()
        return answer
