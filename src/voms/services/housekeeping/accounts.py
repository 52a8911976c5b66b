"""Expiry jobs of the wallet: account lifecycle, balance expiry, old recharge counters.

Each works set-based in windows of ``chunk_size`` subscriber ids, one short transaction
per window, so a run that stops midway resumes without harm: what a committed window
did no longer matches its conditions (docs/operations.md, docs/policy.md).
"""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)

from voms.db import tables as t
from voms.domain.states import SubscriberState
from voms.services import accounts_lifecycle
from voms.services.housekeeping.context import JobContext
from voms.services.uow import UnitOfWork

_s, _b, _lg, _rc = t.subscribers, t.balances, t.ledger, t.recharge_counters
ACTOR = "housekeeping"
_ACTIVE, _EXPIRED, _DEACTIVATED = (
    SubscriberState.ACTIVE.value,
    SubscriberState.EXPIRED.value,
    SubscriberState.DEACTIVATED.value,
)


def _windows(ctx: JobContext, table_id: Any) -> Any:
    """(low, high] windows of ``chunk_size`` ids up to the largest id there is now."""
    with UnitOfWork(ctx.rt, read_only=True) as uow:
        last = uow.conn.execute(select(func.max(table_id))).scalar()
    low = 0
    while last is not None and low < last:
        high = low + ctx.chunk_size
        yield low, high
        low = high


# --- account lifecycle ---------------------------------------------------------------


def move_accounts(conn: Connection, low: int, high: int, now: datetime, cutoff: datetime) -> int:
    """Active or expired accounts of the window past their expiry: expired, or
    deactivated once past ``cutoff`` (expiry + grace). One UPDATE; on PostgreSQL a row
    a redemption changed meanwhile (revived, extended) is checked again as it is now."""
    window = and_(_s.c.id > low, _s.c.id <= high)
    moved = conn.execute(
        update(_s)
        .where(
            window,
            _s.c.account_expires_at <= now,
            or_(
                _s.c.state == _ACTIVE,
                and_(_s.c.state == _EXPIRED, _s.c.account_expires_at <= cutoff),
            ),
        )
        .values(
            state=case(
                (_s.c.account_expires_at <= cutoff, literal(_DEACTIVATED)),
                else_=literal(_EXPIRED),
            )
        )
    ).rowcount
    return int(moved or 0)


def apply_account_lifecycle(ctx: JobContext) -> int:
    """Expire accounts past their expiry date; deactivate those past the grace period."""
    cutoff = ctx.now - accounts_lifecycle.grace(ctx.rt)
    ctx.detail["deactivate_expired_before"] = cutoff.isoformat()
    total = 0
    for low, high in _windows(ctx, _s.c.id):
        with UnitOfWork(ctx.rt) as uow:
            moved = move_accounts(uow.conn, low, high, ctx.now, cutoff)
            uow.commit()
        total += moved
        ctx.detail["moved"] = total
        ctx.chunk_done(moved)
    return total


# --- balance expiry ------------------------------------------------------------------


# PostgreSQL, one statement: what is zeroed is exactly what the ledger takes out, row by
# row. A balance a wallet writer changed after this statement's snapshot fails
# ``b.amount = old.amount`` when PostgreSQL checks the row again as it is now, and waits
# for the next run; so no ledger row ever disagrees with its balance.
_EXPIRE_PG = text(
    """
    WITH old AS (
        SELECT subscriber_id, balance_type_id, amount FROM balances
        WHERE subscriber_id > :low AND subscriber_id <= :high
          AND expires_at <= :now AND amount > 0
    ), zeroed AS (
        UPDATE balances b SET amount = 0 FROM old
        WHERE b.subscriber_id = old.subscriber_id AND b.balance_type_id = old.balance_type_id
          AND b.amount = old.amount AND b.expires_at <= :now
          AND b.subscriber_id > :low AND b.subscriber_id <= :high
        RETURNING b.subscriber_id, b.balance_type_id, old.amount
    ), written AS (
        INSERT INTO ledger (at, subscriber_id, balance_type_id, amount, balance_after, cause,
                            reason, actor)
        SELECT :now, subscriber_id, balance_type_id, -amount, 0, 'expiry', :reason, :actor
        FROM zeroed
        RETURNING 1
    )
    SELECT count(*) FROM written
    """
)
REASON = "balance expired"


def expire_balances_in(conn: Connection, low: int, high: int, now: datetime) -> int:
    """Zero the balances of the window whose expiry has passed, each with a ledger row
    of cause ``expiry`` taking its amount out (set-based: INSERT … SELECT).

    Every writer of a wallet locks its subscriber row first; on PostgreSQL the window's
    subscribers with something to expire are locked the same way first (the same lock
    order as a redemption's), then one statement zeroes and writes the ledger. SQLite
    has one writer at a time: INSERT … SELECT, then UPDATE.
    """
    due = and_(_b.c.expires_at <= now, _b.c.amount > 0)
    window = and_(_b.c.subscriber_id > low, _b.c.subscriber_id <= high)
    if conn.dialect.name == "postgresql":
        conn.execute(
            select(_s.c.id)
            .where(
                _s.c.id > low,
                _s.c.id <= high,
                _s.c.id.in_(select(_b.c.subscriber_id).where(window, due)),
            )
            .order_by(_s.c.id)
            .with_for_update()
        )
        params = {"low": low, "high": high, "now": now, "reason": REASON, "actor": ACTOR}
        return int(conn.execute(_EXPIRE_PG, params).scalar_one())
    source = select(
        literal(now, _lg.c.at.type),
        _b.c.subscriber_id,
        _b.c.balance_type_id,
        -_b.c.amount,
        literal(0),
        literal("expiry"),
        literal(REASON),
        literal(ACTOR),
    ).where(window, due)
    columns = (
        "at",
        "subscriber_id",
        "balance_type_id",
        "amount",
        "balance_after",
        "cause",
        "reason",
        "actor",
    )
    conn.execute(insert(_lg).from_select(columns, source))
    expired = conn.execute(update(_b).where(window, due).values(amount=0)).rowcount
    return int(expired or 0)


def expire_balances(ctx: JobContext) -> int:
    """Expire every balance whose expiry date has passed (ledger cause ``expiry``)."""
    total = 0
    for low, high in _windows(ctx, _s.c.id):
        with UnitOfWork(ctx.rt) as uow:
            expired = expire_balances_in(uow.conn, low, high, ctx.now)
            uow.commit()
        total += expired
        ctx.detail["expired"] = total
        ctx.chunk_done(expired)
    return total


# --- recharge counters ---------------------------------------------------------------


def purge_recharge_counters(ctx: JobContext) -> int:
    """Delete recharge counters of days before yesterday and months before last month
    (the limits only read today's and this month's)."""
    yesterday = ctx.now - timedelta(days=1)
    last_month = (ctx.now.replace(day=1) - timedelta(days=1)).replace(day=1)
    old = or_(
        and_(_rc.c.period >= "D", _rc.c.period < "D" + yesterday.strftime("%Y%m%d")),
        and_(_rc.c.period >= "M", _rc.c.period < "M" + last_month.strftime("%Y%m")),
    )
    total = 0
    while True:
        with UnitOfWork(ctx.rt) as uow:
            chunk = (
                select(_rc.c.msisdn, _rc.c.period, _rc.c.balance_type_id)
                .where(old)
                .limit(ctx.chunk_size)
                .subquery()
            )
            deleted = int(
                uow.conn.execute(
                    delete(_rc).where(
                        tuple_(_rc.c.msisdn, _rc.c.period, _rc.c.balance_type_id).in_(
                            select(chunk.c.msisdn, chunk.c.period, chunk.c.balance_type_id)
                        )
                    )
                ).rowcount
                or 0
            )
            uow.commit()
        total += deleted
        ctx.chunk_done(deleted)
        if deleted < ctx.chunk_size:
            return total
