"""What a service provider wants to be alerted of (docs/alerts.md, "Configuration").

``PATCH /api/v1/service-providers/{code}/alerts`` and ``voms alerts set`` merge a body
into the provider's settings: a field left out is kept, ``null`` removes it (a threshold
of ``null`` removes that threshold). Operators and admins, within their provider scope.
"""

import re
from datetime import datetime, time
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import Connection, Table, delete, insert, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Invalid
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.catalog import MAX_AMOUNT, Code
from voms.services.uow import UnitOfWork

_s, _lb, _st = t.alert_settings, t.low_balance_thresholds, t.stock_thresholds
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
Email = Annotated[
    str, StringConstraints(pattern=r"^[^@\s,;<>\"]{1,64}@[A-Za-z0-9.-]{1,190}$", max_length=254)
]
Threshold = Annotated[int, Field(gt=0, le=MAX_AMOUNT)]
MAX_THRESHOLDS = 200


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuietHours(_Input):
    """Subscriber alerts wait from ``from`` until ``until`` (HH:MM local time, may wrap
    midnight: 21:00 to 08:00)."""

    from_: str = Field(alias="from")
    until: str

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("from_", "until")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("must be HH:MM (00:00 to 23:59)")
        return value


class Burst(_Input):
    count: int = Field(ge=1, le=1_000_000)
    minutes: int = Field(ge=1, le=1440)


class AlertSettingsIn(_Input):
    quiet_hours: QuietHours | None = None
    time_zone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    expiry_notice_days: Annotated[int, Field(ge=1, le=365)] | None = None
    batch_expiry_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    blacklist_burst: Burst | None = None
    reward_sms: bool | None = None
    operator_emails: Annotated[list[Email], Field(max_length=20)] | None = None
    low_balance: (
        Annotated[dict[Code, Threshold | None], Field(max_length=MAX_THRESHOLDS)] | None
    ) = None
    voucher_stock: (
        Annotated[dict[Code, Threshold | None], Field(max_length=MAX_THRESHOLDS)] | None
    ) = None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"unknown time zone {name!r}") from None


def is_quiet(quiet_from: str | None, quiet_until: str | None, time_zone: str, at: datetime) -> bool:
    """True when ``at`` falls in the quiet hours (local time of ``time_zone``)."""
    if not quiet_from or not quiet_until or quiet_from == quiet_until:
        return False
    local = at.astimezone(zone(time_zone)).time()
    start, end = time.fromisoformat(quiet_from), time.fromisoformat(quiet_until)
    if start < end:
        return start <= local < end
    return local >= start or local < end  # wraps midnight


def _defaults(sp_id: int, actor: Principal) -> dict[str, Any]:
    return {
        "service_provider_id": sp_id,
        "quiet_from": None,
        "quiet_until": None,
        "time_zone": "UTC",
        "expiry_notice_days": None,
        "batch_expiry_days": None,
        "burst_count": None,
        "burst_minutes": None,
        "reward_sms": True,
        "operator_emails": [],
        "updated_at": utcnow(),
        "updated_by": actor.name[:100],
    }


def _view(conn: Connection, code: str, sp_id: int) -> dict[str, Any]:
    row = conn.execute(select(_s).where(_s.c.service_provider_id == sp_id)).first()
    bt, vt = t.balance_types, t.voucher_types
    low = conn.execute(
        select(bt.c.code, _lb.c.threshold)
        .select_from(_lb.join(bt, bt.c.id == _lb.c.balance_type_id))
        .where(bt.c.service_provider_id == sp_id)
        .order_by(bt.c.code)
    ).all()
    stock = conn.execute(
        select(vt.c.code, _st.c.threshold)
        .select_from(_st.join(vt, vt.c.id == _st.c.voucher_type_id))
        .where(vt.c.service_provider_id == sp_id)
        .order_by(vt.c.code)
    ).all()
    quiet = None
    if row is not None and row.quiet_from and row.quiet_until:
        quiet = {"from": row.quiet_from, "until": row.quiet_until}
    burst = None
    if row is not None and row.burst_count and row.burst_minutes:
        burst = {"count": row.burst_count, "minutes": row.burst_minutes}
    return {
        "service_provider": code,
        "quiet_hours": quiet,
        "time_zone": row.time_zone if row is not None else "UTC",
        "expiry_notice_days": row.expiry_notice_days if row is not None else None,
        "batch_expiry_days": row.batch_expiry_days if row is not None else None,
        "blacklist_burst": burst,
        "reward_sms": row.reward_sms if row is not None else True,
        "operator_emails": list(row.operator_emails) if row is not None else [],
        "low_balance": {r.code: r.threshold for r in low},
        "voucher_stock": {r.code: r.threshold for r in stock},
        "updated_at": row.updated_at if row is not None else None,
        "updated_by": row.updated_by if row is not None else None,
    }


def get_settings(rt: Runtime, actor: Principal, code: str) -> dict[str, Any]:
    """The provider's alert settings and thresholds (defaults when never set)."""
    with UnitOfWork(rt, read_only=True) as uow:
        sp_id = service_provider_id_by_code(uow.conn, code)
        actor.require(Permission.CATALOG_WRITE, sp_id)
        return _view(uow.conn, code, sp_id)


def _ids(conn: Connection, table: Table, sp_id: int, codes: list[str], what: str) -> dict[str, int]:
    found = {
        row.code: row.id
        for row in conn.execute(
            select(table.c.code, table.c.id).where(
                table.c.service_provider_id == sp_id, table.c.code.in_(codes)
            )
        )
    }
    missing = sorted(set(codes) - set(found))
    if missing:
        raise Invalid(f"unknown {what} of this service provider: {', '.join(missing)}")
    return found


def _set_thresholds(
    conn: Connection, table: Table, key: str, ids: dict[str, int], given: dict[str, int | None]
) -> None:
    removed = [ids[code] for code, value in given.items() if value is None]
    kept = [{key: ids[code], "threshold": value} for code, value in given.items() if value]
    touched = removed + [row[key] for row in kept]
    if touched:
        conn.execute(delete(table).where(table.c[key].in_(touched)))
    if kept:
        conn.execute(insert(table), kept)


def update_settings(
    rt: Runtime, actor: Principal, code: str, body: AlertSettingsIn
) -> dict[str, Any]:
    """Merge ``body`` into the provider's settings; the settings as they are now."""
    given = body.model_fields_set
    if body.time_zone is not None:
        zone(body.time_zone)
    for name in ("time_zone", "reward_sms", "operator_emails"):
        if name in given and getattr(body, name) is None:
            raise Invalid(f"{name} cannot be null")
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, code)
        actor.require(Permission.CATALOG_WRITE, sp_id)
        values: dict[str, Any] = {"updated_at": utcnow(), "updated_by": actor.name[:100]}
        if "quiet_hours" in given:
            quiet = body.quiet_hours
            values["quiet_from"] = quiet.from_ if quiet else None
            values["quiet_until"] = quiet.until if quiet else None
        if "blacklist_burst" in given:
            burst = body.blacklist_burst
            values["burst_count"] = burst.count if burst else None
            values["burst_minutes"] = burst.minutes if burst else None
        for name in (
            "time_zone",
            "expiry_notice_days",
            "batch_expiry_days",
            "reward_sms",
            "operator_emails",
        ):
            if name in given:
                values[name] = getattr(body, name)
        exists = conn.execute(
            select(_s.c.service_provider_id).where(_s.c.service_provider_id == sp_id)
        ).first()
        if exists is None:
            conn.execute(insert(_s).values({**_defaults(sp_id, actor), **values}))
        else:
            conn.execute(update(_s).where(_s.c.service_provider_id == sp_id).values(**values))
        if body.low_balance:
            ids = _ids(conn, t.balance_types, sp_id, list(body.low_balance), "balance types")
            _set_thresholds(conn, _lb, "balance_type_id", ids, body.low_balance)
        if body.voucher_stock:
            ids = _ids(conn, t.voucher_types, sp_id, list(body.voucher_stock), "voucher types")
            _set_thresholds(conn, _st, "voucher_type_id", ids, body.voucher_stock)
        result = _view(conn, code, sp_id)
        audit.record(
            conn,
            actor,
            "alerts.update",
            "service_provider",
            code,
            sp_id,
            body.model_dump(mode="json", exclude_unset=True, by_alias=True),
        )
        uow.commit()
    return result
