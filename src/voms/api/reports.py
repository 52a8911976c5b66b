"""Reports: GET /api/v1/reports/{name} in JSON, CSV, XLSX or PDF."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from voms.api.deps import Allowed, RuntimeDep
from voms.domain.roles import Permission
from voms.services import reports
from voms.services.auth import Principal

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])


@router.get("/{name}", response_model=None)
def get_report(
    name: str,
    rt: RuntimeDep,
    who: Annotated[Principal, Depends(Allowed(Permission.REPORT_READ))],
    since: str | None = None,
    until: str | None = None,
    service_provider: str | None = None,
    group_by: str = "day",
    by: str = "channel",
    month: str | None = None,
    format: str = "json",
) -> Response:
    """One report (inventory, liability, redemptions, failures, expiries, partners,
    summary, rewards); ``format`` json, csv, xlsx or pdf. Values are checked after the caller's
    role and scope (403 before 422), so they arrive as text."""
    query = reports.Query(
        since=since,
        until=until,
        service_provider=service_provider,
        group_by=group_by,
        by=by,
        month=month,
    )
    report = reports.run_report(rt, who, name, query)
    if reports.check_format(format) == "json":
        return JSONResponse(report.as_json())
    headers: dict[str, Any] = {
        "Content-Disposition": f'attachment; filename="{report.name}.{format}"'
    }
    return Response(
        reports.render(report, format), media_type=reports.MEDIA_TYPES[format], headers=headers
    )
