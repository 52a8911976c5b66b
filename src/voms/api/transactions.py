"""Redemption attempts, successful and failed, for care and audit."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from voms.api.deps import LookupCaller, RuntimeDep
from voms.api.schemas import BIGINT_MAX
from voms.services import transactions

router = APIRouter(prefix="/api/v1", tags=["transactions"])


class TransactionPublic(BaseModel):
    id: str
    at: datetime
    kind: str
    result_code: int
    result_text: str
    channel: str
    serial: str | None
    msisdn: str | None
    recipient_msisdn: str | None
    voucher_type: str | None
    scenario: int | None
    credits: list[dict[str, Any]]
    reservation_id: str | None
    actor: str


class TransactionPage(BaseModel):
    items: list[TransactionPublic]
    transactions: list[TransactionPublic] = Field(
        description="The same list as items, kept under its first name until version 2"
    )
    next_cursor: str | None


@router.get("/transactions", response_model=TransactionPage)
def list_transactions(
    rt: RuntimeDep,
    who: LookupCaller,
    msisdn: str | None = None,
    serial: Annotated[int | None, Query(ge=0, le=BIGINT_MAX)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=transactions.MAX_LIMIT)] = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Newest first; ``msisdn`` matches requester or recipient; pass ``next_cursor`` on."""
    page = transactions.list_transactions(
        rt,
        who,
        msisdn=msisdn,
        serial=serial,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )
    return {**page, "items": page["transactions"]}
