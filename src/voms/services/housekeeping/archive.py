"""Archiving: redeemed, expired and deleted vouchers past retention leave the hot table.

Set-based and chunked by serial: each transaction moves the archivable vouchers of one
window of ``chunk_size`` serials, so locks are short and redemptions never wait long.
A run that stops midway loses nothing and repeats nothing: a chunk commits as a whole,
and a moved voucher is no longer in ``vouchers`` to be moved again.
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
)

from voms.db import tables as t
from voms.services.housekeeping.context import JobContext
from voms.services.uow import UnitOfWork

_v, _b, _a = t.vouchers, t.batches, t.voucher_archive
_ARCHIVE_COLUMNS = (
    "serial",
    "batch_id",
    "pin_hash",
    "lookup_key_id",
    "state",
    "voucher_state",
    "state_changed_at",
    "redeemed_at",
    "redeemed_by",
    "expires_at",
    "archived_at",
)


def _archivable(cutoff: datetime) -> ColumnElement[bool]:
    """Final for good and older than the cutoff (a reserved voucher is never final)."""
    return or_(
        and_(_v.c.state == "redeemed", _v.c.redeemed_at < cutoff),
        and_(
            _v.c.state == "deleted",
            func.coalesce(_v.c.state_changed_at, _b.c.updated_at) < cutoff,
        ),
        and_(_v.c.state != "reserved", _b.c.state == "deleted", _b.c.updated_at < cutoff),
        and_(_v.c.state != "reserved", _v.c.state != "redeemed", _b.c.expires_at < cutoff),
    )


def _final_state(state: Any, batch_state: Any) -> Any:
    return case(
        (state == "redeemed", literal("redeemed")),
        (or_(state == "deleted", batch_state == "deleted"), literal("deleted")),
        else_=literal("expired"),
    )


def _window_end(conn: Connection, after: int, size: int) -> int | None:
    """The last serial of the next window of ``size`` vouchers after ``after``."""
    end = conn.execute(
        select(_v.c.serial)
        .where(_v.c.serial > after)
        .order_by(_v.c.serial)
        .offset(size - 1)
        .limit(1)
    ).scalar()
    if end is None:
        end = conn.execute(select(func.max(_v.c.serial)).where(_v.c.serial > after)).scalar()
    return None if end is None else int(end)


def move_window(conn: Connection, low: int, high: int, cutoff: datetime, now: datetime) -> int:
    """Move the archivable vouchers with low < serial <= high; returns how many."""
    window = and_(_v.c.batch_id == _b.c.id, _v.c.serial > low, _v.c.serial <= high)
    if conn.dialect.name == "postgresql":
        # Batches of the window cannot change (amend, delete) while it moves; redemptions
        # only read batches, so they never wait on this.
        conn.execute(
            select(_b.c.id)
            .where(_b.c.serial_first <= high, _b.c.serial_last > low)
            .with_for_update(read=True)
        )
        # One statement: what is deleted is exactly what is archived, row by row.
        moved = (
            delete(_v)
            .where(window, _archivable(cutoff))
            .returning(
                _v.c.serial,
                _v.c.batch_id,
                _v.c.pin_hash,
                _v.c.lookup_key_id,
                _v.c.state,
                _v.c.state_changed_at,
                _v.c.redeemed_at,
                _v.c.redeemed_by,
                _b.c.expires_at,
                _b.c.state.label("batch_state"),
            )
            .cte("moved")
        )
        source = select(
            moved.c.serial,
            moved.c.batch_id,
            moved.c.pin_hash,
            moved.c.lookup_key_id,
            _final_state(moved.c.state, moved.c.batch_state),
            moved.c.state,
            moved.c.state_changed_at,
            moved.c.redeemed_at,
            moved.c.redeemed_by,
            moved.c.expires_at,
            literal(now, _a.c.archived_at.type),
        )
        # Counted in the database: psycopg reports no row count for an INSERT fed by a
        # DELETE, and returning every serial would ship the chunk back for nothing.
        inserted = (
            insert(_a).from_select(_ARCHIVE_COLUMNS, source).returning(_a.c.serial).cte("inserted")
        )
        return int(conn.execute(select(func.count()).select_from(inserted)).scalar_one())
    # SQLite: one writer at a time (BEGIN IMMEDIATE), so copy-then-delete is atomic.
    source = select(
        _v.c.serial,
        _v.c.batch_id,
        _v.c.pin_hash,
        _v.c.lookup_key_id,
        _final_state(_v.c.state, _b.c.state),
        _v.c.state,
        _v.c.state_changed_at,
        _v.c.redeemed_at,
        _v.c.redeemed_by,
        _b.c.expires_at,
        literal(now, _a.c.archived_at.type),
    ).where(window, _archivable(cutoff))
    copied = conn.execute(insert(_a).from_select(_ARCHIVE_COLUMNS, source)).rowcount
    if copied:
        conn.execute(
            delete(_v).where(
                _v.c.serial.in_(select(_a.c.serial).where(_a.c.serial > low, _a.c.serial <= high))
            )
        )
    return copied


def archive_vouchers(ctx: JobContext) -> int:
    """Move vouchers redeemed, expired or deleted before the retention into the archive."""
    cutoff = ctx.now - timedelta(days=ctx.rt.settings.archive_retention_days)
    ctx.detail["cutoff"] = cutoff.isoformat()
    after, total = 0, 0
    while True:
        with UnitOfWork(ctx.rt, read_only=True) as uow:
            conn = uow.conn
            high = _window_end(conn, after, ctx.chunk_size)
        if high is None:
            return total
        with UnitOfWork(ctx.rt) as uow:
            conn = uow.conn
            moved = move_window(conn, after, high, cutoff, ctx.now)
            uow.commit()
        total += moved
        ctx.detail["archived"] = total
        ctx.chunk_done(moved)
        after = high
