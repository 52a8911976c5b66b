"""Business figures for Prometheus, read from the rollups and counts (never a scan)."""

from collections import defaultdict
from datetime import timedelta

from sqlalchemy import func, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.states import BatchState, VoucherState, effective_voucher_state, is_expired
from voms.runtime import Runtime
from voms.services.reports.queries import batch_counts
from voms.services.uow import UnitOfWork

RECENT = timedelta(hours=24)


def business_figures(rt: Runtime) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Each figure's samples as (labels, value): redemption attempts by result and
    channel, vouchers by state per provider, job runs and durations."""
    now = utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        providers = {
            i: c
            for i, c in conn.execute(select(t.service_providers.c.id, t.service_providers.c.code))
        }
        tot = t.report_totals
        attempts = [
            (
                {
                    "service_provider": providers.get(sp, ""),
                    "channel": channel,
                    "kind": kind,
                    "result_code": str(code),
                },
                float(count),
            )
            for sp, channel, kind, code, count in conn.execute(select(tot))
        ]
        vouchers: dict[tuple[str, str], int] = defaultdict(int)
        for batch, counts in batch_counts(conn, None):
            expired = is_expired(batch.expires_at, now)
            for own, count in counts.items():
                state = effective_voucher_state(BatchState(batch.state), VoucherState(own), expired)
                vouchers[(providers.get(batch.service_provider_id, ""), state)] += count
        runs = t.job_runs
        recent = conn.execute(
            select(runs.c.job, runs.c.outcome, func.count())
            .where(runs.c.started_at >= now - RECENT)
            .group_by(runs.c.job, runs.c.outcome)
        ).all()
        latest = (
            select(runs.c.job, func.max(runs.c.id).label("id"))
            .where(runs.c.finished_at.is_not(None), runs.c.started_at >= now - RECENT)
            .group_by(runs.c.job)
            .subquery()
        )
        last = conn.execute(
            select(runs.c.job, runs.c.outcome, runs.c.started_at, runs.c.finished_at).join(
                latest, latest.c.id == runs.c.id
            )
        ).all()
        ch = t.charges  # credits a charging system has not answered definitely yet
        unsettled = conn.execute(
            select(ch.c.service_provider_id, ch.c.state, func.count())
            .where(ch.c.state.in_(["pending", "unknown"]))
            .group_by(ch.c.service_provider_id, ch.c.state)
        ).all()
        # Events not yet handed on: not yet fanned out of the outbox, and each
        # destination's deliveries waiting (pending) or given up (dead letters).
        ob, dv, ds = t.event_outbox, t.event_deliveries, t.event_destinations
        undispatched = conn.execute(
            select(func.count()).select_from(ob).where(ob.c.dispatched.is_(False))
        ).scalar_one()
        waiting = conn.execute(
            select(ds.c.id, ds.c.kind, dv.c.state, func.count())
            .join(dv, dv.c.destination_id == ds.c.id)
            .where(dv.c.state.in_(["pending", "dead"]))
            .group_by(ds.c.id, ds.c.kind, dv.c.state)
        ).all()
    return {
        "events_waiting": [
            ({"destination": "outbox", "state": "undispatched"}, float(undispatched))
        ]
        + [
            ({"destination": f"{kind} {dest_id}", "state": state}, float(n))
            for dest_id, kind, state, n in waiting
        ],
        "charges_unsettled": [
            ({"service_provider": providers.get(sp, ""), "state": state}, float(n))
            for sp, state, n in unsettled
        ],
        "redemption_attempts": attempts,
        "vouchers": [
            ({"service_provider": sp, "state": state}, float(n))
            for (sp, state), n in sorted(vouchers.items())
        ],
        "job_runs_recent": [
            ({"job": job, "outcome": outcome}, float(n)) for job, outcome, n in recent
        ],
        "job_last_duration": [
            (
                {"job": row.job, "outcome": row.outcome},
                (row.finished_at - row.started_at).total_seconds(),
            )
            for row in last
        ],
    }
