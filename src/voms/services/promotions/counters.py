"""A subscriber's promotion counters as care sees them (GET …/subscribers/{msisdn}/counters)."""

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Invalid, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.promotions import month_window, rewards_between
from voms.domain.roles import Permission
from voms.domain.scenarios import LATEST_EXPIRY
from voms.runtime import Runtime
from voms.services import paging
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork


def counters_of(
    rt: Runtime,
    actor: Principal,
    msisdn: str,
    *,
    at: datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Each plan of the subscriber's provider that runs now or counted it: the counter of
    the current window, the target, the rewards earned in the window and what is left
    to the next one; ``{"items", "next_cursor"}``, newest plan first."""
    actor.require(Permission.LOOKUP)
    now = at or utcnow()
    size = paging.bounded(limit)
    after = paging.decode(cursor, int)
    s, p, c, r = t.subscribers, t.promotions, t.promotion_counters, t.promotion_rewards
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        try:
            number = normalize_msisdn(msisdn)
        except ResultError:
            raise Invalid(f"'{msisdn}' is not a subscriber number (MSISDN)") from None
        subscriber = conn.execute(
            select(s.c.id, s.c.service_provider_id).where(s.c.msisdn == number)
        ).first()
        if subscriber is None:
            raise NotFound(f"subscriber '{msisdn}' not found")
        actor.require_scope(subscriber.service_provider_id)
        last_reward = (
            select(func.max(r.c.at))
            .where(r.c.promotion_id == p.c.id, r.c.subscriber_id == subscriber.id)
            .scalar_subquery()
        )
        rows = conn.execute(
            select(
                p,
                c.c.window_start,
                c.c.window_end,
                c.c.value,
                last_reward.label("last"),
            )
            .select_from(
                p.outerjoin(c, (c.c.promotion_id == p.c.id) & (c.c.subscriber_id == subscriber.id))
            )
            .where(
                p.c.service_provider_id == subscriber.service_provider_id,
                or_(
                    c.c.value.is_not(None),
                    (p.c.starts_at <= now) & (or_(p.c.ends_at.is_(None), p.c.ends_at > now)),
                ),
            )
            .where(*([p.c.id < after[0]] if after is not None else []))
            .order_by(p.c.id.desc())
            .limit(size + 1)
        ).all()
    items = [_counter(row, now) | {"_id": row.id} for row in rows]
    found = paging.page(items, size, lambda item: (item["_id"],))
    for item in found["items"]:
        del item["_id"]
    return found


def _counter(row: Any, now: datetime) -> dict[str, Any]:
    counting = row.value is not None and row.window_end > now
    value = int(row.value) if counting else 0
    start, end = (row.window_start, row.window_end) if counting else _window(row, now)
    if row.window_kind == "campaign":
        start, end = row.starts_at, row.ends_at
    earned = rewards_between(0, value, row.target, row.repeat)
    if row.repeat:
        left: int | None = row.target - value % row.target
    else:
        left = row.target - value if value < row.target else None
    return {
        "promotion": row.code,
        "name": row.name,
        "counter": row.counter,
        "window": {"kind": row.window_kind, "days": row.window_days},
        "window_start": _iso(start),
        "window_end": _iso(end if end != LATEST_EXPIRY else None),
        "value": value,
        "target": row.target,
        "repeat": row.repeat,
        "rewards": earned,
        "to_next_reward": left,
        "last_reward_at": _iso(row.last),
        "running": row.starts_at <= now and (row.ends_at is None or now < row.ends_at),
    }


def _window(row: Any, now: datetime) -> tuple[datetime | None, datetime | None]:
    """The window a redemption now would count in; none yet for rolling days (it opens
    with the next redemption)."""
    if row.window_kind == "calendar_month":
        return month_window(now)
    return None, None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
