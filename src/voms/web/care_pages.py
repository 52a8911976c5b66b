"""Customer care: a subscriber's wallet, ledger and transactions, redeem on behalf,
adjustments, and the blacklist."""

import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from voms.domain.errors import Invalid, NotFound, VomsError
from voms.domain.roles import Permission
from voms.domain.serials import parse_serial
from voms.services import blacklist, care, catalog, transactions, wallet
from voms.services.people import Session
from voms.web.base import (
    NO_ERRORS,
    Column,
    ConsoleRoute,
    Fetch,
    FormErrors,
    Table,
    call,
    checked_form,
    csv_download,
    field,
    filters_of,
    form_errors,
    newest_first,
    optional,
    paged,
    refused_status,
    render,
    require,
    runtime,
    see_other,
    table_page,
    viewer,
)

router = APIRouter(prefix="/ui/care", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]

_TX_COLUMNS = [
    Column("at", "When", "time"),
    Column("kind", "Kind"),
    Column("result_code", "Result"),
    Column("result_text", "Result text"),
    Column("channel", "Channel"),
    Column("serial", "Serial"),
    Column("msisdn", "MSISDN"),
    Column("recipient_msisdn", "Recipient"),
    Column("voucher_type", "Voucher type"),
    Column("credits", "Credits", "json"),
    Column("actor", "By"),
    Column("id", "Transaction"),
]
_BALANCE_COLUMNS = [
    Column("balance_type", "Balance type"),
    Column("amount", "Amount"),
    Column("expires_at", "Expires", "time"),
]
_LEDGER_COLUMNS = [
    Column("at", "When", "time"),
    Column("balance_type", "Balance type"),
    Column("amount", "Change"),
    Column("balance_after", "Balance after"),
    Column("cause", "Cause"),
    Column("serial", "Serial"),
    Column("reason", "Reason"),
    Column("actor", "By"),
]


async def _care_page(
    request: Request,
    who: Session,
    msisdn: str | None,
    serial: str | None,
    result: dict[str, str] | None = None,
    errors: FormErrors = NO_ERRORS,
    status: int = 200,
) -> Response:
    rt, actor = runtime(request), who.principal
    number = parse_serial(serial, rt.settings.serial_width) if serial else None

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        found = transactions.list_transactions(
            rt, actor, msisdn=msisdn, serial=number, limit=limit, cursor=cursor
        )
        return found["transactions"], found["next_cursor"]

    found_transactions: Table | None = None
    if msisdn or serial:
        answer = await table_page(
            request, _TX_COLUMNS, fetch, "transactions.csv", "Transactions, newest first"
        )
        if isinstance(answer, StreamingResponse):
            return answer
        found_transactions = answer
    subscriber = None
    ledger: Table | None = None
    balance_types: list[str] = []
    if msisdn:
        try:
            subscriber = await call(wallet.get_subscriber, rt, actor, msisdn)
        except NotFound:
            subscriber = None
    if subscriber is not None:
        answer = await table_page(
            request,
            _LEDGER_COLUMNS,
            _ledger_fetch(request, who, subscriber["msisdn"]),
            "ledger.csv",
            "Ledger, newest first",
            name="ledger",
        )
        if isinstance(answer, StreamingResponse):
            return answer
        ledger = answer
        if who.may(Permission.WALLET_ADJUST):
            types = await call(
                catalog.list_balance_types, rt, actor, subscriber["service_provider"]
            )
            balance_types = [bt["code"] for bt in types]
    return render(
        request,
        who,
        "care.html",
        status=status,
        errors=errors,
        title="Customer care",
        nav="care",
        msisdn=msisdn or "",
        serial=serial or "",
        result=result,
        subscriber=subscriber,
        balance_types=balance_types,
        balance_columns=_BALANCE_COLUMNS,
        ledger=ledger,
        transactions=found_transactions,
        # A new id each time the form is shown: sending the same form twice (a double
        # click, a retry after a timeout) redeems once and answers the first outcome.
        redeem_request_id=f"ui-{uuid.uuid4()}",
    )


def _ledger_fetch(request: Request, who: Session, msisdn: str) -> Fetch:
    rt = runtime(request)
    return newest_first(
        lambda before, limit: wallet.ledger_of(rt, who.principal, msisdn, limit, before), "id"
    )


@router.get("")
async def care_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.LOOKUP)
    wanted = filters_of(request, "msisdn", "serial")
    return await _care_page(request, who, wanted["msisdn"], wanted["serial"])


@router.get("/ledger.csv")
async def ledger_csv(request: Request, who: Viewer) -> Response:
    require(who, Permission.LOOKUP)
    msisdn = filters_of(request, "msisdn")["msisdn"] or ""
    return csv_download(_LEDGER_COLUMNS, _ledger_fetch(request, who, msisdn), "ledger.csv")


@router.post("/redeem")
async def redeem(request: Request, who: Viewer) -> Response:
    require(who, Permission.REDEEM)
    form = await checked_form(request, who)
    msisdn = field(form, "msisdn")
    try:
        response = await call(
            care.redeem_on_behalf,
            runtime(request),
            who.principal,
            msisdn=msisdn,
            pin=field(form, "pin"),
            reason=field(form, "reason"),
            request_id=optional(form, "request_id"),
        )
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        errors = form_errors("redeem", exc, form)
        return await _care_page(request, who, msisdn, None, None, errors, status)
    if response["result_code"] == 0:
        credited = ", ".join(f"{c['balance_type']} +{c['amount']}" for c in response["credits"])
        result = {
            "title": "Redeemed",
            "text": f"Voucher {response.get('serial')} redeemed: {credited}.",
        }
    else:
        result = {
            "title": "Not redeemed",
            "text": f"{response['result_code']} {response['result_text']}",
        }
    return await _care_page(request, who, msisdn, None, result)


@router.post("/adjust")
async def adjust(request: Request, who: Viewer) -> Response:
    require(who, Permission.WALLET_ADJUST)
    form = await checked_form(request, who)
    msisdn = field(form, "msisdn")
    amount = field(form, "amount")
    try:
        if not amount.lstrip("-").isdigit() or len(amount) > 19:
            raise Invalid("amount: a whole number of minor units")
        body = wallet.AdjustmentIn(
            balance_type=field(form, "balance_type"),
            amount=int(amount),
            reason=field(form, "reason"),
        )
        done = await call(wallet.adjust_balance, runtime(request), who.principal, msisdn, body)
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        errors = form_errors("adjust", exc, form)
        return await _care_page(request, who, msisdn, None, None, errors, status)
    result = {
        "title": "Balance adjusted",
        "text": f"{done['balance_type']} {done['amount']:+d}: balance now {done['balance']}.",
    }
    return await _care_page(request, who, msisdn, None, result)


_BLACKLIST_COLUMNS = [
    Column("msisdn", "MSISDN"),
    Column("reason", "Reason"),
    Column("failures", "Failures"),
    Column("until", "Until", "time"),
]


@router.get("/blacklist")
async def blacklist_page(request: Request, who: Viewer) -> Response:
    return await _blacklist_page(request, who)


async def _blacklist_page(
    request: Request, who: Session, errors: FormErrors = NO_ERRORS, status: int = 200
) -> Response:
    require(who, Permission.BLACKLIST)
    rt = runtime(request)
    msisdn = filters_of(request, "msisdn")["msisdn"]

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        return paged(
            blacklist.list_blacklist(rt, who.principal, msisdn=msisdn, limit=limit, cursor=cursor)
        )

    table = await table_page(
        request, _BLACKLIST_COLUMNS, fetch, "blacklist.csv", "Blacklisted MSISDNs"
    )
    if isinstance(table, StreamingResponse):
        return table
    return render(
        request,
        who,
        "blacklist.html",
        status=status,
        errors=errors,
        title="Blacklist",
        nav="care",
        msisdn=msisdn,
        table=table,
        can_release=who.may(Permission.BLACKLIST),
        notice=request.query_params.get("released") and "Released.",
    )


@router.post("/blacklist/release")
async def release(request: Request, who: Viewer) -> Response:
    require(who, Permission.BLACKLIST)
    form = await checked_form(request, who)
    try:
        await call(
            blacklist.release,
            runtime(request),
            who.principal,
            field(form, "msisdn"),
        )
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _blacklist_page(request, who, form_errors("release", exc, form), status)
    return see_other("/ui/care/blacklist?released=1")
