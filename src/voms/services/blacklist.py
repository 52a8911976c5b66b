"""Care's side of the bad-PIN blacklist: who is blocked now, block by hand, release.

The redemption refuses (5003) a requester whose ``pin_attempts.blacklisted_until`` lies
in the future, and counts bad PINs in the same row. A block by hand writes that very
column, so every channel honours it as it already reads it; "until released" is a date
far in the future (:data:`FOREVER`), shown as ``until: null``. ``manual_until`` keeps
the date care set: while the two agree, the block is the manual one (a later bad-PIN
blacklist, once a manual block has ended, rewrites ``blacklisted_until`` and is then
shown as ``bad_pins`` again).
"""

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints
from sqlalchemy import Connection, Row, and_, delete, select, tuple_, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.db.upsert import insert_if_absent
from voms.domain.errors import Forbidden, Invalid, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal
from voms.services.events import outbox as events
from voms.services.uow import UnitOfWork

# "Until released": later than any block that ends, and still a valid date everywhere.
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)
MAX_LIMIT = 1000

Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class BlockIn(BaseModel):
    """POST /api/v1/blacklist: block an MSISDN by hand, until a time or until released."""

    model_config = ConfigDict(extra="forbid")

    msisdn: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    reason: Note  # why care blocks it (a complaint, a fraud case): shown as ``note``
    until: AwareDatetime | None = None


_pa, _s = t.pin_attempts, t.subscribers


def _msisdn(raw: str) -> str:
    try:
        return normalize_msisdn(raw)
    except ResultError:
        raise Invalid(f"'{raw}' is not a subscriber number (MSISDN)") from None


def _is_manual(row: Any) -> bool:
    return row.manual_until is not None and row.manual_until == row.blacklisted_until


def _entry(row: Any) -> dict[str, Any]:
    manual = _is_manual(row)
    until = row.blacklisted_until
    return {
        "msisdn": row.msisdn,
        "reason": "manual" if manual else "bad_pins",
        "until": None if until is not None and until >= FOREVER else until,
        "failures": row.failures,
        "note": row.note if manual else None,
        "blocked_by": row.blocked_by if manual else None,
        "updated_at": row.updated_at,
    }


def _provider_of(conn: Connection, msisdn: str) -> int | None:
    sp_id = conn.execute(select(_s.c.service_provider_id).where(_s.c.msisdn == msisdn)).scalar()
    return None if sp_id is None else int(sp_id)


def _check_scope(conn: Connection, actor: Principal, msisdn: str) -> int | None:
    """The MSISDN's provider; a scoped key may only act on its own provider's subscribers."""
    sp_id = _provider_of(conn, msisdn)
    if actor.service_provider_id is not None and sp_id != actor.service_provider_id:
        raise Forbidden("outside this key's service provider")
    return sp_id


def _encode_cursor(row: Row[Any]) -> str:
    return base64.urlsafe_b64encode(f"{row.updated_at.isoformat()}|{row.msisdn}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at_text, msisdn = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        at = datetime.fromisoformat(at_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("malformed cursor") from None
    if at.tzinfo is None:
        raise Invalid("malformed cursor")
    return at, msisdn


def list_blacklist(
    rt: Runtime,
    actor: Principal,
    *,
    msisdn: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """MSISDNs blocked now, most recently changed first; a scoped key sees its subscribers."""
    actor.require(Permission.BLACKLIST)
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}")
    now = utcnow()
    conditions = [_pa.c.blacklisted_until > now]
    if msisdn is not None:
        conditions.append(_pa.c.msisdn == _msisdn(msisdn))
    if cursor is not None:
        at, after = _decode_cursor(cursor)
        conditions.append(tuple_(_pa.c.updated_at, _pa.c.msisdn) < tuple_(at, after))
    if actor.service_provider_id is not None:
        conditions.append(
            _pa.c.msisdn.in_(
                select(_s.c.msisdn).where(_s.c.service_provider_id == actor.service_provider_id)
            )
        )
    query = (
        select(_pa)
        .where(and_(*conditions))
        .order_by(_pa.c.updated_at.desc(), _pa.c.msisdn.desc())
        .limit(limit + 1)
    )
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        rows = conn.execute(query).all()
    page = rows[:limit]
    return {
        "items": [_entry(row) for row in page],
        "next_cursor": _encode_cursor(page[-1]) if len(rows) > limit else None,
    }


def block(rt: Runtime, actor: Principal, body: BlockIn) -> dict[str, Any]:
    """Block an MSISDN by hand; its bad-PIN count is kept. Audited."""
    actor.require(Permission.BLACKLIST)
    msisdn = _msisdn(body.msisdn)
    now = utcnow()
    if body.until is not None and body.until <= now:
        raise Invalid("until must be in the future (leave it out: until released)")
    until = FOREVER if body.until is None else body.until
    manual = {
        "blacklisted_until": until,
        "manual_until": until,
        "note": body.reason,
        "blocked_by": actor.name,
        "updated_at": now,
    }
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = _check_scope(conn, actor, msisdn)
        if not insert_if_absent(conn, _pa, {"msisdn": msisdn, "failures": 0, **manual}):
            conn.execute(update(_pa).where(_pa.c.msisdn == msisdn).values(**manual))
        audit.record(
            conn,
            actor,
            "blacklist.block",
            "msisdn",
            msisdn,
            sp_id,
            {"reason": body.reason, "until": None if body.until is None else until.isoformat()},
        )
        row = conn.execute(select(_pa).where(_pa.c.msisdn == msisdn)).one()
        events.blacklisted(conn, msisdn, "manual", body.until)
        uow.commit()
        return _entry(row)


def release(rt: Runtime, actor: Principal, msisdn: str) -> dict[str, Any]:
    """Lift a block (manual or bad PINs); the failure count starts again at 0. Audited.

    Answers the entry as it was (``was_blocked``: it was blocked then, not only counting
    failures); 404 when the MSISDN has neither a block nor failures.
    """
    actor.require(Permission.BLACKLIST)
    number = _msisdn(msisdn)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = _check_scope(conn, actor, number)
        row = conn.execute(delete(_pa).where(_pa.c.msisdn == number).returning(*_pa.c)).first()
        if row is None:
            raise NotFound(f"'{number}' is not on the blacklist")
        was = _entry(row)
        blocked = row.blacklisted_until is not None and row.blacklisted_until > utcnow()
        audit.record(
            conn,
            actor,
            "blacklist.release",
            "msisdn",
            number,
            sp_id,
            {
                "reason": was["reason"] if blocked else None,
                "until": None if was["until"] is None else was["until"].isoformat(),
                "failures": row.failures,
            },
        )
        uow.commit()
    return {**was, "was_blocked": blocked, "released_by": actor.name}
