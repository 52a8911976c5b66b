"""Small recurring jobs: reservation timeouts, blacklists, request ids, channel sessions."""

from datetime import timedelta

from sqlalchemy import delete, or_, select

from voms.db import tables as t
from voms.services import channel_sessions, distribution, redemption
from voms.services.housekeeping.context import JobContext
from voms.services.uow import UnitOfWork


def time_out_reservations(ctx: JobContext) -> int:
    """Apply each voucher type's timeout action (hold, commit, revoke) to expired reservations."""
    done = {"hold": 0, "commit": 0, "revoke": 0}
    while True:
        chunk = redemption.expire_reservations(ctx.rt, ctx.now, limit=ctx.chunk_size)
        for action, count in chunk.items():
            done[action] += count
        handled = sum(chunk.values())
        ctx.detail.update(done)
        if handled == 0:
            break
        ctx.chunk_done(handled)
        if handled < ctx.chunk_size:
            break
    return sum(done.values())


def release_blacklists(ctx: JobContext) -> int:
    """Forget ended blacklists, and bad-PIN counts from long ago."""
    pa = t.pin_attempts
    quiet_since = ctx.now - timedelta(minutes=ctx.rt.settings.blacklist_minutes)
    with UnitOfWork(ctx.rt) as uow:
        conn = uow.conn
        released = conn.execute(
            delete(pa).where(
                or_(
                    pa.c.blacklisted_until <= ctx.now,
                    pa.c.blacklisted_until.is_(None) & (pa.c.updated_at < quiet_since),
                )
            )
        ).rowcount
        uow.commit()
    ctx.chunk_done(released)
    return released


def purge_request_ids(ctx: JobContext) -> int:
    """Delete client request ids older than the retention, oldest first, chunk by chunk."""
    k = t.idempotency_keys
    cutoff = ctx.now - timedelta(hours=ctx.rt.settings.idempotency_retention_hours)
    total = 0
    while True:
        with UnitOfWork(ctx.rt) as uow:
            conn = uow.conn
            # The chunk's newest timestamp bounds it: one index range per transaction.
            bound = conn.execute(
                select(k.c.created_at)
                .where(k.c.created_at < cutoff)
                .order_by(k.c.created_at)
                .offset(ctx.chunk_size - 1)
                .limit(1)
            ).scalar()
            last = bound is None
            limit = (k.c.created_at <= bound) if bound is not None else (k.c.created_at < cutoff)
            removed = conn.execute(delete(k).where(limit, k.c.created_at < cutoff)).rowcount
            uow.commit()
        total += removed
        if removed:
            ctx.chunk_done(removed)
        if last:
            return total


def purge_channel_sessions(ctx: JobContext) -> int:
    """Forget USSD menu sessions past their timeout (they hold no PIN, only menu state)."""
    removed = channel_sessions.purge_expired(ctx.rt, redemption.HOUSEKEEPING, ctx.now)
    ctx.chunk_done(removed)
    return removed


def purge_export_files(ctx: JobContext) -> int:
    """Delete the kept encrypted files of exports whose download link has expired."""
    removed = distribution.purge_export_files(ctx.rt, ctx.now)
    ctx.chunk_done(removed)
    return removed
