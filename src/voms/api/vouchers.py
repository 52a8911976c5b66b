"""Voucher routes: lookups by serial or PIN, failed attempts, and range operations
(freeze, unfreeze, delete; activate, amend the expiry)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from voms.api.deps import BatchWriter, LookupCaller, RuntimeDep
from voms.api.permits import documented, json_body, permitted, validated
from voms.domain.roles import Permission
from voms.services import care, lifecycle, ranges
from voms.services.auth import Principal
from voms.services.care import PinLookupIn
from voms.services.lifecycle import SerialRangeIn
from voms.services.ranges import RangeActivationIn, RangeExpiryIn

router = APIRouter(prefix="/api/v1", tags=["vouchers"])
Json = dict[str, Any]


class HistoryEntry(BaseModel):
    at: datetime
    actor: str
    action: str
    batch_id: int | None
    serial_from: str
    serial_to: str
    reason: str | None
    channel: str | None = None
    msisdn: str | None = None


class FailedAttempt(BaseModel):
    transaction_id: str
    at: datetime
    kind: str
    channel: str
    actor: str  # the API key's name, or the channel (ussd, sms, ivr, web)
    msisdn: str | None
    recipient_msisdn: str | None
    result_code: int
    result_text: str


class FailedAttemptPage(BaseModel):
    items: list[FailedAttempt]
    next_cursor: str | None


class VoucherPublic(BaseModel):
    """A voucher as care sees it. There is deliberately no PIN field."""

    serial: str
    state: str
    voucher_state: str
    batch_id: int
    batch_state: str
    voucher_type: str
    expires_at: datetime
    redeemed_at: datetime | None
    redeemed_by: str | None
    archived: bool = False  # moved to the archive by the voucher_archive job
    history: list[HistoryEntry]
    # The newest failed attempts; `next_cursor` goes on at GET /vouchers/{serial}/attempts.
    failed_attempts: FailedAttemptPage


class RangeResult(BaseModel):
    action: str
    serial_from: str
    serial_to: str
    matched: int
    affected: int
    unchanged: int


@router.post("/vouchers/lookup", response_model=VoucherPublic)
def lookup_by_pin(body: PinLookupIn, rt: RuntimeDep, who: LookupCaller) -> Json:
    """Find a voucher by its PIN (in the body, never in a URL)."""
    return care.voucher_by_pin(rt, who, body.pin)


def _range_route(action: str) -> None:
    def change(body: SerialRangeIn, rt: RuntimeDep, who: BatchWriter) -> Json:
        return lifecycle.change_vouchers(
            rt, who, action, body.serial_from, body.serial_to, body.reason
        )

    change.__name__ = f"{action}_vouchers"
    router.post(
        f"/vouchers/{action}",
        response_model=RangeResult,
        summary=f"{action.capitalize()} one voucher or a serial range",
        description="One set-based update; vouchers whose state does not allow it are "
        "counted as unchanged; 409 when none could change.",
    )(change)


for _action in ("freeze", "unfreeze", "delete"):
    _range_route(_action)


class RangePart(BaseModel):
    from_batch: int
    to_batch: int  # the batch itself, or the part that now holds these vouchers
    serial_from: str
    serial_to: str
    count: int
    state: str
    expires_at: datetime


class RangeChange(RangeResult):
    batches: list[RangePart]


@router.post(
    "/vouchers/activate", response_model=RangeChange, openapi_extra=documented(RangeActivationIn)
)
async def activate_vouchers(request: Request, rt: RuntimeDep, who: BatchWriter) -> Json:
    """Activate one voucher or a serial range of inactive batches: a range that is part of
    a batch becomes a part of its own (`parent_batch_id`), active; the rest stays inactive."""
    body = validated(RangeActivationIn, await json_body(request))
    return await run_in_threadpool(
        ranges.activate_range, rt, who, body.serial_from, body.serial_to, body.reason
    )


@router.post("/vouchers/amend", response_model=RangeChange, openapi_extra=documented(RangeExpiryIn))
async def amend_vouchers(request: Request, rt: RuntimeDep, who: BatchWriter) -> Json:
    """Give one voucher or a serial range another expiry (`expires_at`), as
    PATCH /batches/{id} does for a whole batch; a partial range becomes a part."""
    body = validated(RangeExpiryIn, await json_body(request))
    return await run_in_threadpool(
        ranges.amend_range, rt, who, body.serial_from, body.serial_to, body.expires_at, body.reason
    )


@router.get("/vouchers/{serial}", response_model=VoucherPublic)
def lookup_by_serial(serial: str, rt: RuntimeDep, who: LookupCaller) -> Json:
    """A voucher's effective state, expiry, redemption and history."""
    return care.voucher_by_serial(rt, who, serial)


@router.get("/vouchers/{serial}/attempts", response_model=FailedAttemptPage)
def failed_attempts(
    serial: str,
    rt: RuntimeDep,
    who: Annotated[Principal, permitted(Permission.LOOKUP)],
    limit: Annotated[int, Query(ge=1, le=care.MAX_ATTEMPTS_PAGE)] = 50,
    cursor: str | None = None,
) -> Json:
    """Failed attempts made against the voucher (who, when, channel, result), newest first."""
    return care.voucher_attempts(rt, who, serial, limit, cursor)
