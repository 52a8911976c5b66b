"""Reseller routes (docs/api.md "Resellers and electronic PINs"): resellers, stock,
activations, electronic PIN sales, payments, statements and sell-through.

Bodies are read here and validated by the services after the caller's role, scope and
the reseller named in the path are checked: 401, then 403, then 404, then 422.
"""

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from voms.api.deps import Allowed, RuntimeDep
from voms.channels import sms
from voms.domain.errors import ResultError, VomsError
from voms.domain.results import Result
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.resellers import accounts, sales, statements, stock
from voms.serving import TokenBuckets

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["resellers"])
Json = dict[str, Any]
MAX_BODY = 64 * 1024
_deliveries = ThreadPoolExecutor(max_workers=2, thread_name_prefix="voms-pin-sms")


Reader = Annotated[Principal, Depends(Allowed(Permission.RESELLER_READ))]
Writer = Annotated[Principal, Depends(Allowed(Permission.RESELLER_WRITE))]
Seller = Annotated[Principal, Depends(Allowed(Permission.SELL))]
Limit = Annotated[int, Query(ge=1, le=accounts.MAX_PAGE)]


def _documented(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body the route reads itself."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class BodyTooLarge(VomsError):
    http_status = 413


async def _body(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BodyTooLarge(f"request body larger than {MAX_BODY // 1024} KiB")
    return raw


@router.post(
    "/resellers",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_documented(accounts.ResellerIn),
)
async def create_reseller(request: Request, rt: RuntimeDep, who: Writer) -> JSONResponse:
    """Create a reseller (below `parent` for a sub-reseller); the same body again answers
    200 with it, a different one 409."""
    found, created = await run_in_threadpool(
        accounts.create_reseller, rt, who, await _body(request)
    )
    code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return JSONResponse(_json(found), status_code=code)


@router.get("/resellers")
def list_resellers(
    rt: RuntimeDep,
    who: Reader,
    parent: str | None = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> Json:
    """Resellers by code; a reseller's key sees its own subtree only."""
    return accounts.list_resellers(rt, who, parent=parent, limit=limit, cursor=cursor)


@router.get("/resellers/{code}")
def get_reseller(code: str, rt: RuntimeDep, who: Reader) -> Json:
    return accounts.get_reseller(rt, who, code)


@router.patch("/resellers/{code}", openapi_extra=_documented(accounts.ResellerUpdate))
async def update_reseller(code: str, request: Request, rt: RuntimeDep, who: Writer) -> Json:
    """Change the reseller's name, credit limit, commission or contact; fields not given
    stay. A reseller's key changes only the resellers below its own."""
    return await run_in_threadpool(accounts.update_reseller, rt, who, code, await _body(request))


@router.post(
    "/resellers/{code}/stock",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_documented(stock.SerialRangeIn),
)
async def hand_over_stock(code: str, request: Request, rt: RuntimeDep, who: Writer) -> Json:
    """Hand a range of inactive vouchers (one batch) to the reseller, or move part of a
    range held above it down the tree."""
    return await run_in_threadpool(stock.hand_over, rt, who, code, await _body(request))


@router.get("/resellers/{code}/stock")
def list_stock(
    code: str, rt: RuntimeDep, who: Reader, limit: Limit = 50, cursor: str | None = None
) -> Json:
    return stock.list_stock(rt, who, code, limit=limit, cursor=cursor)


@router.post(
    "/resellers/{code}/activations",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_documented(stock.SerialRangeIn),
)
async def activate_cards(code: str, request: Request, rt: RuntimeDep, who: Seller) -> Json:
    """The reseller activates a range of its printed cards, and pays for them."""
    return await run_in_threadpool(sales.activate, rt, who, code, await _body(request))


@router.get("/resellers/{code}/sales")
def list_sales(
    code: str, rt: RuntimeDep, who: Reader, limit: Limit = 50, cursor: str | None = None
) -> Json:
    """The reseller's sales, newest first (never a PIN)."""
    return sales.list_sales(rt, who, code, limit=limit, cursor=cursor)


@router.post(
    "/resellers/{code}/payments",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_documented(accounts.PaymentIn),
)
async def record_payment(code: str, request: Request, rt: RuntimeDep, who: Writer) -> Json:
    """Money received from the reseller (operator keys only); `request_id` makes a retry
    safe."""
    found, _ = await run_in_threadpool(accounts.record_payment, rt, who, code, await _body(request))
    return found


@router.get(
    "/resellers/{code}/statement",
    responses={
        200: {"content": {"text/csv": {}, "application/pdf": {}}},
    },
)
def reseller_statement(
    code: str,
    rt: RuntimeDep,
    who: Reader,
    since: datetime | None = None,
    until: datetime | None = None,
    format: Literal["json", "csv", "pdf"] = "json",
) -> Response:
    """Opening balance + sales - commission - payments = closing balance for the period
    (default: this UTC month), with its entries."""
    found = statements.statement(rt, who, code, since=since, until=until)
    name = f"statement-{found['reseller']}-{found['since']:%Y%m%d}"
    if format == "csv":
        return PlainTextResponse(
            statements.statement_csv(found),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    if format == "pdf":
        return Response(
            statements.statement_pdf(found),
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'},
        )
    return JSONResponse(_json(found))


@router.get("/resellers/{code}/sell-through")
def sell_through(code: str, rt: RuntimeDep, who: Reader) -> Json:
    """Per reseller of the subtree and voucher type: on hand, sold, redeemed."""
    return statements.sell_through(rt, who, code)


@router.post("/sales", status_code=status.HTTP_201_CREATED, openapi_extra=_documented(sales.SaleIn))
async def sell_pins(request: Request, rt: RuntimeDep, who: Seller) -> Json:
    """Sell `count` electronic PINs: the answer carries them, once per `request_id` (a
    retry answers the same PINs); `deliver_to_msisdn` also sends each by SMS."""
    if who.api_key_id is not None and not _sale_limits(request, rt).allow(who.api_key_id):
        raise ResultError(Result.TOO_MANY_REQUESTS)
    sold = await run_in_threadpool(sales.sell, rt, who, await _body(request))
    if sold.first and sold.answer["deliver_to_msisdn"]:
        _deliveries.submit(_deliver, rt, sold.answer)
    return sold.answer


def _sale_limits(request: Request, rt: Runtime) -> TokenBuckets:
    state = request.app.state
    limits: TokenBuckets | None = getattr(state, "sale_limits", None)
    if limits is None:
        per_minute = rt.settings.sales_per_minute
        limits = state.sale_limits = TokenBuckets(per_minute / 60, per_minute)
    return limits


def _deliver(rt: Runtime, answer: Json) -> None:
    """Each PIN of a sale by SMS to the buyer's number, through Kannel (best effort: the
    seller has the PINs in its answer anyway)."""
    msisdn = answer["deliver_to_msisdn"]
    for voucher in answer["vouchers"]:
        text = (
            f"{answer['voucher_type']} PIN {voucher['pin']} (serial {voucher['serial']}, "
            f"valid until {voucher['expires_at'][:10]})"
        )
        try:
            status_code = sms.sendsms(rt, msisdn, text)
        except Exception as exc:  # never the exception's text: the URL holds the PIN
            log.warning(
                "sending the PIN of serial %s by SMS failed: %s",
                voucher["serial"],
                exc.__class__.__name__,
            )
            continue
        log.info("PIN of serial %s sent by SMS (Kannel HTTP %s)", voucher["serial"], status_code)


def _json(found: Json) -> Json:
    encoded: Json = jsonable_encoder(found)
    return encoded
