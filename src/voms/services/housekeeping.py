"""Housekeeping: the due work of every job, done at once (the scheduler runs it later)."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_

from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import idempotency, redemption


def run_due(rt: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """Expired reservations, old request ids, ended blacklists; returns what was done."""
    now = now or utcnow()
    settings = rt.settings
    done: dict[str, Any] = {"reservations": redemption.expire_reservations(rt, now)}
    with rt.engine.begin() as conn:
        done["request_ids_forgotten"] = idempotency.purge(
            conn, now - timedelta(hours=settings.idempotency_retention_hours)
        )
        pa = t.pin_attempts
        quiet_since = now - timedelta(minutes=settings.blacklist_minutes)
        # A blacklist that ended, or bad PINs long ago, no longer count.
        done["pin_attempt_records_released"] = conn.execute(
            delete(pa).where(
                or_(
                    pa.c.blacklisted_until <= now,
                    pa.c.blacklisted_until.is_(None) & (pa.c.updated_at < quiet_since),
                )
            )
        ).rowcount
    return done
