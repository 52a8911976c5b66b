"""Promotion plans (docs/api.md "Promotions"; roles operator, admin) and a subscriber's
counters (roles care, auditor, operator, admin)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from voms.api.deps import Allowed, LookupCaller, RuntimeDep
from voms.domain.roles import Permission
from voms.services.auth import Principal
from voms.services.promotions import counters, plans
from voms.services.promotions.plans import PromotionIn, PromotionUpdate

router = APIRouter(prefix="/api/v1", tags=["promotions"])
Promoter = Annotated[Principal, Depends(Allowed(Permission.PROMOTIONS))]


class WindowPublic(BaseModel):
    kind: str
    days: int | None


class EligiblePublic(BaseModel):
    voucher_types: list[str]
    channels: list[str]
    product_types: list[str]


class RewardCreditPublic(BaseModel):
    balance_type: str
    amount: int
    balance_expiry_extension_days: int


class RewardPublic(BaseModel):
    credits: list[RewardCreditPublic]
    account_expiry_extension_days: int
    percent_of_value: int
    new_product_type: str | None


class PromotionPublic(BaseModel):
    code: str
    name: str
    service_provider: str
    starts_at: datetime
    ends_at: datetime | None
    window: WindowPublic
    counter: str
    eligible: EligiblePublic
    target: int
    repeat: bool
    reward: RewardPublic
    created_at: datetime
    updated_at: datetime


class PromotionPage(BaseModel):
    items: list[PromotionPublic]
    next_cursor: str | None


class CounterPublic(BaseModel):
    promotion: str
    name: str
    counter: str
    window: WindowPublic
    window_start: datetime | None
    window_end: datetime | None
    value: int
    target: int
    repeat: bool
    rewards: int
    to_next_reward: int | None
    last_reward_at: datetime | None
    running: bool


class CounterPage(BaseModel):
    items: list[CounterPublic]
    next_cursor: str | None


_SAME: dict[int | str, dict[str, Any]] = {
    200: {"description": "It existed with exactly these fields: creating is idempotent"}
}


@router.post(
    "/promotions",
    status_code=status.HTTP_201_CREATED,
    responses=_SAME,
    response_model=PromotionPublic,
)
def create_promotion(body: PromotionIn, rt: RuntimeDep, who: Promoter) -> Any:
    found, created = plans.create_or_find(rt, who, body)
    if created:
        return found
    return JSONResponse(jsonable_encoder(found), status_code=status.HTTP_200_OK)


@router.get("/promotions", response_model=PromotionPage)
def list_promotions(
    rt: RuntimeDep,
    who: Promoter,
    service_provider: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    return plans.list_plans(rt, who, service_provider, limit, cursor)


@router.get("/promotions/{code}", response_model=PromotionPublic)
def get_promotion(code: str, rt: RuntimeDep, who: Promoter) -> dict[str, Any]:
    return plans.get(rt, who, code)


@router.patch("/promotions/{code}", response_model=PromotionPublic)
def update_promotion(
    code: str, body: PromotionUpdate, rt: RuntimeDep, who: Promoter
) -> dict[str, Any]:
    """Rename a plan, move its end (null: no end) or change its target."""
    return plans.update_plan(rt, who, code, body)


@router.get("/subscribers/{msisdn}/counters", response_model=CounterPage)
def subscriber_counters(
    msisdn: str,
    rt: RuntimeDep,
    who: LookupCaller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Each plan's counter for this subscriber (newest plan first): the window, the value,
    the target."""
    return counters.counters_of(rt, who, msisdn, limit=limit, cursor=cursor)
