"""The reports (docs/reports.md), read from the rollups and per-batch counts only.

Every report is a :class:`Report`: its columns, rows and totals; formats.py turns it
into CSV, XLSX or PDF. Times are whole UTC hours (the rollups' grain): ``since`` is
rounded down, ``until`` up.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, func, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Forbidden, Invalid, NotFound
from voms.domain.results import Result
from voms.domain.roles import Permission
from voms.domain.states import BatchState, VoucherState, effective_voucher_state, is_expired
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.reports.rollups import as_utc
from voms.services.uow import UnitOfWork

NAMES = (
    "inventory",
    "liability",
    "redemptions",
    "failures",
    "expiries",
    "partners",
    "summary",
    "rewards",
)
GROUP_BY = ("hour", "day", "month")
BY = ("channel", "voucher_type", "service_provider", "partner")
DEFAULT_SPAN = timedelta(days=30)
# An hourly report lists every hour: a month is 744 periods; a year would be 8,760.
MAX_HOURLY_SPAN = timedelta(days=31)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# A successful attempt of these kinds consumed a voucher.
REDEEMING = ("redemption", "commit")
# Sold and not yet redeemed: activated, not expired, not redeemed (the liability).
OUTSTANDING = tuple(
    s.value for s in (VoucherState.AVAILABLE, VoucherState.RESERVED, VoucherState.FROZEN)
)


@dataclass
class Report:
    """One report's answer: the same columns in every format."""

    name: str
    since: datetime | None
    until: datetime | None
    columns: list[str]
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    # The monthly summary carries the liability beside its redemptions.
    sections: dict[str, "Report"] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The JSON body: {"report", "since", "until", "rows", "totals"}."""
        body: dict[str, Any] = {
            "report": self.name,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "rows": self.rows,
            "totals": self.totals,
        }
        for name, section in self.sections.items():
            body[name] = section.as_json()
        return body


@dataclass(frozen=True)
class Query:
    """What a caller asks of a report (unknown values are refused, 422)."""

    since: datetime | str | None = None
    until: datetime | str | None = None
    service_provider: str | None = None
    group_by: str = "day"
    by: str = "channel"
    month: str | None = None


def run_report(rt: Runtime, actor: Principal, name: str, query: Query) -> Report:
    """One report, checked for role and provider scope before anything else."""
    actor.require(Permission.REPORT_READ)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        sp_id = _scope(conn, actor, query.service_provider)
        if name not in NAMES:
            raise NotFound(f"unknown report '{name}'; one of: {', '.join(NAMES)}")
        query = _check(query)
        names = _Names(conn)
        if name == "inventory":
            return _inventory(conn, names, sp_id)
        if name == "liability":
            return _liability(conn, names, sp_id)
        if name == "summary":
            return _summary(conn, names, sp_id, query)
        since, until = _period(query)
        if name == "redemptions":
            return _redemptions(conn, names, sp_id, since, until, query.group_by, query.by)
        if name == "failures":
            return _failures(conn, sp_id, since, until)
        if name == "expiries":
            return _expiries(conn, names, sp_id, since, until)
        if name == "rewards":
            from voms.services.reports.rewards import rewards_report

            return rewards_report(conn, names.providers, sp_id, since, until, query.group_by)
        return _partners(conn, names, sp_id, since, until)


def _scope(conn: Connection, actor: Principal, code: str | None) -> int | None:
    """The provider to report on: the one asked for, else the key's own (None: all)."""
    if code is None:
        return actor.service_provider_id
    sp_id = conn.execute(
        select(t.service_providers.c.id).where(t.service_providers.c.code == code)
    ).scalar()
    if actor.service_provider_id is not None and sp_id != actor.service_provider_id:
        raise Forbidden("outside this key's service provider")
    if sp_id is None:
        raise NotFound(f"service provider '{code}' not found")
    return int(sp_id)


def _moment(raw: datetime | str | None, name: str) -> datetime | None:
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid(f"{name} must be an ISO 8601 time with a UTC offset") from None
    if raw is not None and raw.tzinfo is None:
        raise Invalid(f"{name} needs a UTC offset")
    return raw


def _check(query: Query) -> Query:
    """The query with its times parsed; unknown values refused."""
    since, until = _moment(query.since, "since"), _moment(query.until, "until")
    if query.group_by not in GROUP_BY:
        raise Invalid(f"group_by must be one of: {', '.join(GROUP_BY)}")
    if query.by not in BY:
        raise Invalid(f"by must be one of: {', '.join(BY)}")
    return Query(since, until, query.service_provider, query.group_by, query.by, query.month)


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _period(query: Query) -> tuple[datetime, datetime]:
    """[since, until) in whole hours; by default the last 30 days up to the hour begun."""
    assert not isinstance(query.since, str)
    assert not isinstance(query.until, str)
    until = query.until or utcnow()
    until = _floor_hour(until) + (HOUR if until != _floor_hour(until) else timedelta())
    since = _floor_hour(query.since) if query.since else until - DEFAULT_SPAN
    if since >= until:
        raise Invalid("since must be before until")
    return since, until


class _Names:
    """Codes and names of the few catalog rows the reports mention, read once."""

    def __init__(self, conn: Connection) -> None:
        sp, vt, pa = t.service_providers, t.voucher_types, t.partners
        self.providers: dict[int, str] = {i: c for i, c in conn.execute(select(sp.c.id, sp.c.code))}
        self.voucher_types: dict[int, str] = {
            i: c for i, c in conn.execute(select(vt.c.id, vt.c.code))
        }
        self.partners: dict[int, str] = {i: n for i, n in conn.execute(select(pa.c.id, pa.c.name))}
        self.face_values = _default_face_values(conn)


def _default_face_values(conn: Connection) -> dict[int, tuple[str | None, int]]:
    """Per voucher type: the currency and amount its default scenario credits in money."""
    sc, cr, bt = t.scenarios, t.scenario_credits, t.balance_types
    rows = conn.execute(
        select(sc.c.voucher_type_id, bt.c.currency, cr.c.amount)
        .join(cr, cr.c.scenario_id == sc.c.id)
        .join(bt, bt.c.id == cr.c.balance_type_id)
        .where(sc.c.is_default.is_(True), bt.c.currency.is_not(None))
        .order_by(sc.c.voucher_type_id, bt.c.id)
    ).all()
    values: dict[int, tuple[str | None, int]] = {}
    for row in rows:
        values.setdefault(row.voucher_type_id, (row.currency, row.amount))
    return values


# --- inventory and liability: batches with their per-state counts --------------------------


def batch_counts(conn: Connection, sp_id: int | None) -> list[tuple[Any, dict[str, int]]]:
    """Each batch (not failed) with its vouchers per own state, from the maintained moves."""
    b, m = t.batches, t.voucher_state_moves
    query = (
        select(b, m.c.state.label("voucher_state"), m.c.net)
        .select_from(b.outerjoin(m, m.c.batch_id == b.c.id))
        .where(b.c.state != BatchState.FAILED.value)
        .order_by(b.c.id)
    )
    if sp_id is not None:
        query = query.where(b.c.service_provider_id == sp_id)
    batches: dict[int, tuple[Any, dict[str, int]]] = {}
    for row in conn.execute(query):
        if row.id not in batches:
            batches[row.id] = (row, {VoucherState.AVAILABLE.value: row.generated_count})
        if row.voucher_state is not None:
            counts = batches[row.id][1]
            counts[row.voucher_state] = counts.get(row.voucher_state, 0) + row.net
    return list(batches.values())


def _inventory(conn: Connection, names: _Names, sp_id: int | None) -> Report:
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for batch, counts in batch_counts(conn, sp_id):
        currency, amount = names.face_values.get(batch.voucher_type_id, (None, 0))
        expired = is_expired(batch.expires_at, now)
        states: dict[str, int] = defaultdict(int)
        for own, count in counts.items():
            shown = effective_voucher_state(BatchState(batch.state), VoucherState(own), expired)
            states[shown] += count
        for state, count in sorted(states.items()):
            if count:
                rows.append(
                    {
                        "service_provider": names.providers.get(batch.service_provider_id),
                        "voucher_type": names.voucher_types.get(batch.voucher_type_id),
                        "batch_id": batch.id,
                        "state": state,
                        "count": count,
                        "value": count * amount,
                        "currency": currency,
                    }
                )
    columns = [
        "service_provider",
        "voucher_type",
        "batch_id",
        "state",
        "count",
        "value",
        "currency",
    ]
    return Report("inventory", None, None, columns, rows, _totals(rows))


def _liability(conn: Connection, names: _Names, sp_id: int | None) -> Report:
    now = utcnow()
    sums: dict[tuple[str | None, str | None], list[int]] = defaultdict(lambda: [0, 0])
    for batch, counts in batch_counts(conn, sp_id):
        if batch.state != BatchState.ACTIVE.value or is_expired(batch.expires_at, now):
            continue
        currency, amount = names.face_values.get(batch.voucher_type_id, (None, 0))
        outstanding = sum(counts.get(state, 0) for state in OUTSTANDING)
        figures = sums[(names.providers.get(batch.service_provider_id), currency)]
        figures[0] += outstanding
        figures[1] += outstanding * amount
    rows = [
        {"service_provider": sp, "currency": currency, "count": count, "value": value}
        for (sp, currency), (count, value) in sorted(sums.items(), key=lambda i: str(i[0]))
    ]
    return Report(
        "liability",
        None,
        None,
        ["service_provider", "currency", "count", "value"],
        rows,
        _totals(rows),
    )


def liability(conn: Connection, sp_id: int | None) -> Report:
    """The liability report (value of vouchers sold and not yet redeemed) on ``conn``,
    for the dashboard: from the per-batch counts, no scan."""
    return _liability(conn, _Names(conn), sp_id)


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The count, and the value per currency (values in different currencies never add)."""
    value: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.get("currency"):
            value[row["currency"]] += row["value"]
    return {"count": sum(row["count"] for row in rows), "value": dict(sorted(value.items()))}


# --- reports over time: the rollups -------------------------------------------------------


def _spans(since: datetime, until: datetime, hourly_only: bool) -> list[tuple[Table, str, Any]]:
    """Which rollup covers which part of [since, until): whole days the daily one, the
    hours before the first and after the last midnight the hourly one."""
    first_day = since.replace(hour=0) + (DAY if since.hour else timedelta())
    last_day = until.replace(hour=0)
    if hourly_only or first_day >= last_day:
        return [(t.report_hourly, "hour", (since, until))]
    spans: list[tuple[Table, str, Any]] = [(t.report_daily, "day", (first_day, last_day))]
    if since < first_day:
        spans.append((t.report_hourly, "hour", (since, first_day)))
    if last_day < until:
        spans.append((t.report_hourly, "hour", (last_day, until)))
    return spans


def _rollup_sums(
    conn: Connection,
    since: datetime,
    until: datetime,
    sp_id: int | None,
    columns: tuple[str, ...],
    condition: Any,
    hourly_only: bool = False,
) -> list[tuple[Any, ...]]:
    """Sums of count and value per bucket and ``columns``: (bucket, *columns, count, value)."""
    result: list[tuple[Any, ...]] = []
    for table, bucket, (lo, hi) in _spans(since, until, hourly_only):
        keys = [table.c[bucket], *(table.c[name] for name in columns)]
        query = (
            select(*keys, func.sum(table.c.count), func.sum(table.c.value))
            .where(table.c[bucket] >= lo, table.c[bucket] < hi, condition(table))
            .group_by(*keys)
        )
        if sp_id is not None:
            query = query.where(table.c.service_provider_id == sp_id)
        result.extend(
            (as_utc(row[0]), *row[1:-2], int(row[-2]), int(row[-1])) for row in conn.execute(query)
        )
    return result


def _period_label(moment: datetime, group_by: str) -> str:
    if group_by == "hour":
        return moment.isoformat()
    if group_by == "day":
        return moment.date().isoformat()
    return moment.strftime("%Y-%m")


_BY_COLUMN = {
    "channel": "channel",
    "voucher_type": "voucher_type_id",
    "service_provider": "service_provider_id",
    "partner": "partner_id",
}


def _redeemed(table: Table) -> Any:
    return and_(table.c.kind.in_(REDEEMING), table.c.result_code == 0)


def _redemptions(
    conn: Connection,
    names: _Names,
    sp_id: int | None,
    since: datetime,
    until: datetime,
    group_by: str,
    by: str,
) -> Report:
    if group_by == "hour" and until - since > MAX_HOURLY_SPAN:
        raise Invalid("group_by=hour covers at most 31 days; use day or month beyond")
    column = _BY_COLUMN[by]
    labels: dict[Any, Any] | None = {
        "voucher_type": names.voucher_types,
        "service_provider": names.providers,
        "partner": names.partners,
    }.get(by)
    periods: dict[datetime, str] = {}
    sums: dict[tuple[str, Any, str], list[int]] = defaultdict(lambda: [0, 0])
    for bucket, key, currency, count, value in _rollup_sums(
        conn, since, until, sp_id, (column, "currency"), _redeemed, group_by == "hour"
    ):
        label = key if labels is None else labels.get(key)
        period = periods.get(bucket)
        if period is None:
            period = periods[bucket] = _period_label(bucket, group_by)
        figures = sums[(period, label, currency)]
        figures[0] += count
        figures[1] += value
    rows = [
        {"period": period, by: key, "count": count, "value": value, "currency": currency or None}
        for (period, key, currency), (count, value) in sorted(
            sums.items(), key=lambda i: (i[0][0], str(i[0][1]), i[0][2])
        )
    ]
    return Report(
        "redemptions",
        since,
        until,
        ["period", by, "count", "value", "currency"],
        rows,
        _totals(rows),
    )


def _failures(conn: Connection, sp_id: int | None, since: datetime, until: datetime) -> Report:
    sums: dict[tuple[int, str], int] = defaultdict(int)
    for _, code, channel, count, _value in _rollup_sums(
        conn, since, until, sp_id, ("result_code", "channel"), lambda tb: tb.c.result_code != 0
    ):
        sums[(code, channel)] += count
    rows = [
        {
            "channel": channel,
            "result_code": code,
            "result_text": _result_text(code),
            "count": count,
        }
        for (code, channel), count in sorted(sums.items())
    ]
    return Report(
        "failures",
        since,
        until,
        ["result_code", "result_text", "channel", "count"],
        rows,
        {"count": sum(sums.values())},
    )


def _result_text(code: int) -> str | None:
    try:
        return Result.from_code(code).text
    except (KeyError, ValueError):
        return None


def _expiries(
    conn: Connection, names: _Names, sp_id: int | None, since: datetime, until: datetime
) -> Report:
    """Batches that expired in the period, with their vouchers expired unused (counted
    per batch by the expiry_counts job)."""
    e = t.batch_expiries
    query = (
        select(e)
        .where(e.c.expires_at >= since, e.c.expires_at < until)
        .order_by(e.c.expires_at, e.c.batch_id)
    )
    if sp_id is not None:
        query = query.where(e.c.service_provider_id == sp_id)
    rows = []
    for row in conn.execute(query):
        currency, amount = names.face_values.get(row.voucher_type_id, (None, 0))
        rows.append(
            {
                "service_provider": names.providers.get(row.service_provider_id),
                "voucher_type": names.voucher_types.get(row.voucher_type_id),
                "batch_id": row.batch_id,
                "expires_at": row.expires_at.isoformat(),
                "count": row.expired_count,
                "value": row.expired_count * amount,
                "currency": currency,
            }
        )
    columns = [
        "service_provider",
        "voucher_type",
        "batch_id",
        "expires_at",
        "count",
        "value",
        "currency",
    ]
    return Report("expiries", since, until, columns, rows, _totals(rows))


def _partners(
    conn: Connection, names: _Names, sp_id: int | None, since: datetime, until: datetime
) -> Report:
    """Per partner: vouchers exported to it in the period, and its vouchers redeemed."""
    x = t.exports
    exported: dict[tuple[int, int], int] = defaultdict(int)
    query = (
        select(x.c.partner_id, x.c.service_provider_id, func.sum(x.c.voucher_count))
        .where(x.c.created_at >= since, x.c.created_at < until)
        .group_by(x.c.partner_id, x.c.service_provider_id)
    )
    if sp_id is not None:
        query = query.where(x.c.service_provider_id == sp_id)
    for partner, sp, count in conn.execute(query):
        exported[(partner, sp)] += int(count)
    redeemed: dict[tuple[int, int], list[Any]] = defaultdict(lambda: [0, 0, None])
    for _, partner, sp, currency, count, value in _rollup_sums(
        conn,
        since,
        until,
        sp_id,
        ("partner_id", "service_provider_id", "currency"),
        lambda tb: and_(_redeemed(tb), tb.c.partner_id != 0),
    ):
        figures = redeemed[(partner, sp)]
        figures[0] += count
        figures[1] += value
        figures[2] = currency or None
    rows = []
    for partner, sp in sorted(set(exported) | set(redeemed)):
        count, value, currency = redeemed.get((partner, sp), [0, 0, None])
        rows.append(
            {
                "partner": names.partners.get(partner),
                "service_provider": names.providers.get(sp),
                "exported": exported.get((partner, sp), 0),
                "redeemed": count,
                "value": value,
                "currency": currency,
            }
        )
    columns = ["partner", "service_provider", "exported", "redeemed", "value", "currency"]
    totals = {
        "exported": sum(row["exported"] for row in rows),
        "redeemed": sum(row["redeemed"] for row in rows),
    }
    return Report("partners", since, until, columns, rows, totals)


def _summary(conn: Connection, names: _Names, sp_id: int | None, query: Query) -> Report:
    """The monthly summary: redemptions per day of the month, and the liability now."""
    month = query.month or utcnow().strftime("%Y-%m")
    try:
        since = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise Invalid("month must be YYYY-MM") from None
    until = (since + timedelta(days=32)).replace(day=1)
    daily = _redemptions(conn, names, sp_id, since, until, "day", "channel")
    per_day: dict[tuple[str, str | None], list[int]] = defaultdict(lambda: [0, 0])
    for row in daily.rows:
        figures = per_day[(row["period"], row["currency"])]
        figures[0] += row["count"]
        figures[1] += row["value"]
    rows = [
        {"period": day, "count": count, "value": value, "currency": currency}
        for (day, currency), (count, value) in sorted(
            per_day.items(), key=lambda item: (item[0][0], item[0][1] or "")
        )
    ]
    channels = _redemptions(conn, names, sp_id, since, until, "month", "channel")
    return Report(
        "summary",
        since,
        until,
        ["period", "count", "value", "currency"],
        rows,
        _totals(rows),
        sections={
            "by_channel": channels,
            "liability": _liability(conn, names, sp_id),
        },
    )
