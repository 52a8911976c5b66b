"""The console's dashboard: what is in stock, what is running, what needs attention.

Every figure comes from small tables (batches, job runs, the blacklist) or from the
report tables (services/reports/): the value outstanding from the per-batch counts,
redemptions per hour from the hourly rollup; nothing scans vouchers or transactions.
"""

from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.alerts.detection import OPERATOR_KINDS
from voms.services.auth import Principal
from voms.services.reports import rollups
from voms.services.reports.queries import liability
from voms.services.reports.rollups import as_utc
from voms.services.uow import UnitOfWork

HOURS = 24
OPEN_ALERTS = 5  # the operator alerts shown, newest first
_b, _h, _r, _pa = t.batches, t.report_hourly, t.job_runs, t.pin_attempts


def overview(rt: Runtime, actor: Principal) -> dict[str, Any]:
    """Vouchers by batch state, the value outstanding (sold, not redeemed, per currency),
    redemptions per hour by channel and result over the last day (from the hourly
    rollup, up to its watermark), batches being generated, jobs running, and alerts."""
    actor.require(Permission.BATCH_READ)
    now = utcnow()
    since = (now - timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    scoped: list[ColumnElement[bool]] = []
    hour_scoped: list[ColumnElement[bool]] = []
    if actor.service_provider_id is not None:
        scoped.append(_b.c.service_provider_id == actor.service_provider_id)
        hour_scoped.append(_h.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        by_state = {
            row.state: {"batches": row.batches, "vouchers": int(row.vouchers or 0)}
            for row in conn.execute(
                select(
                    _b.c.state,
                    func.count().label("batches"),
                    func.sum(_b.c["count"]).label("vouchers"),
                )
                .where(and_(True, *scoped))
                .group_by(_b.c.state)
            )
        }
        generating = [
            dict(row._mapping)
            for row in conn.execute(
                select(_b.c.id, _b.c["count"], _b.c.generated_count, _b.c.created_by)
                .where(_b.c.state == "generating", *scoped)
                .order_by(_b.c.id.desc())
                .limit(20)
            )
        ]
        outstanding = liability(conn, actor.service_provider_id)
        hours = [since + timedelta(hours=n) for n in range(HOURS)]
        ok = case((_h.c.result_code == 0, 1), else_=0)
        attempts = [
            ((as_utc(hour) - since) // timedelta(hours=1), channel, succeeded, int(count))
            for hour, channel, succeeded, count in conn.execute(
                select(_h.c.hour, _h.c.channel, ok, func.sum(_h.c["count"]))
                .where(_h.c.hour >= since, _h.c.kind == "redemption", *hour_scoped)
                .group_by(_h.c.hour, _h.c.channel, ok)
            )
        ]
        rolled_up_to = rollups.watermark_on(conn)
        running = [
            dict(row._mapping)
            for row in conn.execute(
                select(_r.c.id, _r.c.job, _r.c.started_at, _r.c.rows_affected).where(
                    _r.c.outcome == "running"
                )
            )
        ]
        failed_runs = conn.execute(
            select(func.count()).where(
                _r.c.outcome.in_(("failed", "abandoned")), _r.c.started_at >= since
            )
        ).scalar_one()
        failed_batches = conn.execute(
            select(func.count()).where(_b.c.state == "failed", *scoped)
        ).scalar_one()
        blacklisted = conn.execute(
            select(func.count()).where(_pa.c.blacklisted_until > now)
        ).scalar_one()
        _al = t.audit_log
        guessing = conn.execute(
            select(func.count()).where(
                _al.c.object_type == "lookup_budget",
                _al.c.action.in_(("guessing.alert", "guessing.throttled")),
                _al.c.at >= since,
                *([_al.c.service_provider_id == actor.service_provider_id] if scoped else []),
            )
        ).scalar_one()
        open_alerts = _open_alerts(conn, actor)
    per_hour: dict[str, list[int]] = {}
    for hour, channel, succeeded, count in attempts:
        series = per_hour.setdefault(f"{channel} {'ok' if succeeded else 'failed'}", [0] * HOURS)
        if 0 <= hour < HOURS:
            series[hour] += count
    alerts = []
    if failed_batches:
        alerts.append(f"{failed_batches} batch(es) failed to generate")
    if failed_runs:
        alerts.append(f"{failed_runs} housekeeping run(s) failed in the last {HOURS} hours")
    if guessing:
        alerts.append(
            f"{guessing} PIN-guessing alert(s) in the last {HOURS} hours (audit log: guessing.*)"
        )
    if blacklisted and actor.service_provider_id is None:
        alerts.append(f"{blacklisted} MSISDN(s) blacklisted for bad PINs")
    return {
        "vouchers_by_state": by_state,
        "hours": hours,
        "redemptions_per_hour": dict(sorted(per_hour.items())),
        "rolled_up_to": rolled_up_to,
        "value_outstanding": outstanding.rows,
        "generating": generating,
        "running_jobs": running if actor.service_provider_id is None else [],
        "alerts": alerts,
        "open_alerts": open_alerts,
    }


def _open_alerts(conn: Any, actor: Principal) -> list[dict[str, Any]]:
    """The newest open (unresolved) operator alerts of ``alerts`` (docs/alerts.md), of
    the viewer's provider (a scoped viewer: not the installation's ``job_failed``). Read
    on the index of open alerts by kind (``ix_alerts_kind_open``): the open occurrences
    are few, whatever the history kept; the few shown are then named by primary key."""
    a, sp, vt = t.alerts, t.service_providers, t.voucher_types
    newest = (
        select(
            a.c.id,
            a.c.kind,
            a.c.service_provider_id,
            a.c.subject_id,
            a.c.subject_at,
            a.c.amount,
            a.c.threshold,
            a.c.created_at,
        )
        .where(a.c.kind.in_(OPERATOR_KINDS), a.c.resolved_at.is_(None))
        .order_by(a.c.id.desc())
        .limit(OPEN_ALERTS)
    )
    if actor.service_provider_id is not None:
        newest = newest.where(a.c.service_provider_id == actor.service_provider_id)
    top = newest.subquery("top")
    query = (
        select(
            top.c.id,
            top.c.kind,
            sp.c.code.label("service_provider"),
            top.c.subject_id,
            top.c.subject_at,
            top.c.amount,
            top.c.threshold,
            top.c.created_at,
            vt.c.code.label("voucher_type"),
            _r.c.job,
        )
        .select_from(
            top.outerjoin(sp, sp.c.id == top.c.service_provider_id)
            .outerjoin(vt, and_(top.c.kind == "voucher_stock", vt.c.id == top.c.subject_id))
            .outerjoin(_r, and_(top.c.kind == "job_failed", _r.c.id == top.c.subject_id))
        )
        .order_by(top.c.id.desc())
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def batch_events(
    rt: Runtime, actor: Principal, batch_id: int, limit: int = 50, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Operations on one batch (activate, freeze, amend expiry…), newest first."""
    from voms.services.lifecycle import get_batch

    get_batch(rt, actor, batch_id)  # the batch exists and the actor may see it
    ev = t.voucher_events
    query = (
        select(ev.c.id, ev.c.at, ev.c.actor, ev.c.action, ev.c.affected, ev.c.reason, ev.c.detail)
        .where(ev.c.batch_id == batch_id)
        .order_by(ev.c.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
    if before_id is not None:
        query = query.where(ev.c.id < before_id)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        return [dict(row._mapping) for row in conn.execute(query)]
