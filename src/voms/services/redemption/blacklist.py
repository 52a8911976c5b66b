"""Bad PINs: consecutive failed lookups from one MSISDN lead to a temporary blacklist.

A failed lookup (a PIN with a bad check digit, or one that finds no voucher) is counted
in the refusal's own unit of work (:func:`count_bad_pin`); while the requester is
blacklisted every redemption answers 5003 before any PIN is looked at; a success
forgets the count (:func:`forget_bad_pins`).
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, or_, select, update

from voms.db import tables as t
from voms.db.upsert import insert_if_absent
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services.events import outbox as events
from voms.services.uow import UnitOfWork

_pa = t.pin_attempts
BLACKLIST = select(_pa.c.failures, _pa.c.blacklisted_until).where(
    _pa.c.msisdn == bindparam("msisdn")
)


# The counter's own read, under the row lock: with the block care may have set by hand.
_COUNTED = select(_pa.c.failures, _pa.c.blacklisted_until, _pa.c.manual_until).where(
    _pa.c.msisdn == bindparam("msisdn")
)


def check(uow: UnitOfWork, msisdn: str) -> bool:
    """Raise 5003 while ``msisdn`` is blacklisted; True when it has failures to forget."""
    rows = uow.fetch(BLACKLIST, {"msisdn": msisdn})
    return verdict(rows[0] if rows else None, uow)


def verdict(row: Any, uow: UnitOfWork) -> bool:
    """:func:`check` on a row with the requester's ``failures`` and ``blacklisted_until``
    already read (the voucher lookup reads them in its round trip), or None."""
    if row is None or row.failures is None:
        return False
    if row.blacklisted_until is not None and row.blacklisted_until > uow.started_at:
        raise ResultError(Result.SUBSCRIBER_BLACKLISTED)
    return True


def count_bad_pin(rt: Runtime, uow: UnitOfWork, msisdn: str) -> None:
    """One more consecutive bad PIN; the last one allowed starts a blacklist."""
    settings, conn, now = rt.settings, uow.conn, uow.started_at
    fresh = {"msisdn": msisdn, "failures": 1, "blacklisted_until": None, "updated_at": now}
    if settings.max_bad_pin_attempts <= 1:
        fresh["blacklisted_until"] = now + timedelta(minutes=settings.blacklist_minutes)
    if insert_if_absent(conn, _pa, fresh):
        return
    row = conn.execute(_COUNTED.with_for_update(), {"msisdn": msisdn}).one()
    if row.manual_until is not None and row.manual_until > now:
        # Blocked by hand since this attempt read the row: count, keep care's block.
        conn.execute(update(_pa).where(_pa.c.msisdn == msisdn).values(failures=row.failures + 1))
        return
    ended = row.blacklisted_until is not None and row.blacklisted_until <= now
    failures = 1 if ended else row.failures + 1
    until = None
    if failures >= settings.max_bad_pin_attempts:
        until = now + timedelta(minutes=settings.blacklist_minutes)
    conn.execute(
        update(_pa)
        .where(_pa.c.msisdn == msisdn)
        .values(failures=failures, blacklisted_until=until, updated_at=now)
    )
    if until is not None:
        events.blacklisted(conn, msisdn, "bad_pins", until)


# A block care set by hand and not yet ended stays: only care releases it.
_FORGET_BAD_PINS = delete(_pa).where(
    _pa.c.msisdn == bindparam("msisdn"),
    or_(_pa.c.manual_until.is_(None), _pa.c.manual_until <= bindparam("now")),
)


def forget_bad_pins(uow: UnitOfWork, msisdn: str) -> None:
    """A success: the requester's count starts again (written with the COMMIT), unless
    care blocked the MSISDN by hand meanwhile."""
    uow.write(_FORGET_BAD_PINS, {"msisdn": msisdn, "now": uow.started_at})
