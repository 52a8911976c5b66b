"""The bad-PIN blacklist as customer care sees it: who is blocked now, and release."""

from typing import Any

from sqlalchemy import delete, select

from voms.db import tables as t
from voms.db.engine import reading
from voms.db.types import utcnow
from voms.domain.errors import Invalid, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal

MAX_PAGE = 1000
_pa, _sub = t.pin_attempts, t.subscribers


def _msisdn(raw: str) -> str:
    try:
        return normalize_msisdn(raw)
    except ResultError:
        raise Invalid("msisdn is not a subscriber number") from None


def list_blacklisted(
    rt: Runtime,
    actor: Principal,
    *,
    msisdn: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """MSISDNs blocked now for bad PINs, by number; a scoped caller sees its own
    provider's subscribers only."""
    actor.require(Permission.LOOKUP)
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    now = utcnow()
    query = (
        select(_pa.c.msisdn, _pa.c.failures, _pa.c.blacklisted_until, _pa.c.updated_at)
        .where(_pa.c.blacklisted_until > now)
        .order_by(_pa.c.msisdn)
        .limit(limit + 1)
    )
    if msisdn:
        query = query.where(_pa.c.msisdn == _msisdn(msisdn))
    if cursor is not None:
        query = query.where(_pa.c.msisdn > cursor)
    if actor.service_provider_id is not None:
        query = query.where(
            _pa.c.msisdn.in_(
                select(_sub.c.msisdn).where(_sub.c.service_provider_id == actor.service_provider_id)
            )
        )
    with reading(rt.engine) as conn:
        rows = conn.execute(query).all()
    return {
        "items": [
            {
                "msisdn": row.msisdn,
                "reason": "bad_pins",
                "until": row.blacklisted_until,
                "failures": row.failures,
                "since": row.updated_at,
            }
            for row in rows[:limit]
        ],
        "next_cursor": rows[limit - 1].msisdn if len(rows) > limit else None,
    }


def release(rt: Runtime, actor: Principal, msisdn: str, reason: str) -> None:
    """Lift a blacklist now; the count of bad PINs starts again at 0."""
    actor.require(Permission.REDEEM)
    number = _msisdn(msisdn)
    reason = reason.strip()
    if not 1 <= len(reason) <= 200:
        raise Invalid("give a reason of 1 to 200 characters")
    with rt.engine.begin() as conn:
        sp_id = conn.execute(
            select(_sub.c.service_provider_id).where(_sub.c.msisdn == number)
        ).scalar()
        if actor.service_provider_id is not None and sp_id != actor.service_provider_id:
            raise NotFound(f"{number} is not blacklisted")
        released = conn.execute(delete(_pa).where(_pa.c.msisdn == number)).rowcount
        if not released:
            raise NotFound(f"{number} is not blacklisted")
        audit.record(conn, actor, "blacklist.release", "msisdn", number, sp_id, {"reason": reason})
