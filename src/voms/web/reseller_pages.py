"""Resellers in the console: the tree the viewer may see, one reseller's account, its
stock and sales, and changing its terms (credit limit, commission, contact).

A person scoped to a reseller (``voms user create --role distributor --reseller CODE``)
sees that reseller and the resellers below it, and nothing else; the services check it
(``accounts.visible``), as they do for a reseller's API key.
"""

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from voms.domain.errors import VomsError
from voms.domain.roles import Permission
from voms.services.people import Session
from voms.services.resellers import accounts, sales, stock
from voms.web.base import (
    NO_ERRORS,
    Column,
    ConsoleRoute,
    FormErrors,
    call,
    checked_form,
    field,
    form_errors,
    paged,
    refused_status,
    render,
    require,
    runtime,
    see_other,
    table_page,
    viewer,
)

router = APIRouter(prefix="/ui/resellers", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]
Rows = tuple[Sequence[Mapping[str, Any]], str | None]

_RESELLER_COLUMNS = [
    Column("code", "Reseller", "link:/ui/resellers/"),
    Column("name", "Name"),
    Column("parent", "Parent"),
    Column("service_provider", "Provider"),
    Column("currency", "Currency"),
    Column("credit_limit", "Credit limit (minor units)"),
    Column("commission_percent", "Commission %"),
    Column("balance_due", "Due (minor units)"),
    Column("available_credit", "Credit left (minor units)"),
    Column("contact", "Contact"),
]
_STOCK_COLUMNS = [
    Column("voucher_type", "Voucher type"),
    Column("batch_id", "Batch", "link:/ui/batches/"),
    Column("kind", "Kind"),
    Column("serial_from", "First serial"),
    Column("serial_to", "Last serial"),
    Column("on_hand", "On hand"),
    Column("created_at", "Received", "time"),
]
_SALE_COLUMNS = [
    Column("at", "When", "time"),
    Column("kind", "Kind"),
    Column("voucher_type", "Voucher type"),
    Column("count", "Vouchers"),
    Column("value", "Value (minor units)"),
    Column("commission", "Commission (minor units)"),
    Column("currency", "Currency"),
    Column("serial_from", "First serial"),
    Column("serial_to", "Last serial"),
    Column("actor", "By"),
]


@router.get("")
async def resellers_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.RESELLER_READ)
    rt = runtime(request)

    def fetch(cursor: str | None, limit: int) -> Rows:
        return paged(accounts.list_resellers(rt, who.principal, limit=limit, cursor=cursor))

    table = await table_page(
        request, _RESELLER_COLUMNS, fetch, "resellers.csv", "Resellers by code"
    )
    if isinstance(table, StreamingResponse):
        return table
    intro = f"Reseller {who.reseller} and the resellers below it." if who.reseller else None
    return render(
        request, who, "list.html", title="Resellers", nav="resellers", intro=intro, table=table
    )


async def _reseller_page(
    request: Request, who: Session, code: str, errors: FormErrors = NO_ERRORS, status: int = 200
) -> Response:
    require(who, Permission.RESELLER_READ)
    rt, actor = runtime(request), who.principal
    reseller = await call(accounts.get_reseller, rt, actor, code)

    def below(cursor: str | None, limit: int) -> Rows:
        return paged(accounts.list_resellers(rt, actor, parent=code, limit=limit, cursor=cursor))

    def held(cursor: str | None, limit: int) -> Rows:
        return paged(stock.list_stock(rt, actor, code, limit=limit, cursor=cursor))

    def sold(cursor: str | None, limit: int) -> Rows:
        return paged(sales.list_sales(rt, actor, code, limit=limit, cursor=cursor))

    tables = []
    for name, columns, fetch, caption in (
        ("below", _RESELLER_COLUMNS, below, "Resellers directly below"),
        ("stock", _STOCK_COLUMNS, held, "Stock on hand"),
        ("sales", _SALE_COLUMNS, sold, "Sales, newest first"),
    ):
        table = await table_page(request, columns, fetch, f"{code}-{name}.csv", caption, name=name)
        if isinstance(table, StreamingResponse):
            return table
        tables.append(table)
    return render(
        request,
        who,
        "reseller.html",
        status=status,
        errors=errors,
        title=f"Reseller {code}",
        nav="resellers",
        reseller=reseller,
        tables=tables,
        # A reseller's person changes the resellers below its own, never its own terms.
        can_change=who.may(Permission.RESELLER_WRITE) and who.reseller != code,
    )


@router.get("/{code}")
async def reseller_page(request: Request, who: Viewer, code: str) -> Response:
    return await _reseller_page(request, who, code)


@router.post("/{code}")
async def change_terms(request: Request, who: Viewer, code: str) -> Response:
    """Change the credit limit, commission or contact (only the fields filled in)."""
    require(who, Permission.RESELLER_WRITE)
    form = await checked_form(request, who)
    body: dict[str, Any] = {}
    for name in ("credit_limit", "commission_percent"):
        if field(form, name):
            body[name] = field(form, name)
    if "contact" in form:
        body["contact"] = field(form, "contact") or None
    try:
        await call(accounts.update_reseller, runtime(request), who.principal, code, body)
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _reseller_page(request, who, code, form_errors("terms", exc, form), status)
    return see_other(f"/ui/resellers/{code}")
