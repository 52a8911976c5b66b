"""TM Forum TMF654 Prepay Balance Management: ``topupBalance`` create and read
(docs/api.md "TM Forum TMF654"). Same keys and roles as /api/v1/redemptions."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from voms.api.deps import principal_of, require_role
from voms.api.redemptions import _body
from voms.api.schemas import Problem, error_responses
from voms.domain.roles import Permission
from voms.services import topup
from voms.serving import run_redemption_work

router = APIRouter(prefix=topup.BASE_PATH, tags=["TMF654"])
_FLEXIBLE = ConfigDict(extra="allow", populate_by_name=True)


class Quantity(BaseModel):
    amount: int = Field(description="In the balance type's minor unit")
    units: str = Field(description="The balance type's code")


class ChannelRef(BaseModel):
    model_config = _FLEXIBLE
    id: str | None = None
    name: str | None = None


class RelatedParty(BaseModel):
    model_config = _FLEXIBLE
    id: str
    role: str
    referred_type: str | None = Field(None, alias="@referredType")


class Characteristic(BaseModel):
    name: str
    value: Any
    value_type: str | None = Field(None, alias="valueType")


class TopupBalanceCreate(BaseModel):
    """The body: the PIN in `voucher`, the subscriber in `relatedParty` (role customer)."""

    model_config = _FLEXIBLE
    voucher: str = Field(description="The voucher's PIN")
    related_party: list[RelatedParty] = Field(alias="relatedParty")
    channel: ChannelRef | None = None


class TopupBalance(BaseModel):
    model_config = _FLEXIBLE
    id: str
    href: str
    type: str = Field(alias="@type")
    status: str = Field(description="completed or failed")
    description: str
    requested_date: str = Field(alias="requestedDate")
    confirmation_date: str | None = Field(None, alias="confirmationDate")
    voucher: str | None = Field(None, description="The voucher's serial, never its PIN")
    amount: Quantity | None = None
    channel: ChannelRef
    related_party: list[RelatedParty] = Field(alias="relatedParty")
    characteristic: list[Characteristic]


_ANSWERS: dict[int | str, dict[str, Any]] = {
    201: {"model": TopupBalance, "description": "Completed"},
    **{
        status: {"model": TopupBalance, "description": "Failed: resultCode says why"}
        for status in (400, 404, 409, 429, 503)
    },
    403: {"model": TopupBalance | Problem, "description": "Failed (5003), or the key's role"},
    **error_responses(401, 413, 422),
}


@router.post(
    f"/{topup.RESOURCE}",
    status_code=201,
    responses=_ANSWERS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": TopupBalanceCreate.model_json_schema(by_alias=True)}
            },
        },
        "security": [{"HTTPBearer": []}],
    },
)
async def create_topup_balance(request: Request) -> JSONResponse:
    """Top up a subscriber's balance with a voucher: one redemption."""
    who = await principal_of(request)
    require_role(who, (Permission.REDEEM,))
    body = await _body(request)
    rt = request.app.state.runtime
    status, resource = await run_redemption_work(request, topup.create, rt, who, body)
    return JSONResponse(resource, status_code=status)


@router.get(
    f"/{topup.RESOURCE}/{{id}}",
    response_model=TopupBalance,
    response_model_by_alias=True,
    response_model_exclude_none=True,
    responses=error_responses(401, 403, 404),
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
async def retrieve_topup_balance(
    request: Request, id: Annotated[str, Path(max_length=100)]
) -> dict[str, Any]:
    """A TopupBalance created before (completed or failed)."""
    who = await principal_of(request)
    require_role(who, (Permission.REDEEM,))
    rt = request.app.state.runtime
    return await run_in_threadpool(topup.read, rt, who, id)
