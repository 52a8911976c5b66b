"""Redemption family (docs/api.md): redeem, reserve/commit/revoke, voucher-type recharges.

Bodies are read leniently so that every answer carries ``result_code`` and
``result_text``, a malformed body included: the service decides which code applies.
"""

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from voms.api.deps import principal_of, require_role
from voms.api.gate import BodyTooLarge, check_body
from voms.api.schemas import Problem, ResultAnswer, error_responses
from voms.domain.errors import VomsError
from voms.domain.roles import Permission
from voms.services import redemption
from voms.services.redemption import (
    RechargeRequest,
    RedemptionRequest,
    Response,
    SettlementRequest,
)
from voms.serving import run_redemption_work

router = APIRouter(prefix="/api/v1", tags=["redemption"])
T = TypeVar("T")


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
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema}}},
        # The routes check the API key themselves (deps.principal_of), not via Depends.
        "security": [{"HTTPBearer": []}],
    }


_ANSWERS: dict[int | str, dict[str, Any]] = {
    **{
        status: {
            "model": ResultAnswer,
            "description": "result_code and result_text (docs/api.md, Result codes)",
        }
        for status in (200, 400, 404, 409, 429, 503)
    },
    # 403: a blacklisted subscriber (5003), or a key whose role may not call this.
    403: {"model": ResultAnswer | Problem, "description": "5003, or the key's role"},
    **error_responses(401, 413, 422),
}


async def _body(request: Request) -> object:
    """The JSON body; None when it is not JSON, or holds NUL characters or nesting no
    request has. A body above VOMS_MAX_BODY_KB is refused (413) before more is read."""
    limit = request.app.state.runtime.settings.max_body_kb << 10
    raw = b""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        raw += message.get("body", b"")
        if len(raw) > limit:
            raise BodyTooLarge(f"request body larger than {limit >> 10} KiB")
        if not message.get("more_body", False):
            break
    try:
        check_body(raw)
        return json.loads(raw) if raw else None
    except (ValueError, VomsError):
        return None


async def _answer(
    request: Request,
    permission: Permission,
    parse: Callable[[object], T],
    service: Callable[..., Response],
    *args: object,
) -> JSONResponse:
    """Authenticate and check the role before reading the body, parse it leniently,
    then run the (blocking) service with the runtime, the caller, ``args`` and the body."""
    who = await principal_of(request)
    require_role(who, (permission,))
    body = parse(await _body(request))
    rt = request.app.state.runtime
    return JSONResponse(await run_redemption_work(request, service, rt, who, *args, body))


@router.post("/redemptions", openapi_extra=_documented(RedemptionBody), responses=_ANSWERS)
async def redeem(request: Request) -> JSONResponse:
    """Redeem a voucher: consume it and credit the recipient's wallet."""
    return await _answer(request, Permission.REDEEM, RedemptionRequest.from_json, redemption.redeem)


@router.post("/reservations", openapi_extra=_documented(RedemptionBody), responses=_ANSWERS)
async def reserve(request: Request) -> JSONResponse:
    """Reserve a voucher for an external charging system; commit or revoke it later."""
    return await _answer(
        request, Permission.REDEEM, RedemptionRequest.from_json, redemption.reserve
    )


_OPTIONAL_ACTION_BODY = _documented(ReservationActionBody, required=False)


@router.post(
    "/reservations/{reservation_id}/commit", openapi_extra=_OPTIONAL_ACTION_BODY, responses=_ANSWERS
)
async def commit(reservation_id: str, request: Request) -> JSONResponse:
    """The reserved voucher becomes redeemed (no wallet here changes)."""
    return await _answer(
        request, Permission.REDEEM, SettlementRequest.from_json, redemption.commit, reservation_id
    )


@router.post(
    "/reservations/{reservation_id}/revoke", openapi_extra=_OPTIONAL_ACTION_BODY, responses=_ANSWERS
)
async def revoke(reservation_id: str, request: Request) -> JSONResponse:
    """The reserved voucher becomes available again."""
    return await _answer(
        request, Permission.REDEEM, SettlementRequest.from_json, redemption.revoke, reservation_id
    )


@router.post("/voucher-type-recharges", openapi_extra=_documented(RechargeBody), responses=_ANSWERS)
async def recharge(request: Request) -> JSONResponse:
    """Credit a wallet as a voucher of the type would, without a voucher."""
    return await _answer(
        request, Permission.VOUCHER_TYPE_RECHARGE, RechargeRequest.from_json, redemption.recharge
    )
