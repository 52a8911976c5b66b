"""Finding what to alert of: set-based statements, one occurrence row per alert.

Each family is an INSERT … SELECT … ON CONFLICT DO NOTHING (per service provider where
the provider's settings give the horizon; subscriber families a chunk per transaction),
so millions of balances cost a few statements, never a round trip per row; the unique
``occurrence_key`` makes a second run, a concurrent run or a restart find the
occurrence already recorded. A condition that can end and come back (a low balance,
low stock, a blacklisting burst, an expiry moved, a failing job) is *resolved* by one
UPDATE that appends the row's id to its key: the next time is a new occurrence. An
alert resolved before it was sent (a balance recharged during the night) is dropped,
not sent.

Operator alerts and low balances also go out as events through :func:`_emit_event`, in
the transaction that records them.
"""

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from voms.db import tables as t
from voms.db.types import UTCDateTime
from voms.services.uow import UnitOfWork

if TYPE_CHECKING:  # the jobs' context; imported lazily, the registry imports this module
    from voms.services.housekeeping.context import JobContext

_a, _s = t.alerts, t.alert_settings
_b, _bal, _sub = t.batches, t.balances, t.subscribers
_lb, _st, _m = t.low_balance_thresholds, t.stock_thresholds, t.voucher_state_moves

SUBSCRIBER_KINDS = ("low_balance", "balance_expiry", "account_expiry", "reward")
OPERATOR_KINDS = ("voucher_stock", "batch_expiry", "blacklist_burst", "job_failed")
# The event type each operator alert (and a low balance) is also written as (docs/alerts.md).
EVENT_TYPES = {
    "low_balance": "subscriber.low_balance",
    "voucher_stock": "alert.voucher_stock_low",
    "batch_expiry": "alert.batch_expiring",
    "blacklist_burst": "alert.blacklist_burst",
    # (a failed job is an event of the job runner itself: job.failed)
}
LIVE_BATCHES = ("generated", "active")
# Failed job runs older than this when first seen are history, not news.
JOB_FAILURE_LOOKBACK = timedelta(days=1)
# Alerts whose occurrence is over (resolved, or a reward sent) are kept this long.
RETENTION = timedelta(days=90)

_COLUMNS = (
    "occurrence_key",
    "kind",
    "audience",
    "service_provider_id",
    "subscriber_id",
    "msisdn",
    "subject_id",
    "subject_at",
    "amount",
    "threshold",
    "created_at",
    "state",
)


def _emit_event(uow: UnitOfWork, event_type: str, data: Mapping[str, Any]) -> None:
    """Write one alert as an event into the outbox, in the transaction that records the
    alert (docs/events.md); the data holds identifiers only, never a PIN."""
    from voms.services import events

    subject = data.get("msisdn") or data.get("batch_id") or data.get("voucher_type_id")
    events.emit(
        uow,
        event_type,
        None if subject is None else str(subject),
        data,
        service_provider_id=data.get("service_provider_id"),
    )


def _key(prefix: str, *parts: ColumnElement[Any]) -> ColumnElement[str]:
    """``prefix:part1:part2`` in SQL (the same text on SQLite and PostgreSQL)."""
    key: ColumnElement[str] = literal(prefix, String)
    for index, part in enumerate(parts):
        key = key + (
            cast(part, String) if index == 0 else literal(":", String) + cast(part, String)
        )
    return key


def _record(
    uow: UnitOfWork,
    rows: Select[Any] | Any,
    key: ColumnElement[str],
    limit: int | None = None,
    from_subscriber: int = 0,
) -> tuple[int, int]:
    """Insert the occurrences ``rows`` selects (in :data:`_COLUMNS` order) that are new;
    each is also written as an event when its kind has one. With ``limit``, at most that
    many, of subscribers from ``from_subscriber`` on, in subscriber order. The number
    recorded, and the highest subscriber id recorded."""
    conn = uow.conn
    fresh = rows.where(~exists().where(_a.c.occurrence_key == key))
    if limit is not None:
        fresh = fresh.where(_sub.c.id >= from_subscriber).order_by(_sub.c.id).limit(limit)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(_a)
        .from_select(list(_COLUMNS), fresh)
        .on_conflict_do_nothing()
        .returning(
            _a.c.id,
            _a.c.kind,
            _a.c.service_provider_id,
            _a.c.subscriber_id,
            _a.c.msisdn,
            _a.c.subject_id,
            _a.c.subject_at,
            _a.c.amount,
            _a.c.threshold,
        )
    )
    inserted = conn.execute(statement).all()
    for row in inserted:
        if row.kind in EVENT_TYPES:
            _emit_event(uow, EVENT_TYPES[row.kind], _event_data(row))
    last = max((row.subscriber_id or 0 for row in inserted), default=from_subscriber)
    return len(inserted), last


def _record_chunked(ctx: "JobContext", rows: Select[Any], key: ColumnElement[str]) -> int:
    """:func:`_record` a chunk per transaction, walking forward in subscriber order
    (subscriber alerts may be millions at first): memory and transactions stay small,
    and no chunk scans again what an earlier one went through."""
    total, after = 0, 0
    while True:
        with UnitOfWork(ctx.rt) as uow:
            # ">=": the last subscriber of a chunk may have another balance still to do.
            done, after = _record(uow, rows, key, limit=ctx.chunk_size, from_subscriber=after)
            uow.commit()
        total += done
        ctx.chunk_done(done)
        if done < ctx.chunk_size:
            return total


def _event_data(row: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"alert_id": row.id, "kind": row.kind}
    if row.service_provider_id is not None:
        data["service_provider_id"] = row.service_provider_id
    if row.msisdn is not None:
        data["msisdn"] = row.msisdn
    subject = {
        "low_balance": "balance_type_id",
        "voucher_stock": "voucher_type_id",
        "batch_expiry": "batch_id",
        "job_failed": "job_run_id",
    }.get(row.kind)
    if subject is not None:
        data[subject] = row.subject_id
    if row.subject_at is not None:
        data["expires_at"] = row.subject_at.isoformat()
    if row.amount is not None:
        data["balance" if row.kind == "low_balance" else "count"] = row.amount
    if row.threshold is not None:
        data["threshold"] = row.threshold
    return data


def _resolve(conn: Connection, kind: str, still: ColumnElement[bool], now: datetime) -> int:
    """End the open occurrences of ``kind`` whose condition no longer holds."""
    return conn.execute(
        update(_a)
        .where(_a.c.kind == kind, _a.c.resolved_at.is_(None), ~still)
        .values(
            occurrence_key=_a.c.occurrence_key + literal(":", String) + cast(_a.c.id, String),
            resolved_at=now,
            state=case((_a.c.state == "pending", "dropped"), else_=_a.c.state),
        )
        .execution_options(synchronize_session=False)
    ).rowcount


def _now(now: datetime) -> ColumnElement[datetime]:
    return literal(now, UTCDateTime())


def _settings(conn: Connection) -> Sequence[Any]:
    return conn.execute(select(_s)).all()


# --- subscribers ---------------------------------------------------------------------


Pending = tuple[str, Select[Any], ColumnElement[str]]  # kind, rows, key: recorded in chunks


def _low_balances(uow: UnitOfWork, now: datetime) -> list[Pending]:
    conn = uow.conn
    below = and_(_bal.c.amount < _lb.c.threshold, _sub.c.state == "active")
    key = _key("low_balance:", _sub.c.id, _bal.c.balance_type_id)
    rows = (
        select(
            key,
            literal("low_balance", String),
            literal("subscriber", String),
            _sub.c.service_provider_id,
            _sub.c.id,
            _sub.c.msisdn,
            _bal.c.balance_type_id,
            literal(None, UTCDateTime()),
            _bal.c.amount,
            _lb.c.threshold,
            _now(now),
            literal("pending", String),
        )
        .select_from(
            _bal.join(_lb, _lb.c.balance_type_id == _bal.c.balance_type_id).join(
                _sub, _sub.c.id == _bal.c.subscriber_id
            )
        )
        .where(below)
    )
    b2, l2 = _bal.alias("b2"), _lb.alias("l2")
    still = (
        select(literal(1))
        .select_from(b2.join(l2, l2.c.balance_type_id == b2.c.balance_type_id))
        .where(
            b2.c.subscriber_id == _a.c.subscriber_id,
            b2.c.balance_type_id == _a.c.subject_id,
            b2.c.amount < l2.c.threshold,
        )
        .exists()
    )
    _resolve(conn, "low_balance", still, now)
    return [("low_balance", rows, key)]


def _expiries(uow: UnitOfWork, now: datetime, settings: Sequence[Any]) -> list[Pending]:
    conn = uow.conn
    b2, s2 = _bal.alias("b2"), _sub.alias("s2")
    _resolve(
        conn,
        "balance_expiry",
        select(literal(1))
        .where(
            b2.c.subscriber_id == _a.c.subscriber_id,
            b2.c.balance_type_id == _a.c.subject_id,
            b2.c.expires_at == _a.c.subject_at,
        )
        .exists(),
        now,
    )
    _resolve(
        conn,
        "account_expiry",
        select(literal(1))
        .where(s2.c.id == _a.c.subscriber_id, s2.c.account_expires_at == _a.c.subject_at)
        .exists(),
        now,
    )
    pending: list[Pending] = []
    for setting in settings:
        if not setting.expiry_notice_days:
            continue
        horizon = now + timedelta(days=setting.expiry_notice_days)
        sp = setting.service_provider_id
        balance_key = _key("balance_expiry:", _sub.c.id, _bal.c.balance_type_id)
        balances = (
            select(
                balance_key,
                literal("balance_expiry", String),
                literal("subscriber", String),
                _sub.c.service_provider_id,
                _sub.c.id,
                _sub.c.msisdn,
                _bal.c.balance_type_id,
                _bal.c.expires_at,
                _bal.c.amount,
                literal(None, BigInteger),
                _now(now),
                literal("pending", String),
            )
            .select_from(_bal.join(_sub, _sub.c.id == _bal.c.subscriber_id))
            .where(
                _sub.c.service_provider_id == sp,
                _sub.c.state == "active",
                _bal.c.amount > 0,
                _bal.c.expires_at > now,
                _bal.c.expires_at <= horizon,
            )
        )
        pending.append(("balance_expiry", balances, balance_key))
        account_key = _key("account_expiry:", _sub.c.id)
        accounts = select(
            account_key,
            literal("account_expiry", String),
            literal("subscriber", String),
            _sub.c.service_provider_id,
            _sub.c.id,
            _sub.c.msisdn,
            literal(None, BigInteger),
            _sub.c.account_expires_at,
            literal(None, BigInteger),
            literal(None, BigInteger),
            _now(now),
            literal("pending", String),
        ).where(
            _sub.c.service_provider_id == sp,
            _sub.c.state == "active",
            _sub.c.account_expires_at > now,
            _sub.c.account_expires_at <= horizon,
        )
        pending.append(("account_expiry", accounts, account_key))
    return pending


# --- operators ------------------------------------------------------------------------


def _stock(batch_type: ColumnElement[Any], now: datetime) -> Any:
    """Vouchers available in live, unexpired batches of a voucher type (no voucher scan:
    a batch's available count is its generated count plus its net moves)."""
    return (
        select(func.coalesce(func.sum(_b.c.generated_count + func.coalesce(_m.c.net, 0)), 0))
        .select_from(_b.outerjoin(_m, and_(_m.c.batch_id == _b.c.id, _m.c.state == "available")))
        .where(
            _b.c.voucher_type_id == batch_type,
            _b.c.state.in_(LIVE_BATCHES),
            _b.c.expires_at > now,
        )
        .scalar_subquery()
    )


def _low_stock(uow: UnitOfWork, now: datetime) -> int:
    conn = uow.conn
    vt = t.voucher_types
    st2 = _st.alias("st2")
    _resolve(
        conn,
        "voucher_stock",
        select(literal(1))
        .where(
            st2.c.voucher_type_id == _a.c.subject_id, _stock(_a.c.subject_id, now) < st2.c.threshold
        )
        .exists(),
        now,
    )
    stock = _stock(_st.c.voucher_type_id, now)
    key = _key("voucher_stock:", _st.c.voucher_type_id)
    rows = (
        select(
            key,
            literal("voucher_stock", String),
            literal("operator", String),
            vt.c.service_provider_id,
            literal(None, BigInteger),
            literal(None, String),
            _st.c.voucher_type_id,
            literal(None, UTCDateTime()),
            stock,
            _st.c.threshold,
            _now(now),
            literal("pending", String),
        )
        .select_from(_st.join(vt, vt.c.id == _st.c.voucher_type_id))
        .where(stock < _st.c.threshold)
    )
    return _record(uow, rows, key)[0]


def _expiring_batches(uow: UnitOfWork, now: datetime, settings: Sequence[Any]) -> int:
    conn = uow.conn
    b2 = _b.alias("b2")
    _resolve(
        conn,
        "batch_expiry",
        select(literal(1))
        .where(
            b2.c.id == _a.c.subject_id,
            b2.c.expires_at == _a.c.subject_at,
            b2.c.state.in_(LIVE_BATCHES),
        )
        .exists(),
        now,
    )
    recorded = 0
    available = _b.c.generated_count + func.coalesce(_m.c.net, 0)
    for setting in settings:
        if not setting.batch_expiry_days:
            continue
        key = _key("batch_expiry:", _b.c.id)
        rows = (
            select(
                key,
                literal("batch_expiry", String),
                literal("operator", String),
                _b.c.service_provider_id,
                literal(None, BigInteger),
                literal(None, String),
                _b.c.id,
                _b.c.expires_at,
                available,
                literal(None, BigInteger),
                _now(now),
                literal("pending", String),
            )
            .select_from(
                _b.outerjoin(_m, and_(_m.c.batch_id == _b.c.id, _m.c.state == "available"))
            )
            .where(
                _b.c.service_provider_id == setting.service_provider_id,
                _b.c.state.in_(LIVE_BATCHES),
                _b.c.expires_at > now,
                _b.c.expires_at <= now + timedelta(days=setting.batch_expiry_days),
                available > 0,
            )
        )
        recorded += _record(uow, rows, key)[0]
    return recorded


def blacklistings(
    conn: Connection, service_provider_id: int, since: datetime, now: datetime
) -> int:
    """Numbers of the provider's subscribers blacklisted for bad PINs since ``since``."""
    pa = t.pin_attempts
    return int(
        conn.execute(
            select(func.count())
            .select_from(pa.join(_sub, _sub.c.msisdn == pa.c.msisdn))
            .where(
                _sub.c.service_provider_id == service_provider_id,
                pa.c.blacklisted_until > now,
                pa.c.updated_at >= since,
                or_(pa.c.manual_until.is_(None), pa.c.manual_until != pa.c.blacklisted_until),
            )
        ).scalar_one()
    )


def _bursts(uow: UnitOfWork, now: datetime, settings: Sequence[Any]) -> int:
    conn = uow.conn
    recorded = 0
    for setting in settings:
        sp = setting.service_provider_id
        key = f"blacklist_burst:{sp}"
        count = 0
        if setting.burst_count and setting.burst_minutes:
            since = now - timedelta(minutes=setting.burst_minutes)
            count = blacklistings(conn, sp, since, now)
        if not setting.burst_count or count < setting.burst_count:
            _resolve(conn, "blacklist_burst", _a.c.occurrence_key != key, now)
            continue
        rows = select(
            literal(key, String),
            literal("blacklist_burst", String),
            literal("operator", String),
            literal(sp, Integer),
            literal(None, BigInteger),
            literal(None, String),
            literal(None, BigInteger),
            literal(None, UTCDateTime()),
            literal(count, BigInteger),
            literal(setting.burst_count, BigInteger),
            _now(now),
            literal("pending", String),
        ).where(literal(True))
        recorded += _record(uow, rows, literal(key, String))[0]
    return recorded


def _failed_jobs(uow: UnitOfWork, now: datetime) -> int:
    """A job whose last finished run failed (or was abandoned): one occurrence per job
    until a later run succeeds, however often it fails meanwhile (no flood of mail from
    a job failing every minute)."""
    r, later, failed_run = t.job_runs, t.job_runs.alias("later"), t.job_runs.alias("failed")
    _resolve(
        uow.conn,
        "job_failed",
        ~select(literal(1))
        .select_from(failed_run.join(later, later.c.job == failed_run.c.job))
        .where(
            failed_run.c.id == _a.c.subject_id,
            later.c.id > failed_run.c.id,
            later.c.outcome == "succeeded",
        )
        .exists(),
        now,
    )
    key = literal("job_failed:", String) + r.c.job
    rows = select(
        key,
        literal("job_failed", String),
        literal("operator", String),
        literal(None, Integer),
        literal(None, BigInteger),
        literal(None, String),
        r.c.id,
        literal(None, UTCDateTime()),
        literal(None, BigInteger),
        literal(None, BigInteger),
        _now(now),
        literal("pending", String),
    ).where(
        r.c.outcome.in_(("failed", "abandoned")),
        r.c.started_at >= now - JOB_FAILURE_LOOKBACK,
        ~select(literal(1))
        .where(
            later.c.job == r.c.job,
            later.c.id > r.c.id,
            later.c.outcome.in_(("succeeded", "failed", "abandoned")),
        )
        .exists(),
    )
    return _record(uow, rows, key)[0]


def _purge(conn: Connection, now: datetime) -> None:
    """Forget occurrences over for :data:`RETENTION`: resolved ones (their key already
    freed) and rewards no longer pending (a transaction never rewards twice). An open
    occurrence is never forgotten: that would send it again."""
    before = now - RETENTION
    conn.execute(
        delete(_a).where(
            or_(
                _a.c.resolved_at < before,
                and_(_a.c.kind == "reward", _a.c.state != "pending", _a.c.created_at < before),
            )
        )
    )


def detect(ctx: "JobContext") -> int:
    """The ``alert_detection`` job: record every new occurrence, end those that ended."""
    now = ctx.now
    found: dict[str, int] = {}
    if ctx.rt.settings.kannel_sendsms_url:  # subscriber alerts only where they can be sent
        with UnitOfWork(ctx.rt) as uow:  # the ends first, then the new ones in chunks
            settings = _settings(uow.conn)
            pending = _low_balances(uow, now) + _expiries(uow, now, settings)
            uow.commit()
        for kind, rows, key in pending:
            found[kind] = found.get(kind, 0) + _record_chunked(ctx, rows, key)
    Step = Callable[[UnitOfWork, Sequence[Any]], int]
    steps: list[tuple[str, Step]] = [
        ("voucher_stock", lambda uow, s: _low_stock(uow, now)),
        ("batch_expiry", lambda uow, s: _expiring_batches(uow, now, s)),
        ("blacklist_burst", lambda uow, s: _bursts(uow, now, s)),
        ("job_failed", lambda uow, s: _failed_jobs(uow, now)),
    ]
    for name, step in steps:
        with UnitOfWork(ctx.rt) as uow:
            found[name] = step(uow, _settings(uow.conn))
            uow.commit()
        ctx.chunk_done(found[name])
    with UnitOfWork(ctx.rt) as uow:
        _purge(uow.conn, now)
        uow.commit()
    ctx.detail.update(found=found)
    return sum(found.values())
