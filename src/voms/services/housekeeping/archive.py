"""Archiving: redeemed, expired and deleted vouchers past retention leave the hot table.

The job goes only where archivable vouchers can be, never over the whole table:

- the serial ranges of batches expired, or deleted, before the cutoff (from
  ``batches``, a few thousand rows at most, those with vouchers left in them);
- the serial ranges deleted by range operations (``voucher_events``) since the last
  run's cutoff;
- the vouchers of successful redemptions and commits (``transactions``, by its index on
  the time) made between the last run's cutoff and this one's: a voucher is redeemed
  by exactly one of them, which ``voms verify`` checks, at the very moment of its
  ``redeemed_at``.

So its time follows the vouchers it archives, and the batches they are in, not the
table (no index on the vouchers' state either: a redemption changes the state, and an
index on it would cost every redemption its HOT update, see migration 0006_scale).
The last cutoff fully done is kept in ``job_cursors``; without one (the first run) the
redemptions are walked from the first.

Set-based and chunked: each transaction moves the archivable vouchers of one window of
at most ``chunk_size`` serials or redemptions, so locks are short and redemptions never
wait long. A run that stops midway loses nothing and repeats nothing: a chunk commits
as a whole, a moved voucher is no longer in ``vouchers`` to be moved again, and the
cutoff is recorded only once every window is done.
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY

from voms.db import tables as t
from voms.domain.states import VoucherState
from voms.services.housekeeping.context import JobContext
from voms.services.reports.rollups import VOUCHER_MOVES
from voms.services.uow import UnitOfWork

JOB = "voucher_archive"
# Redemptions and range deletions are walked from this long before the last run's
# cutoff. Each has the very time its vouchers have (``redeemed_at``, ``state_changed_at``),
# and with a retention of a day at least none still uncommitted can be that old when a
# run ends: a margin for clocks that differ between hosts.
OVERLAP = timedelta(minutes=10)
# The successful transactions that leave their voucher redeemed.
REDEEMING = sorted(k for k, (_, to) in VOUCHER_MOVES.items() if to is VoucherState.REDEEMED)
# The range operation that deletes vouchers (voms.services.lifecycle.change_vouchers).
RANGE_DELETE = "voucher_delete"

_v, _b, _a = t.vouchers, t.batches, t.voucher_archive
_x, _e, _c = t.transactions, t.voucher_events, t.job_cursors
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


def _window_end(conn: Connection, after: int, last: int, size: int) -> int | None:
    """The last serial of the next window of ``size`` vouchers after ``after``, up to
    ``last``."""
    span = [_v.c.serial > after, _v.c.serial <= last]
    end = conn.execute(
        select(_v.c.serial).where(*span).order_by(_v.c.serial).offset(size - 1).limit(1)
    ).scalar()
    if end is None:
        end = conn.execute(select(func.max(_v.c.serial)).where(*span)).scalar()
    return None if end is None else int(end)


def move_window(conn: Connection, low: int, high: int, cutoff: datetime, now: datetime) -> int:
    """Move the archivable vouchers with low < serial <= high; returns how many."""
    return _move(
        conn,
        and_(_v.c.serial > low, _v.c.serial <= high),
        and_(_b.c.serial_first <= high, _b.c.serial_last > low),
        cutoff,
        now,
    )


def _move(
    conn: Connection,
    where: ColumnElement[bool],
    batches: ColumnElement[bool],
    cutoff: datetime,
    now: datetime,
) -> int:
    """Move the archivable vouchers matching ``where``, in batches matching ``batches``
    (a superset of theirs); returns how many."""
    joined = and_(_v.c.batch_id == _b.c.id, where)
    if conn.dialect.name == "postgresql":
        # Batches of the window cannot change (amend, delete) while it moves; redemptions
        # only read batches, so they never wait on this.
        conn.execute(select(_b.c.id).where(batches).with_for_update(read=True))
        # One statement: what is deleted is exactly what is archived, row by row.
        moved = (
            delete(_v)
            .where(joined, _archivable(cutoff))
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
    ).where(joined, _archivable(cutoff))
    copied = conn.execute(insert(_a).from_select(_ARCHIVE_COLUMNS, source)).rowcount
    if copied:
        conn.execute(delete(_v).where(where, exists().where(_a.c.serial == _v.c.serial)))
    return copied


# --- where archivable vouchers can be --------------------------------------------------------


def last_cutoff(conn: Connection) -> datetime | None:
    """The cutoff of the last run that finished (every voucher archivable then is gone)."""
    detail = conn.execute(select(_c.c.detail).where(_c.c.job == JOB)).scalar()
    return None if not detail else datetime.fromisoformat(detail["cutoff"])


def _save_cutoff(conn: Connection, cutoff: datetime, now: datetime) -> None:
    conn.execute(delete(_c).where(_c.c.job == JOB))
    conn.execute(
        insert(_c).values(
            job=JOB,
            position=int(cutoff.timestamp()),
            detail={"cutoff": cutoff.isoformat()},
            updated_at=now,
        )
    )


def spans(conn: Connection, cutoff: datetime, since: datetime | None) -> list[tuple[int, int]]:
    """The serial ranges (first, last), sorted and apart, that hold every voucher of a
    batch expired or deleted before ``cutoff``, and every voucher a range operation
    deleted since ``since`` (all of them without ``since``)."""
    gone = or_(
        _b.c.expires_at < cutoff,
        and_(_b.c.state == "deleted", _b.c.updated_at < cutoff),
    )
    # Batches archived before hold only their reserved vouchers, if any: not walked.
    left = exists().where(_v.c.batch_id == _b.c.id, _v.c.state != "reserved")
    found = [
        (int(first), int(last))
        for first, last in conn.execute(
            select(_b.c.serial_first, _b.c.serial_last).where(gone, left)
        )
    ]
    deleted = select(_e.c.serial_from, _e.c.serial_to).where(
        _e.c.action == RANGE_DELETE, _e.c.at < cutoff
    )
    if since is not None:
        deleted = deleted.where(_e.c.at >= since - OVERLAP)
    found += [(int(first), int(last)) for first, last in conn.execute(deleted)]
    merged: list[tuple[int, int]] = []
    for first, last in sorted(found):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _redeemed(cutoff: datetime, since: datetime | None) -> list[ColumnElement[bool]]:
    """The successful redemptions and commits made before ``cutoff`` since ``since``."""
    where = [_x.c.kind.in_(REDEEMING), _x.c.result_code == 0, _x.c.at < cutoff]
    if since is not None:
        where.append(_x.c.at >= since - OVERLAP)
    return where


# --- the job --------------------------------------------------------------------------------


def archive_vouchers(ctx: JobContext) -> int:
    """Move vouchers redeemed, expired or deleted before the retention into the archive."""
    cutoff = ctx.now - timedelta(days=ctx.rt.settings.archive_retention_days)
    ctx.detail["cutoff"] = cutoff.isoformat()
    with UnitOfWork(ctx.rt, read_only=True) as uow:
        since = last_cutoff(uow.conn)
        ranges = spans(uow.conn, cutoff, since)
    ctx.detail["since"] = None if since is None else since.isoformat()
    ctx.detail["serial_ranges"] = len(ranges)
    total = chunks = 0

    def done(moved: int) -> None:
        nonlocal total, chunks
        total += moved
        chunks += 1
        ctx.detail.update(archived=total, chunks=chunks)
        ctx.chunk_done(moved)

    for first, last in ranges:
        _walk_range(ctx, first, last, cutoff, done)
    _walk_redemptions(ctx, cutoff, since, done)
    with UnitOfWork(ctx.rt) as uow:
        # A shorter retention than before moves the cutoff back: the later one still holds.
        _save_cutoff(uow.conn, cutoff if since is None else max(since, cutoff), ctx.now)
        uow.commit()
    return total


def _walk_range(ctx: JobContext, first: int, last: int, cutoff: datetime, done: Any) -> None:
    """Serial windows of ``chunk_size`` vouchers over first..last, one transaction each."""
    after = first - 1
    while after < last:
        with UnitOfWork(ctx.rt, read_only=True) as uow:
            high = _window_end(uow.conn, after, last, ctx.chunk_size)
        if high is None:
            return
        with UnitOfWork(ctx.rt) as uow:
            moved = move_window(uow.conn, after, high, cutoff, ctx.now)
            uow.commit()
        done(moved)
        after = high


def _key(at_id: tuple[Any, Any]) -> Any:
    """A (time, id) keyset position, bound as the columns' own types."""
    return tuple_(literal(at_id[0], _x.c.at.type), literal(at_id[1], _x.c.id.type))


def _walk_redemptions(ctx: JobContext, cutoff: datetime, since: datetime | None, done: Any) -> None:
    """The vouchers of the redemptions in ``_redeemed``, ``chunk_size`` redemptions a
    transaction, in the order of the index on their time (keyset: time, id)."""
    redeemed = _redeemed(cutoff, since)
    key = tuple_(_x.c.at, _x.c.id)
    after: tuple[Any, Any] | None = None
    while True:
        page = select(_x.c.at, _x.c.id, _x.c.serial).where(*redeemed)
        if after is not None:
            page = page.where(key > _key(after))
        with UnitOfWork(ctx.rt, read_only=True) as uow:
            rows = uow.conn.execute(page.order_by(_x.c.at, _x.c.id).limit(ctx.chunk_size)).all()
        if not rows:
            return
        last = (rows[-1].at, rows[-1].id)
        with UnitOfWork(ctx.rt) as uow:
            conn = uow.conn
            if conn.dialect.name == "postgresql":
                # The chunk's serials as one array: one probe of the primary key each.
                serials = sorted({int(r.serial) for r in rows if r.serial is not None})
                where = _v.c.serial == any_(bindparam("serials", serials, ARRAY(BigInteger)))
            else:
                window = [*redeemed, key <= _key(last)]
                if after is not None:
                    window.append(key > _key(after))
                where = _v.c.serial.in_(select(_x.c.serial).where(*window))
            batches = _b.c.id.in_(select(_v.c.batch_id).where(where))
            moved = _move(conn, where, batches, cutoff, ctx.now)
            uow.commit()
        done(moved)
        after = last
