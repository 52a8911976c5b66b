"""Keeping the report tables in step: the report_rollups job and voucher-range moves.

The job folds transactions into ``report_hourly``, ``report_daily`` and ``report_totals``,
and the voucher moves they record (redeemed, reserved, committed, revoked) into
``voucher_state_moves``, window by window behind a watermark (``job_cursors``). It reads
only transactions older than ``SETTLE``: a transaction row is written with the time its
attempt started and becomes visible when it commits, so a window is closed only once
every attempt that started in it has surely committed. The redemption path itself
writes no counter: a per-batch counter row updated by every redemption would queue all
redemptions of a batch on one row lock.

Serial-range operations (freeze, unfreeze, delete) move up to millions of vouchers in
one statement; :func:`move_vouchers` moves them and adds the per-batch counts in the
same transaction, so the counts never need a scan of ``vouchers``. Vouchers that change
batch (a range activated or amended, a reseller's activation or sale moves them into a
part of their batch, see :mod:`voms.services.ranges`) take their counts along through
:func:`rebatch_vouchers`.
"""

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    func,
    insert,
    literal,
    literal_column,
    select,
    union_all,
    update,
)

from voms.db import tables as t
from voms.db.types import utcnow
from voms.db.upsert import add_to_rows
from voms.domain.states import VoucherState
from voms.runtime import Runtime
from voms.services.uow import UnitOfWork

if TYPE_CHECKING:  # the housekeeping registry imports this module to run it
    from voms.services.housekeeping.context import JobContext

JOB = "report_rollups"
# Longer than any redemption-family transaction stays open (a charging system's timeout
# included), plus the clock difference between application hosts.
SETTLE = timedelta(minutes=2)
# At most this much transaction time per database transaction of the job.
WINDOW = timedelta(hours=6)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# What a successful transaction of each kind did to its voucher (from, to). "hold" and
# "recharge" move no voucher. Add a kind here when the redemption path gains one.
VOUCHER_MOVES: dict[str, tuple[VoucherState, VoucherState]] = {
    "redemption": (VoucherState.AVAILABLE, VoucherState.REDEEMED),
    "reservation": (VoucherState.AVAILABLE, VoucherState.RESERVED),
    "commit": (VoucherState.RESERVED, VoucherState.REDEEMED),
    "revoke": (VoucherState.RESERVED, VoucherState.AVAILABLE),
}

_tx, _c = t.transactions, t.job_cursors


# --- serial-range moves (called by lifecycle in its transaction) ---------------------------


def move_vouchers(
    conn: Connection,
    where: list[ColumnElement[bool]],
    from_states: Iterable[str],
    to_state: str,
    now: datetime,
) -> int:
    """Move the vouchers matching ``where`` from any of ``from_states`` to ``to_state``
    and count the moves per batch; the number moved."""
    v = t.vouchers
    moved: dict[tuple[int, str], int] = defaultdict(int)
    total = 0
    for from_state in sorted(from_states):
        change = (
            update(v)
            .where(*where, v.c.state == from_state)
            .values(state=to_state, state_changed_at=now)
        )
        if conn.dialect.name == "postgresql":
            # The update's own rows, counted in the database: exact under concurrency.
            rows = change.returning(v.c.batch_id).cte("moved")
            per_batch = conn.execute(
                select(rows.c.batch_id, func.count()).group_by(rows.c.batch_id)
            ).all()
        else:
            # SQLite: this transaction began IMMEDIATE, so no one moves vouchers between
            # the count and the update.
            per_batch = conn.execute(
                select(v.c.batch_id, func.count())
                .where(*where, v.c.state == from_state)
                .group_by(v.c.batch_id)
            ).all()
            conn.execute(change)
        for batch_id, count in per_batch:
            moved[(batch_id, from_state)] -= count
            moved[(batch_id, to_state)] += count
            total += count
    add_moves(conn, moved)
    return total


def rebatch_vouchers(
    conn: Connection,
    where: list[ColumnElement[bool]],
    low: int,
    high: int,
    source_id: int,
    target_id: int,
) -> int:
    """Move the vouchers matching ``where`` (all between serials ``low`` and ``high``, in
    batch ``source_id``) into batch ``target_id`` with their per-state counts; the number
    moved. The caller moves as many from the source's ``generated_count`` to the target's.
    """
    v = t.vouchers
    since = _unfolded_since(conn)
    # Transactions not folded yet will be folded into the batch their voucher is in then
    # (the target): the counts move as they stand before those transactions.
    unfolded = [
        _tx.c.at >= since,
        _tx.c.serial.between(low, high),
        _tx.c.result_code == 0,
        _tx.c.kind.in_(sorted(VOUCHER_MOVES)),
    ]
    change = update(v).where(*where).values(batch_id=target_id)
    if conn.dialect.name == "postgresql":
        # The update's own rows, in one statement: exact under concurrent redemptions.
        rows = change.returning(v.c.serial, v.c.state).cte("rebatched")
        found: list[tuple[str, Any, int]] = [
            (what, name, int(n))
            for what, name, n in conn.execute(
                union_all(
                    select(literal("state"), rows.c.state, func.count()).group_by(rows.c.state),
                    select(literal("kind"), _tx.c.kind, func.count())
                    .join(rows, rows.c.serial == _tx.c.serial)
                    .where(*unfolded)
                    .group_by(_tx.c.kind),
                )
            )
        ]
    else:
        # SQLite: this transaction began IMMEDIATE, so nothing moves between the counts
        # and the update.
        found = [
            ("state", state, n)
            for state, n in conn.execute(
                select(v.c.state, func.count()).where(*where).group_by(v.c.state)
            )
        ] + [
            ("kind", kind, n)
            for kind, n in conn.execute(
                select(_tx.c.kind, func.count())
                .join(v, v.c.serial == _tx.c.serial)
                .where(*where, *unfolded)
                .group_by(_tx.c.kind)
            )
        ]
        conn.execute(change)
    per_state: dict[str, int] = defaultdict(int)
    for what, name, count in found:
        if what == "state":
            per_state[name] += count
        else:  # undo, in the counts moved, what the fold will do to the target
            source, target = VOUCHER_MOVES[name]
            per_state[source.value] += count
            per_state[target.value] -= count
    total = sum(int(n) for what, _, n in found if what == "state")
    moved: dict[tuple[int, str], int] = defaultdict(int)
    for state, count in per_state.items():
        moved[(source_id, state)] -= count
        moved[(target_id, state)] += count
    # What generated_count moves is counted as available: the moves make up for it.
    moved[(source_id, VoucherState.AVAILABLE.value)] += total
    moved[(target_id, VoucherState.AVAILABLE.value)] -= total
    add_moves(conn, moved)
    return total


def _unfolded_since(conn: Connection) -> datetime:
    """Transactions from this time on are not in the per-batch counts yet."""
    position, counts_from = _cursor(conn)
    return max(position, counts_from or position)


def add_moves(conn: Connection, moved: dict[tuple[int, str], int]) -> None:
    """Add net moves per (batch, state) to ``voucher_state_moves``."""
    add_to_rows(
        conn,
        t.voucher_state_moves,
        [{"batch_id": b, "state": s, "net": n} for (b, s), n in moved.items() if n],
        ("net",),
    )


# --- the job ---------------------------------------------------------------------------------


def fold_transactions(ctx: "JobContext") -> int:
    """The report_rollups job: fold transactions older than ``SETTLE`` into the rollups."""
    result = fold(ctx.rt, until=ctx.now - SETTLE, on_window=ctx.chunk_done)
    ctx.detail.update(result)
    return int(result["transactions"])


def fold(
    rt: Runtime, until: datetime, on_window: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Fold every transaction before ``until`` not folded yet; one database transaction
    per window, the watermark moving with it (never past the present: a transaction
    started later would fall behind it)."""
    until = min(until, utcnow())
    folded = windows = 0
    while True:
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            watermark, counts_from = _cursor(conn)
            start = _first_after(conn, watermark, until)
            if start is None:
                _save_cursor(conn, max(watermark, until), counts_from)
                break
            end = min(start + WINDOW, until)
            count = _fold_window(conn, start, end, counts_from)
            _save_cursor(conn, end, counts_from)
            uow.commit()
        folded += count
        windows += 1
        if on_window is not None:
            on_window(count)
    return {"transactions": folded, "windows": windows, "watermark": until.isoformat()}


def watermark(rt: Runtime) -> datetime:
    """Transactions before this time are in the rollups."""
    with UnitOfWork(rt, read_only=True) as uow:
        return watermark_on(uow.conn)


def watermark_on(conn: Connection) -> datetime:
    """As :func:`watermark`, on a connection already open."""
    return _cursor(conn)[0]


def _cursor(conn: Connection) -> tuple[datetime, datetime | None]:
    row = conn.execute(select(_c.c.position, _c.c.detail).where(_c.c.job == JOB)).first()
    if row is None:
        return EPOCH, None
    counts_from = row.detail.get("counts_from")
    return (
        EPOCH + timedelta(microseconds=row.position),
        datetime.fromisoformat(counts_from) if counts_from else None,
    )


def _save_cursor(conn: Connection, position: datetime, counts_from: datetime | None) -> None:
    values = {
        "position": (position - EPOCH) // timedelta(microseconds=1),
        "detail": {"counts_from": counts_from.isoformat()} if counts_from else {},
        "updated_at": utcnow(),
    }
    if not conn.execute(update(_c).where(_c.c.job == JOB).values(**values)).rowcount:
        conn.execute(insert(_c).values(job=JOB, **values))


def _first_after(conn: Connection, watermark: datetime, until: datetime) -> datetime | None:
    """The first transaction time in [watermark, until): idle stretches are skipped."""
    first: datetime | None = conn.execute(
        select(func.min(_tx.c.at)).where(_tx.c.at >= watermark, _tx.c.at < until)
    ).scalar()
    return first


def hour_of(conn: Connection, column: Any) -> Any:
    """The UTC hour a timestamp falls in, in the dialect's words."""
    # Literals, not bound parameters: PostgreSQL must see the GROUP BY expression and the
    # selected one as the same.
    if conn.dialect.name == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        return func.date_trunc(literal_column("'hour'"), utc)
    return func.strftime(literal_column("'%Y-%m-%d %H:00:00'"), column)


def as_utc(value: Any) -> datetime:
    """A bucket as the database returns it (datetime or SQLite text) → aware UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(moment, datetime)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def face_values(conn: Connection) -> dict[tuple[int, int], tuple[str, int]]:
    """Per (voucher type, scenario number): the currency and amount it credits in the
    first balance type that has a currency (a voucher's value in money)."""
    sc, cr, bt = t.scenarios, t.scenario_credits, t.balance_types
    rows = conn.execute(
        select(sc.c.voucher_type_id, sc.c.number, bt.c.currency, cr.c.amount)
        .join(cr, cr.c.scenario_id == sc.c.id)
        .join(bt, bt.c.id == cr.c.balance_type_id)
        .where(bt.c.currency.is_not(None))
        .order_by(sc.c.voucher_type_id, sc.c.number, bt.c.id)
    ).all()
    values: dict[tuple[int, int], tuple[str, int]] = {}
    for row in rows:
        values.setdefault((row.voucher_type_id, row.number), (row.currency, row.amount))
    return values


_KEY = ("service_provider_id", "voucher_type_id", "channel", "kind", "result_code", "partner_id")


def _fold_window(
    conn: Connection, start: datetime, end: datetime, counts_from: datetime | None
) -> int:
    """Grouped in the database: one row per hour and key, however many transactions."""
    ve = t.voucher_exports
    keys = (
        hour_of(conn, _tx.c.at),
        func.coalesce(_tx.c.service_provider_id, literal_column("0")),
        func.coalesce(_tx.c.voucher_type_id, literal_column("0")),
        _tx.c.channel,
        _tx.c.kind,
        _tx.c.result_code,
        func.coalesce(ve.c.partner_id, literal_column("0")),
        func.coalesce(_tx.c.scenario, literal_column("0")),
    )
    grouped = conn.execute(
        select(*keys, func.count())
        .select_from(_tx.outerjoin(ve, ve.c.serial == _tx.c.serial))
        .where(_tx.c.at >= start, _tx.c.at < end)
        .group_by(*keys)
    ).all()
    values = face_values(conn)
    totals: dict[tuple[Any, ...], int] = defaultdict(int)
    hourly: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    daily: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    total = 0
    for bucket, sp, vt, channel, kind, code, partner, scenario, count in grouped:
        currency, amount = values.get((vt, scenario), ("", 0)) if code == 0 else ("", 0)
        at = as_utc(bucket)
        key = (sp, vt, channel, kind, code, partner, currency)
        for sums, moment in ((hourly, at), (daily, at.replace(hour=0))):
            figures = sums[(moment, *key)]
            figures[0] += count
            figures[1] += count * amount
        totals[(sp, channel, kind, code)] += count
        total += count
    add_to_rows(
        conn,
        t.report_totals,
        [
            {"service_provider_id": sp, "channel": ch, "kind": k, "result_code": c, "count": n}
            for (sp, ch, k, c), n in totals.items()
        ],
        ("count",),
    )
    for table, bucket_name, sums in (
        (t.report_hourly, "hour", hourly),
        (t.report_daily, "day", daily),
    ):
        add_to_rows(
            conn,
            table,
            [
                {
                    bucket_name: key[0],
                    **dict(zip((*_KEY, "currency"), key[1:], strict=True)),
                    "count": figures[0],
                    "value": figures[1],
                }
                for key, figures in sums.items()
            ],
            ("count", "value"),
        )
    _fold_moves(conn, start, end, counts_from)
    return total


def _fold_moves(
    conn: Connection, start: datetime, end: datetime, counts_from: datetime | None
) -> None:
    """The voucher moves of the window's successful transactions, per batch."""
    if counts_from is not None and counts_from >= end:
        return  # already in the counts the upgrade to 0005 made
    v, a = t.vouchers, t.voucher_archive
    batch_id = func.coalesce(v.c.batch_id, a.c.batch_id)
    query = (
        select(batch_id, _tx.c.kind, func.count())
        .select_from(
            _tx.outerjoin(v, v.c.serial == _tx.c.serial).outerjoin(a, a.c.serial == _tx.c.serial)
        )
        .where(
            _tx.c.at >= max(start, counts_from or start),
            _tx.c.at < end,
            _tx.c.result_code == 0,
            _tx.c.serial.is_not(None),
            _tx.c.kind.in_(sorted(VOUCHER_MOVES)),
        )
        .group_by(batch_id, _tx.c.kind)
    )
    moved: dict[tuple[int, str], int] = defaultdict(int)
    for batch, kind, count in conn.execute(query):
        if batch is None:
            continue
        source, target = VOUCHER_MOVES[kind]
        moved[(batch, source.value)] -= count
        moved[(batch, target.value)] += count
    add_moves(conn, moved)
