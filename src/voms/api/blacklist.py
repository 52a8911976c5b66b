"""The bad-PIN blacklist as care sees it (docs/api.md "Blacklist"; roles care, admin)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from voms.api.deps import RuntimeDep
from voms.api.permits import documented, json_body, permitted, validated
from voms.domain.roles import Permission
from voms.services import blacklist
from voms.services.auth import Principal
from voms.services.blacklist import BlockIn

router = APIRouter(prefix="/api/v1", tags=["blacklist"])
Allowed = Annotated[Principal, permitted(Permission.BLACKLIST)]


class BlacklistEntry(BaseModel):
    msisdn: str
    reason: str  # bad_pins or manual
    until: datetime | None  # null: until released
    failures: int
    note: str | None
    blocked_by: str | None
    updated_at: datetime


class BlacklistPage(BaseModel):
    items: list[BlacklistEntry]
    next_cursor: str | None


class ReleasedEntry(BlacklistEntry):
    was_blocked: bool
    released_by: str


@router.get("/blacklist", response_model=BlacklistPage)
def list_blacklist(
    rt: RuntimeDep,
    who: Allowed,
    msisdn: str | None = None,
    limit: Annotated[int, Query(ge=1, le=blacklist.MAX_LIMIT)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """MSISDNs blocked now, most recently changed first; pass `next_cursor` as `cursor`."""
    return blacklist.list_blacklist(rt, who, msisdn=msisdn, limit=limit, cursor=cursor)


@router.post(
    "/blacklist",
    status_code=status.HTTP_201_CREATED,
    response_model=BlacklistEntry,
    openapi_extra=documented(BlockIn),
)
async def block(request: Request, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """Block an MSISDN by hand (`until` left out: until released); `reason` says why."""
    body = validated(BlockIn, await json_body(request))
    return await run_in_threadpool(blacklist.block, rt, who, body)


@router.delete("/blacklist/{msisdn}", response_model=ReleasedEntry)
def release(msisdn: str, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """Release an MSISDN; its failure count starts again at 0. Answers what was released."""
    return blacklist.release(rt, who, msisdn)
