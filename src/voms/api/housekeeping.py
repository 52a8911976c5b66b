"""Housekeeping routes: the jobs, their runs, and starting a job now."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from voms.api.deps import Housekeeper, HousekeepingReader, RuntimeDep
from voms.api.paging import LIMIT_DEFAULT, Cursor, Limit, Page
from voms.api.schemas import BIGINT_MAX
from voms.services import housekeeping, paging

router = APIRouter(prefix="/api/v1/housekeeping", tags=["housekeeping"])


class RunPublic(BaseModel):
    id: int
    job: str
    trigger: str
    runner: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    rows_affected: int
    detail: dict[str, Any]
    error: str | None


class JobPublic(BaseModel):
    name: str
    description: str
    default_schedule: str
    schedule: str | None
    enabled: bool
    next_run_at: datetime | None
    running_on: str | None
    last_run: RunPublic | None


class RunPage(Page[RunPublic]):
    runs: list[RunPublic] = Field(
        description="The same list as items, kept under its first name until version 2"
    )


@router.get("/jobs", response_model=Page[JobPublic])
def list_jobs(
    rt: RuntimeDep, who: HousekeepingReader, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> dict[str, Any]:
    """Every job with its schedule (cron, UTC), next slot, last run and current runner,
    by name (the installation's few jobs: read whole, answered by page)."""
    after = paging.decode(cursor, str)
    jobs = sorted(housekeeping.list_jobs(rt, who), key=lambda job: str(job["name"]))
    rows = [job for job in jobs if after is None or job["name"] > after[0]]
    return paging.page(rows, limit, lambda row: (row["name"],))


@router.get("/runs", response_model=RunPage)
def list_runs(
    rt: RuntimeDep,
    who: HousekeepingReader,
    job: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=housekeeping.MAX_LIMIT)] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=BIGINT_MAX)] = None,
) -> dict[str, Any]:
    """Runs newest first, filtered by job, outcome and start time; pass ``next_cursor`` on."""
    return housekeeping.list_runs(
        rt, who, job=job, outcome=outcome, since=since, until=until, limit=limit, cursor=cursor
    )


@router.get("/runs/{run_id}", response_model=RunPublic)
def get_run(
    run_id: Annotated[int, Path(ge=1, le=BIGINT_MAX)], rt: RuntimeDep, who: HousekeepingReader
) -> dict[str, Any]:
    return housekeeping.get_run(rt, who, run_id)


@router.post("/jobs/{name}/run", response_model=RunPublic, status_code=202)
def run_job(name: str, rt: RuntimeDep, who: Housekeeper) -> dict[str, Any]:
    """Start the job now in the background (202 with its run); 409 if it is running."""
    return housekeeping.start_job(rt, who, name)
