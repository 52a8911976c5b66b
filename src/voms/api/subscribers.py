"""Subscribers of the built-in wallet: create, look up, change, adjust balances."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from voms.api.deps import LookupCaller, RuntimeDep, SubscriberWriter, WalletAdjuster
from voms.api.paging import LIMIT_DEFAULT, Cursor, Limit, Page
from voms.services import paging, wallet
from voms.services.wallet import AdjustmentIn, SubscriberIn, SubscriberUpdate

router = APIRouter(prefix="/api/v1", tags=["wallet"])


class BalancePublic(BaseModel):
    balance_type: str
    amount: int
    expires_at: datetime | None


class SubscriberPublic(BaseModel):
    msisdn: str
    service_provider: str
    # null for a subscriber of an external charging system (which keeps them itself)
    product_type: str | None
    state: str
    account_expires_at: datetime | None
    created_at: datetime | None
    balances: list[BalancePublic]
    # The charging system whose balances these are (docs/charging.md); null: ours.
    charging_system: str | None = None


class AdjustmentPublic(BaseModel):
    msisdn: str
    balance_type: str
    amount: int
    balance: int
    expires_at: datetime | None
    reason: str
    at: datetime


class LedgerEntry(BaseModel):
    id: int
    at: datetime
    balance_type: str
    amount: int
    balance_after: int
    cause: str
    transaction_id: str | None
    serial: int | None
    reason: str | None
    actor: str


@router.post("/subscribers", status_code=status.HTTP_201_CREATED, response_model=SubscriberPublic)
def create_subscriber(body: SubscriberIn, rt: RuntimeDep, who: SubscriberWriter) -> dict[str, Any]:
    return wallet.create_subscriber(rt, who, body)


@router.get("/subscribers/{msisdn}", response_model=SubscriberPublic)
def get_subscriber(
    msisdn: str,
    rt: RuntimeDep,
    who: LookupCaller,
    service_provider: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    return wallet.get_subscriber(rt, who, msisdn, service_provider)


@router.patch("/subscribers/{msisdn}", response_model=SubscriberPublic)
def update_subscriber(
    msisdn: str, body: SubscriberUpdate, rt: RuntimeDep, who: SubscriberWriter
) -> dict[str, Any]:
    return wallet.update_subscriber(rt, who, msisdn, body)


@router.post(
    "/subscribers/{msisdn}/adjustments",
    status_code=status.HTTP_201_CREATED,
    response_model=AdjustmentPublic,
)
def adjust_balance(
    msisdn: str, body: AdjustmentIn, rt: RuntimeDep, who: WalletAdjuster
) -> dict[str, Any]:
    """Credit (positive amount) or debit (negative) one balance; a reason is required."""
    return wallet.adjust_balance(rt, who, msisdn, body)


@router.get("/subscribers/{msisdn}/ledger", response_model=Page[LedgerEntry])
def ledger(
    msisdn: str,
    rt: RuntimeDep,
    who: LookupCaller,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Every change of a balance, newest first."""
    before = paging.decode(cursor, int)
    rows = wallet.ledger_of(rt, who, msisdn, limit + 1, before[0] if before else None)
    return paging.page(rows, limit, lambda row: (row["id"],))
