"""Alert settings per service provider, and the alerts recorded (docs/alerts.md).

Settings: operators and admins within their provider scope (catalog:write). The list of
alerts: operators and admins (housekeeping); a scoped key sees its provider's only.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from voms.api.deps import CatalogWriter, Housekeeper, RuntimeDep
from voms.api.permits import documented, json_body, validated
from voms.services import alerts
from voms.services.alerts import AlertSettingsIn

router = APIRouter(prefix="/api/v1", tags=["alerts"])


class AlertSettingsPublic(BaseModel):
    service_provider: str
    quiet_hours: dict[str, str] | None  # {"from": "21:00", "until": "08:00"}
    time_zone: str
    expiry_notice_days: int | None
    batch_expiry_days: int | None
    blacklist_burst: dict[str, int] | None  # {"count", "minutes"}
    reward_sms: bool
    operator_emails: list[str]
    low_balance: dict[str, int]  # balance type code → threshold (minor units)
    voucher_stock: dict[str, int]  # voucher type code → threshold (vouchers)
    updated_at: datetime | None
    updated_by: str | None


class AlertPublic(BaseModel):
    id: int
    kind: str
    audience: str
    service_provider: str | None
    msisdn: str | None
    subject_id: int | None
    subject_at: datetime | None
    amount: int | None
    threshold: int | None
    state: str
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    resolved_at: datetime | None
    error: str | None


class AlertPage(BaseModel):
    items: list[AlertPublic]
    next_cursor: str | None


@router.get("/service-providers/{code}/alerts", response_model=AlertSettingsPublic)
def get_alert_settings(code: str, rt: RuntimeDep, who: CatalogWriter) -> dict[str, Any]:
    """The provider's alert settings and thresholds."""
    return alerts.get_settings(rt, who, code)


@router.patch(
    "/service-providers/{code}/alerts",
    response_model=AlertSettingsPublic,
    openapi_extra=documented(AlertSettingsIn),
)
async def update_alert_settings(
    code: str, request: Request, rt: RuntimeDep, who: CatalogWriter
) -> dict[str, Any]:
    """Merge into the provider's alert settings (`null` removes a setting or threshold)."""
    body = validated(AlertSettingsIn, await json_body(request))
    return await run_in_threadpool(alerts.update_settings, rt, who, code, body)


@router.get("/alerts", response_model=AlertPage)
def list_alerts(
    rt: RuntimeDep,
    who: Housekeeper,
    service_provider: str | None = None,
    kind: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=alerts.MAX_LIMIT)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Alerts recorded, newest first; pass `next_cursor` as `cursor` for the next page."""
    return alerts.list_alerts(
        rt,
        who,
        service_provider=service_provider,
        kind=kind,
        state=state,
        since=since,
        limit=limit,
        cursor=cursor,
    )
