"""Running a job: take its lease, record the run, renew per chunk, record the outcome.

One runner per job at a time, across processes and hosts: the ``job_leases`` row is
taken with a conditional UPDATE (free or expired), renewed after every chunk, and
released at the end; a runner that dies frees the job when its lease expires, and its
run is then marked ``abandoned``. A scheduled run also names its slot, so that the
same cron slot runs once even when every `voms serve` process wakes up for it.
"""

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, update
from sqlalchemy.exc import DBAPIError

from voms.db import tables as t
from voms.db.types import utcnow
from voms.db.upsert import insert_if_absent
from voms.runtime import Runtime
from voms.services.events import outbox as events
from voms.services.housekeeping.context import JobContext
from voms.services.housekeeping.registry import JOBS
from voms.services.uow import UnitOfWork

_l, _r = t.job_leases, t.job_runs
MAX_ERROR_LENGTH = 1000
Progress = Callable[[int, int], None]  # (rows in this chunk, rows so far)


class JobBusy(Exception):
    """Another runner holds the job's lease (or already started this slot)."""


class LeaseLost(Exception):
    """The lease expired and another runner may have taken the job: stop at once."""


@dataclass(frozen=True)
class Claim:
    job: str
    run_id: int
    holder: str
    started_at: datetime


def new_holder() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(
    rt: Runtime, job: str, trigger: str, slot: datetime | None = None, holder: str | None = None
) -> Claim:
    """Take the job's lease and open its run; :class:`JobBusy` when someone else has it."""
    if job not in JOBS:
        raise KeyError(job)
    holder = holder or new_holder()
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        insert_if_absent(conn, _l, {"job": job})
        uow.commit()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        free = and_(_l.c.job == job, or_(_l.c.expires_at.is_(None), _l.c.expires_at <= now))
        values: dict[str, Any] = {
            "holder": holder,
            "expires_at": now + timedelta(seconds=rt.settings.job_lease_seconds),
        }
        if slot is not None:
            free = and_(free, or_(_l.c.last_slot.is_(None), _l.c.last_slot < slot))
            values["last_slot"] = slot
        if conn.execute(update(_l).where(free).values(**values)).rowcount != 1:
            raise JobBusy(f"job {job} is running elsewhere or already ran for this slot")
        # We hold the lease, so a run still marked running has lost its runner.
        conn.execute(
            update(_r)
            .where(_r.c.job == job, _r.c.outcome == "running")
            .values(
                outcome="abandoned",
                finished_at=now,
                error="the runner stopped before the end (its lease expired)",
            )
        )
        run_id = conn.execute(
            insert(_r)
            .values(
                job=job,
                trigger=trigger,
                runner=holder,
                started_at=now,
                outcome="running",
                rows_affected=0,
                detail={} if slot is None else {"slot": slot.isoformat()},
            )
            .returning(_r.c.id)
        ).scalar_one()
        conn.execute(update(_l).where(_l.c.job == job).values(run_id=run_id))
        uow.commit()
    return Claim(job=job, run_id=run_id, holder=holder, started_at=now)


def _safe_error(exc: BaseException) -> str:
    """The error without SQL parameters (never a secret in the history)."""
    if isinstance(exc, DBAPIError):
        text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else ""
    else:
        text = str(exc)
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_LENGTH]


def execute(
    rt: Runtime, claimed: Claim, now: datetime | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run the claimed job to its end; the run's history row says how it went."""
    job = JOBS[claimed.job]
    done = 0
    lease = timedelta(seconds=rt.settings.job_lease_seconds)

    def on_chunk(rows: int) -> None:
        nonlocal done
        done += rows
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            renewed = conn.execute(
                update(_l)
                .where(_l.c.job == claimed.job, _l.c.holder == claimed.holder)
                .values(expires_at=utcnow() + lease)
            ).rowcount
            conn.execute(
                update(_r)
                .where(_r.c.id == claimed.run_id)
                .values(rows_affected=done, detail=ctx.detail)
            )
            uow.commit()
        if renewed != 1:
            raise LeaseLost(f"job {claimed.job}: lease lost")
        if progress is not None:
            progress(rows, done)

    ctx = JobContext(
        rt=rt,
        now=now or utcnow(),
        chunk_size=rt.settings.housekeeping_chunk_size,
        on_chunk=on_chunk,
    )
    outcome, rows = "failed", 0
    error: str | None = "interrupted"
    try:
        rows = job.run(ctx)
        outcome, error = "succeeded", None
    except Exception as exc:
        error = _safe_error(exc)
    finally:
        if outcome != "succeeded":
            rows = done
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            conn.execute(
                update(_r)
                .where(_r.c.id == claimed.run_id)
                .values(
                    outcome=outcome,
                    finished_at=utcnow(),
                    rows_affected=rows,
                    detail=ctx.detail,
                    error=error,
                )
            )
            conn.execute(
                update(_l)
                .where(_l.c.job == claimed.job, _l.c.holder == claimed.holder)
                .values(holder=None, expires_at=None, run_id=None)
            )
            if outcome != "succeeded":
                events.job_failed(conn, claimed.job, claimed.run_id, error)
            uow.commit()
    return {
        "run_id": claimed.run_id,
        "job": claimed.job,
        "outcome": outcome,
        "rows_affected": rows,
        "error": error,
        "detail": ctx.detail,
    }


def run(
    rt: Runtime,
    job: str,
    trigger: str = "cli",
    now: datetime | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Claim and execute in one go (CLI, tests)."""
    return execute(rt, claim(rt, job, trigger), now=now, progress=progress)
