"""Voucher routes: lookups by serial or PIN, and freeze/unfreeze/delete of serial ranges."""

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from voms.api.deps import BatchWriter, LookupCaller, RuntimeDep
from voms.services import care, lifecycle
from voms.services.care import PinLookupIn
from voms.services.lifecycle import SerialRangeIn

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


@router.get("/vouchers/{serial}", response_model=VoucherPublic)
def lookup_by_serial(serial: str, rt: RuntimeDep, who: LookupCaller) -> Json:
    """A voucher's effective state, expiry, redemption and history."""
    return care.voucher_by_serial(rt, who, serial)
