"""The rewards report: promotion rewards granted per period, provider and plan.

Read from ``promotion_rewards`` (a row per reward, written in the redemption's
transaction), summed per UTC hour in the database over the period's index range, then
per the period asked for. ``count`` is the number of rewards (a repeat plan whose target
one redemption passed twice counts two), ``value`` what they credited in money.
"""

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from voms.db import tables as t
from voms.domain.errors import Invalid
from voms.services.reports.queries import MAX_HOURLY_SPAN, Report, _period_label, _totals
from voms.services.reports.rollups import as_utc, hour_of

COLUMNS = ["period", "service_provider", "promotion", "count", "value", "currency"]


def rewards_report(
    conn: Connection,
    providers: dict[int, str],
    sp_id: int | None,
    since: datetime,
    until: datetime,
    group_by: str,
) -> Report:
    """Rewards granted in ``[since, until)`` per period (``group_by``) and plan."""
    if group_by == "hour" and until - since > MAX_HOURLY_SPAN:
        raise Invalid("group_by=hour covers at most 31 days; use day or month beyond")
    r, p = t.promotion_rewards, t.promotions
    hour = hour_of(conn, r.c.at)
    query = (
        select(
            hour,
            r.c.service_provider_id,
            r.c.promotion_id,
            r.c.currency,
            func.sum(r.c.times),
            func.sum(r.c.value),
        )
        .where(r.c.at >= since, r.c.at < until)
        .group_by(hour, r.c.service_provider_id, r.c.promotion_id, r.c.currency)
    )
    if sp_id is not None:
        query = query.where(r.c.service_provider_id == sp_id)
    plans = {i: c for i, c in conn.execute(select(p.c.id, p.c.code))}
    sums: dict[tuple[str, str | None, str | None, str], list[int]] = defaultdict(lambda: [0, 0])
    for bucket, sp, plan, currency, count, value in conn.execute(query):
        period = _period_label(as_utc(bucket), group_by)
        figures = sums[(period, providers.get(sp), plans.get(plan), currency)]
        figures[0] += int(count)
        figures[1] += int(value)
    rows: list[dict[str, Any]] = [
        {
            "period": period,
            "service_provider": sp,
            "promotion": plan,
            "count": count,
            "value": value,
            "currency": currency or None,
        }
        for (period, sp, plan, currency), (count, value) in sorted(
            sums.items(), key=lambda item: tuple(str(part) for part in item[0])
        )
    ]
    return Report("rewards", since, until, list(COLUMNS), rows, _totals(rows))
