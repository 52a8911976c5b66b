"""Housekeeping: the jobs, their history, and running one now (CLI, API).

The jobs, one module per family (:mod:`.maintenance`, :mod:`.expiry`, :mod:`.archive`,
:mod:`.reencryption`), are listed in :mod:`.registry` and run by :mod:`.runner`
(leases, run records); the scheduler inside `voms serve` (:mod:`voms.jobs`) starts them
on their schedules. Reading the jobs and their runs needs the housekeeping or audit-read
permission (operator, admin, auditor); running one needs housekeeping (operator, admin)
and a key not scoped to one service provider: the jobs act on the whole installation.
"""

import logging
import threading
from datetime import datetime
from typing import Any

from sqlalchemy import select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Permission, allows
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.housekeeping import runner
from voms.services.housekeeping.registry import JOBS, ScheduleError, next_run, schedules
from voms.services.uow import UnitOfWork

log = logging.getLogger("voms.housekeeping")
MAX_LIMIT = 1000
OUTCOMES = ("running", "succeeded", "failed", "abandoned")
_r, _l = t.job_runs, t.job_leases


def _require_read(actor: Principal) -> None:
    if not (
        allows(actor.role, Permission.HOUSEKEEPING) or allows(actor.role, Permission.AUDIT_READ)
    ):
        raise Forbidden(f"role {actor.role} may not read housekeeping")


def _require_run(actor: Principal, name: str) -> None:
    actor.require(Permission.HOUSEKEEPING)
    actor.require_unscoped()
    if name not in JOBS:
        raise NotFound(f"job {name} not found")


def _run_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "job": row.job,
        "trigger": row.trigger,
        "runner": row.runner,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "outcome": row.outcome,
        "rows_affected": row.rows_affected,
        "detail": row.detail,
        "error": row.error,
    }


def list_jobs(rt: Runtime, actor: Principal) -> list[dict[str, Any]]:
    """Every job with its schedule, next slot, last run and current lease holder."""
    _require_read(actor)
    try:
        plan = schedules(rt.settings.job_schedules)
    except ScheduleError as exc:
        raise Invalid(str(exc)) from None
    now = utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        leases = {row.job: row for row in conn.execute(select(_l))}
        jobs = []
        for name, job in JOBS.items():
            last = conn.execute(
                select(_r).where(_r.c.job == name).order_by(_r.c.id.desc()).limit(1)
            ).first()
            lease = leases.get(name)
            held = lease is not None and lease.expires_at is not None and lease.expires_at > now
            expression = plan[name]
            jobs.append(
                {
                    "name": name,
                    "description": job.description,
                    "default_schedule": job.default_schedule,
                    "schedule": expression,
                    "enabled": expression is not None and rt.settings.scheduler_enabled,
                    "next_run_at": next_run(expression, now) if expression else None,
                    "running_on": lease.holder if held and lease is not None else None,
                    "last_run": _run_view(last) if last is not None else None,
                }
            )
    return jobs


def list_runs(
    rt: Runtime,
    actor: Principal,
    *,
    job: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: int | None = None,
) -> dict[str, Any]:
    """Runs newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    _require_read(actor)
    if job is not None and job not in JOBS:
        raise NotFound(f"job {job} not found")
    if outcome is not None and outcome not in OUTCOMES:
        raise Invalid(f"outcome must be one of {', '.join(OUTCOMES)}")
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(_r).order_by(_r.c.id.desc()).limit(limit + 1)
    if job is not None:
        query = query.where(_r.c.job == job)
    if outcome is not None:
        query = query.where(_r.c.outcome == outcome)
    if since is not None:
        query = query.where(_r.c.started_at >= since)
    if until is not None:
        query = query.where(_r.c.started_at < until)
    if cursor is not None:
        query = query.where(_r.c.id < cursor)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        rows = conn.execute(query).all()
    page = [_run_view(row) for row in rows[:limit]]
    return {
        "items": page,
        "runs": page,  # its first name, kept beside items until version 2
        "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None,
    }


def get_run(rt: Runtime, actor: Principal, run_id: int) -> dict[str, Any]:
    _require_read(actor)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(select(_r).where(_r.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"run {run_id} not found")
    return _run_view(row)


def _claim(rt: Runtime, actor: Principal, name: str, trigger: str) -> runner.Claim:
    _require_run(actor, name)
    try:
        return runner.claim(rt, name, trigger, holder=f"{actor.name[:40]}@{runner.new_holder()}")
    except runner.JobBusy as exc:
        raise Conflict(str(exc)) from None


def run_job(
    rt: Runtime,
    actor: Principal,
    name: str,
    *,
    now: datetime | None = None,
    progress: runner.Progress | None = None,
) -> dict[str, Any]:
    """Run one job now and wait for its end (CLI); 409 when it is running elsewhere."""
    claimed = _claim(rt, actor, name, "cli")
    return runner.execute(rt, claimed, now=now, progress=progress)


def start_job(rt: Runtime, actor: Principal, name: str) -> dict[str, Any]:
    """Start one job now in the background (API); its run is returned, still running."""
    claimed = _claim(rt, actor, name, "api")

    def work() -> None:
        try:
            runner.execute(rt, claimed)
        except Exception:
            log.exception("job %s: run %s could not be recorded", name, claimed.run_id)

    threading.Thread(target=work, name=f"voms-job-{name}", daemon=True).start()
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(select(_r).where(_r.c.id == claimed.run_id)).one()
    return _run_view(row)
