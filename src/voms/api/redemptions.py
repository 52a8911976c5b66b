"""Redemption family (API.md): redeem, reserve/commit/revoke, voucher-type recharges.

Bodies are read leniently so that every answer carries ``result_code`` and
``result_text``, a malformed body included: the service decides which code applies.
"""

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from voms.api.deps import PrincipalDep, RuntimeDep
from voms.services import redemption
from voms.services.redemption import RechargeRequest, RedemptionRequest, ReservationAction

router = APIRouter(prefix="/api/v1", tags=["redemption"])


class RedemptionBody(BaseModel):
    """Documentation of the request body (the service checks the values)."""

    msisdn: str = Field(examples=["254700000001"])
    pin: str = Field(examples=["12345678901234"])
    recipient_msisdn: str | None = None
    scenario: int | None = None
    serial: str | None = None
    channel: str = Field("rest", description="rest soap ussd sms ivr web care")
    request_id: str | None = Field(None, description="Makes the call idempotent")
    service_provider: str | None = None


class RechargeBody(BaseModel):
    msisdn: str
    voucher_type: str
    recipient_msisdn: str | None = None
    scenario: int | None = None
    channel: str = "rest"
    request_id: str | None = None
    service_provider: str | None = None


class ReservationActionBody(BaseModel):
    channel: str = "rest"
    request_id: str | None = None


def _documented(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}
    }


_ANSWERS: dict[int | str, dict[str, Any]] = {
    status: {"description": "result_code and result_text (API.md, Result codes)"}
    for status in (400, 403, 404, 409, 429)
}


async def _body(request: Request) -> object:
    raw = await request.body()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


@router.post("/redemptions", openapi_extra=_documented(RedemptionBody), responses=_ANSWERS)
async def redeem(request: Request, rt: RuntimeDep, who: PrincipalDep) -> JSONResponse:
    """Redeem a voucher: consume it and credit the recipient's wallet."""
    body = RedemptionRequest.from_json(await _body(request))
    return JSONResponse(await run_in_threadpool(redemption.redeem, rt, who, body))


@router.post("/reservations", openapi_extra=_documented(RedemptionBody), responses=_ANSWERS)
async def reserve(request: Request, rt: RuntimeDep, who: PrincipalDep) -> JSONResponse:
    """Reserve a voucher for an external charging system; commit or revoke it later."""
    body = RedemptionRequest.from_json(await _body(request))
    return JSONResponse(await run_in_threadpool(redemption.reserve, rt, who, body))


@router.post(
    "/reservations/{reservation_id}/commit",
    openapi_extra=_documented(ReservationActionBody, required=False),
    responses=_ANSWERS,
)
async def commit(
    reservation_id: str, request: Request, rt: RuntimeDep, who: PrincipalDep
) -> JSONResponse:
    """The reserved voucher becomes redeemed (no wallet here changes)."""
    body = ReservationAction.from_json(await _body(request))
    return JSONResponse(await run_in_threadpool(redemption.commit, rt, who, reservation_id, body))


@router.post(
    "/reservations/{reservation_id}/revoke",
    openapi_extra=_documented(ReservationActionBody, required=False),
    responses=_ANSWERS,
)
async def revoke(
    reservation_id: str, request: Request, rt: RuntimeDep, who: PrincipalDep
) -> JSONResponse:
    """The reserved voucher becomes available again."""
    body = ReservationAction.from_json(await _body(request))
    return JSONResponse(await run_in_threadpool(redemption.revoke, rt, who, reservation_id, body))


@router.post("/voucher-type-recharges", openapi_extra=_documented(RechargeBody), responses=_ANSWERS)
async def recharge(request: Request, rt: RuntimeDep, who: PrincipalDep) -> JSONResponse:
    """Credit a wallet as a voucher of the type would, without a voucher."""
    body = RechargeRequest.from_json(await _body(request))
    return JSONResponse(await run_in_threadpool(redemption.recharge, rt, who, body))
