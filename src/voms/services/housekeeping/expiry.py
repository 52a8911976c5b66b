"""Expiry for reporting: per expired batch, how many vouchers expired unused.

A voucher is expired from its batch's ``expires_at`` whether or not this job ran; the
counts only spare reports from counting millions of vouchers. One batch per
transaction, read-only on ``vouchers`` (no voucher row is written or locked).
"""

from sqlalchemy import delete, func, insert, or_, select

from voms.db import tables as t
from voms.services.housekeeping.context import JobContext
from voms.services.uow import UnitOfWork

_v, _b, _a, _e = t.vouchers, t.batches, t.voucher_archive, t.batch_expiries
# Batches whose vouchers can expire (a deleted or failed batch's vouchers never count).
_LIVE = ("generated", "active", "frozen")
UNUSED = ("available", "frozen")


def count_expiries(ctx: JobContext) -> int:
    """Count the unused vouchers of every batch that expired since it was last counted."""
    with UnitOfWork(ctx.rt, read_only=True) as uow:
        conn = uow.conn
        due = conn.execute(
            select(_b.c.id, _b.c.service_provider_id, _b.c.voucher_type_id, _b.c.expires_at)
            .select_from(_b.outerjoin(_e, _e.c.batch_id == _b.c.id))
            .where(
                _b.c.expires_at <= ctx.now,
                _b.c.state.in_(_LIVE),
                or_(_e.c.batch_id.is_(None), _e.c.expires_at != _b.c.expires_at),
            )
            .order_by(_b.c.id)
        ).all()
    total = 0
    for batch in due:
        with UnitOfWork(ctx.rt) as uow:
            conn = uow.conn
            unused = conn.execute(
                select(func.count())
                .select_from(_v)
                .where(_v.c.batch_id == batch.id, _v.c.state.in_(UNUSED))
            ).scalar_one()
            archived = conn.execute(
                select(func.count())
                .select_from(_a)
                .where(_a.c.batch_id == batch.id, _a.c.state == "expired")
            ).scalar_one()
            conn.execute(delete(_e).where(_e.c.batch_id == batch.id))
            conn.execute(
                insert(_e).values(
                    batch_id=batch.id,
                    service_provider_id=batch.service_provider_id,
                    voucher_type_id=batch.voucher_type_id,
                    expires_at=batch.expires_at,
                    expired_count=unused + archived,
                    counted_at=ctx.now,
                )
            )
            uow.commit()
        total += unused + archived
        ctx.chunk_done(unused + archived)
    # Batches amended into the future, or deleted, no longer count as expired.
    with UnitOfWork(ctx.rt) as uow:
        conn = uow.conn
        stale = select(_b.c.id).where(
            _b.c.id == _e.c.batch_id, or_(_b.c.expires_at > ctx.now, _b.c.state.not_in(_LIVE))
        )
        withdrawn = conn.execute(delete(_e).where(stale.exists())).rowcount
        uow.commit()
    ctx.detail.update(batches=len(due), withdrawn=withdrawn)
    return total
