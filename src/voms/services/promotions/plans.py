"""Promotion plans: create, read, change (docs/api.md "Promotions"; roles operator, admin).

A plan is stored with ids (voucher types, product types, balance types) and shown with
codes. Creating is idempotent like the catalog: the same body again answers the plan
(200), another body with the same code 409 naming the fields that differ.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Connection, Row, insert, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.catalog import Credit
from voms.domain.errors import Conflict, Invalid, NotFound
from voms.domain.promotions import Plan, Reward
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.catalog import MAX_AMOUNT, Code, Name
from voms.services.uow import UnitOfWork

MAX_PAGE = 1000
_p = t.promotions


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00")
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WindowIn(_Input):
    kind: Literal["calendar_month", "rolling_days", "campaign"]
    days: Annotated[int, Field(ge=1, le=3650)] | None = None

    @model_validator(mode="after")
    def _days_for_rolling_only(self) -> "WindowIn":
        if (self.kind == "rolling_days") != (self.days is not None):
            raise ValueError("days is given for a rolling_days window, and only for it")
        return self


class EligibleIn(_Input):
    voucher_types: list[Code] = Field(default_factory=list, max_length=100)
    channels: list[str] = Field(default_factory=list, max_length=10)
    product_types: list[Code] = Field(default_factory=list, max_length=100)

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, value: list[str]) -> list[str]:
        # (imported here: the redemption imports this package's counting step)
        from voms.services.redemption.requests import CHANNELS

        unknown = sorted(set(value) - CHANNELS)
        if unknown:
            raise ValueError(f"unknown channels {unknown}; one of {sorted(CHANNELS)}")
        return value


class RewardCreditIn(_Input):
    balance_type: Code
    amount: Annotated[int, Field(gt=0, le=MAX_AMOUNT)]
    balance_expiry_extension_days: Annotated[int, Field(ge=0, le=36_500)] = 0


class RewardIn(_Input):
    credits: list[RewardCreditIn] = Field(default_factory=list, max_length=20)
    account_expiry_extension_days: Annotated[int, Field(ge=0, le=36_500)] = 0
    percent_of_value: Annotated[int, Field(ge=0, le=1000)] = 0
    new_product_type: Code | None = None

    @model_validator(mode="after")
    def _gives_something(self) -> "RewardIn":
        if not (
            self.credits
            or self.account_expiry_extension_days
            or self.percent_of_value
            or self.new_product_type
        ):
            raise ValueError("a reward gives credits, days, a percentage or a product type")
        kinds = [c.balance_type for c in self.credits]
        if len(set(kinds)) != len(kinds):
            raise ValueError("a reward credits one balance type once")
        return self


class PromotionIn(_Input):
    code: Code
    name: Name
    service_provider: Code
    starts_at: datetime
    ends_at: datetime | None = None
    window: WindowIn
    counter: Literal["count", "value"]
    eligible: EligibleIn = Field(default_factory=EligibleIn)
    target: Annotated[int, Field(gt=0, le=MAX_AMOUNT)]
    repeat: bool
    reward: RewardIn

    _check_times = field_validator("starts_at", "ends_at")(_aware)

    @model_validator(mode="after")
    def _ends_after_start(self) -> "PromotionIn":
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class PromotionUpdate(_Input):
    """What may change on a running plan: its name, its end, its target."""

    name: Name | None = None
    ends_at: datetime | None = None
    target: Annotated[int, Field(gt=0, le=MAX_AMOUNT)] | None = None

    _check_times = field_validator("ends_at")(_aware)


# --- the catalog's names and ids ---------------------------------------------------------


class _Names:
    """Codes ⇄ ids of one provider's voucher, product and balance types."""

    def __init__(self, conn: Connection, sp_id: int) -> None:
        vt, pt, bt = t.voucher_types, t.product_types, t.balance_types
        self.voucher_types = _codes(conn, vt, sp_id)
        self.product_types = _codes(conn, pt, sp_id)
        self.balance_types = _codes(conn, bt, sp_id)

    @staticmethod
    def ids(codes: list[str], known: dict[str, int], what: str) -> list[int]:
        missing = [code for code in codes if code not in known]
        if missing:
            raise NotFound(f"{what} '{missing[0]}' not found")
        return sorted({known[code] for code in codes})


def _codes(conn: Connection, table: Any, sp_id: int) -> dict[str, int]:
    rows = conn.execute(
        select(table.c.code, table.c.id).where(table.c.service_provider_id == sp_id)
    )
    return {row.code: row.id for row in rows}


def _stored(body: PromotionIn, names: _Names) -> dict[str, Any]:
    """The plan's eligibility and reward as stored: ids, not codes."""
    eligible = body.eligible
    reward = body.reward
    new_pt = (
        names.ids([reward.new_product_type], names.product_types, "product type")[0]
        if reward.new_product_type
        else None
    )
    return {
        "eligible": {
            "voucher_type_ids": names.ids(
                eligible.voucher_types, names.voucher_types, "voucher type"
            ),
            "channels": sorted(set(eligible.channels)),
            "product_type_ids": names.ids(
                eligible.product_types, names.product_types, "product type"
            ),
        },
        "reward": {
            "credits": [
                {
                    "balance_type_id": names.ids(
                        [c.balance_type], names.balance_types, "balance type"
                    )[0],
                    "amount": c.amount,
                    "balance_expiry_extension_days": c.balance_expiry_extension_days,
                }
                for c in reward.credits
            ],
            "account_expiry_extension_days": reward.account_expiry_extension_days,
            "percent_of_value": reward.percent_of_value,
            "new_product_type_id": new_pt,
        },
    }


class _Codes:
    """Ids → codes of the whole catalog, for showing plans."""

    def __init__(self, conn: Connection) -> None:
        sp, vt, pt, bt = t.service_providers, t.voucher_types, t.product_types, t.balance_types
        self.providers = {i: c for i, c in conn.execute(select(sp.c.id, sp.c.code))}
        self.voucher_types = {i: c for i, c in conn.execute(select(vt.c.id, vt.c.code))}
        self.product_types = {i: c for i, c in conn.execute(select(pt.c.id, pt.c.code))}
        self.balance_types = {i: c for i, c in conn.execute(select(bt.c.id, bt.c.code))}


def public(row: Row[Any], codes: _Codes) -> dict[str, Any]:
    """A plan as the API shows it (the shape it was created with, codes for ids)."""
    eligible, reward = row.eligible, row.reward
    new_pt = reward.get("new_product_type_id")
    return {
        "code": row.code,
        "name": row.name,
        "service_provider": codes.providers.get(row.service_provider_id),
        "starts_at": row.starts_at,
        "ends_at": row.ends_at,
        "window": {"kind": row.window_kind, "days": row.window_days},
        "counter": row.counter,
        "eligible": {
            "voucher_types": sorted(codes.voucher_types[i] for i in eligible["voucher_type_ids"]),
            "channels": list(eligible["channels"]),
            "product_types": sorted(codes.product_types[i] for i in eligible["product_type_ids"]),
        },
        "target": row.target,
        "repeat": row.repeat,
        "reward": {
            "credits": [
                {
                    "balance_type": codes.balance_types[c["balance_type_id"]],
                    "amount": c["amount"],
                    "balance_expiry_extension_days": c["balance_expiry_extension_days"],
                }
                for c in reward["credits"]
            ],
            "account_expiry_extension_days": reward["account_expiry_extension_days"],
            "percent_of_value": reward["percent_of_value"],
            "new_product_type": codes.product_types.get(new_pt) if new_pt else None,
        },
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def plan_of(row: Row[Any], balance_type_codes: dict[int, str]) -> Plan:
    """The typed plan of a stored row (what the redemption counts with)."""
    eligible, reward = row.eligible, row.reward
    return Plan(
        id=row.id,
        code=row.code,
        service_provider_id=row.service_provider_id,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        window=row.window_kind,
        days=row.window_days,
        counter=row.counter,
        target=row.target,
        repeat=row.repeat,
        reward=Reward(
            credits=tuple(
                Credit(
                    c["balance_type_id"],
                    balance_type_codes.get(c["balance_type_id"], "?"),
                    c["amount"],
                    c["balance_expiry_extension_days"],
                )
                for c in reward["credits"]
            ),
            account_expiry_extension_days=reward["account_expiry_extension_days"],
            percent_of_value=reward["percent_of_value"],
            new_product_type_id=reward.get("new_product_type_id"),
        ),
        voucher_type_ids=frozenset(eligible["voucher_type_ids"]),
        channels=frozenset(eligible["channels"]),
        product_type_ids=frozenset(eligible["product_type_ids"]),
    )


# --- the calls ---------------------------------------------------------------------------


def _comparable(value: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in value.items() if k not in ("created_at", "updated_at")}
    shown["eligible"] = {k: sorted(v) for k, v in shown["eligible"].items()}
    shown["reward"] = {
        **shown["reward"],
        "credits": sorted(shown["reward"]["credits"], key=lambda c: c["balance_type"]),
    }
    return shown


def create_or_find(rt: Runtime, actor: Principal, body: PromotionIn) -> tuple[dict[str, Any], bool]:
    """The new plan and True; the same plan and False when it exists with this body
    (409 naming the fields that differ when it exists with another)."""
    actor.require(Permission.PROMOTIONS)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, body.service_provider)
        actor.require(Permission.PROMOTIONS, sp_id)
        existing = conn.execute(select(_p).where(_p.c.code == body.code)).first()
        if existing is not None:
            actor.require_scope(existing.service_provider_id)
            shown = public(existing, _Codes(conn))
            wanted = _comparable(body.model_dump())
            have = _comparable(shown)
            differ = sorted(k for k in wanted if wanted[k] != have.get(k))
            if differ:
                raise Conflict(
                    f"promotion '{body.code}' already exists with other {', '.join(differ)}"
                )
            return shown, False
        now = utcnow()
        values = {
            "service_provider_id": sp_id,
            "code": body.code,
            "name": body.name,
            "starts_at": body.starts_at,
            "ends_at": body.ends_at,
            "window_kind": body.window.kind,
            "window_days": body.window.days,
            "counter": body.counter,
            "target": body.target,
            "repeat": body.repeat,
            **_stored(body, _Names(conn, sp_id)),
            "created_by": actor.name,
            "created_at": now,
            "updated_at": now,
        }
        plan_id = conn.execute(insert(_p).values(**values).returning(_p.c.id)).scalar_one()
        audit.record(
            conn,
            actor,
            "promotion.create",
            "promotion",
            body.code,
            sp_id,
            body.model_dump(mode="json"),
        )
        shown = public(conn.execute(select(_p).where(_p.c.id == plan_id)).one(), _Codes(conn))
        uow.commit()
    _forget(rt)
    return shown, True


def _row(conn: Connection, actor: Principal, code: str) -> Row[Any]:
    row = conn.execute(select(_p).where(_p.c.code == code)).first()
    if row is None:
        raise NotFound(f"promotion '{code}' not found")
    actor.require_scope(row.service_provider_id)
    return row


def get(rt: Runtime, actor: Principal, code: str) -> dict[str, Any]:
    """One plan."""
    actor.require(Permission.PROMOTIONS)
    with UnitOfWork(rt, read_only=True) as uow:
        return public(_row(uow.conn, actor, code), _Codes(uow.conn))


def list_plans(
    rt: Runtime,
    actor: Principal,
    service_provider: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The plans, newest first: ``{"items", "next_cursor"}``."""
    actor.require(Permission.PROMOTIONS)
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        query = select(_p).order_by(_p.c.id.desc()).limit(limit + 1)
        if service_provider is not None:
            sp_id = service_provider_id_by_code(conn, service_provider)
            actor.require_scope(sp_id)
            query = query.where(_p.c.service_provider_id == sp_id)
        if actor.service_provider_id is not None:
            query = query.where(_p.c.service_provider_id == actor.service_provider_id)
        if cursor is not None:
            if not cursor.isdigit():
                raise Invalid("cursor is the next_cursor of the previous page")
            query = query.where(_p.c.id < int(cursor))
        rows = conn.execute(query).all()
        codes = _Codes(conn)
        items = [public(row, codes) for row in rows[:limit]]
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def update_plan(rt: Runtime, actor: Principal, code: str, body: PromotionUpdate) -> dict[str, Any]:
    """Rename a plan, move its end (null: no end) or change its target."""
    actor.require(Permission.PROMOTIONS)
    changes = body.model_dump(exclude_unset=True)
    cleared = sorted(k for k, v in changes.items() if v is None and k != "ends_at")
    if cleared:
        raise Invalid(f"{', '.join(cleared)} cannot be null")
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _row(conn, actor, code)
        actor.require(Permission.PROMOTIONS, row.service_provider_id)
        ends_at = changes.get("ends_at", row.ends_at)
        if ends_at is not None and ends_at <= row.starts_at:
            raise Invalid("ends_at must be after starts_at")
        if changes:
            conn.execute(update(_p).where(_p.c.id == row.id).values(**changes, updated_at=utcnow()))
            audit.record(
                conn,
                actor,
                "promotion.update",
                "promotion",
                code,
                row.service_provider_id,
                body.model_dump(mode="json", exclude_unset=True),
            )
        shown = public(conn.execute(select(_p).where(_p.c.id == row.id)).one(), _Codes(conn))
        uow.commit()
    _forget(rt)
    return shown


def _forget(rt: Runtime) -> None:
    from voms.services.promotions import cache

    cache.clear(rt)
