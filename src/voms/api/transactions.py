"""Redemption attempts, successful and failed, for care and audit."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from voms.api.deps import LookupCaller, RuntimeDep
from voms.api.permits import documented, json_body, permitted
from voms.api.schemas import BIGINT_MAX
from voms.domain.roles import Permission
from voms.services import reversal, transactions
from voms.services.auth import Principal
from voms.services.reversal import ReversalIn

router = APIRouter(prefix="/api/v1", tags=["transactions"])
_NOT_JSON = "(a body that is not JSON)"


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
    reversed_by: str | None = None  # the reversal of this transaction
    reverses: str | None = None  # the transaction this reversal took back


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
    limit: Annotated[int, Query(ge=1, le=transactions.MAX_LIMIT)] = 50,
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


class ReversalLine(BaseModel):
    balance_type: str
    credited: int  # what the redemption credited
    amount: int  # what the reversal took (negative)
    shortfall: int  # what it could not take (forced reversals only)
    balance: int  # the balance after the reversal


class ReversalPublic(BaseModel):
    reversal_id: str
    transaction_id: str
    serial: str | None
    msisdn: str
    reason: str
    voucher_reactivated: bool
    forced: bool
    credits: list[ReversalLine]
    shortfall: list[dict[str, Any]]
    at: datetime
    actor: str


@router.post(
    "/transactions/{transaction_id}/reversal",
    response_model=ReversalPublic,
    openapi_extra=documented(ReversalIn),
)
async def reverse(
    transaction_id: str,
    request: Request,
    rt: RuntimeDep,
    who: Annotated[Principal, permitted(Permission.REVERSE)],
) -> dict[str, Any]:
    """Take a redemption's credits back (ledger cause `reversal`), the voucher active again
    if asked; 409 when the credit was spent, unless an admin forces it. Reversing again
    answers the first reversal."""
    try:
        raw = await json_body(request)
    except RequestValidationError:
        raw = _NOT_JSON  # refused after the transaction is found (404 before 422)
    return await run_in_threadpool(reversal.reverse, rt, who, transaction_id, raw)


@router.get("/transactions/{transaction_id}/reversal", response_model=ReversalPublic)
def reversal_of(transaction_id: str, rt: RuntimeDep, who: LookupCaller) -> dict[str, Any]:
    """The reversal of a transaction, as answered when it was made."""
    return reversal.reversal_of(rt, who, transaction_id)
