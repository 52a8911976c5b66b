"""Reports in the console: each report of docs/api.md ("Reports") as a chart and a table,
downloadable as JSON, CSV, XLSX and PDF.

The figures come from the same service as the API's (``reports.run_report``, the rollup
tables); the charts are drawn in the browser by the Chart.js file shipped in
``static/`` from a JSON block (no inline script, nothing from the internet), and the
table below each chart carries the same figures for anyone without JavaScript.
"""

from collections import defaultdict
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from voms.domain.errors import VomsError
from voms.domain.money import minor_unit
from voms.domain.roles import Permission
from voms.services import catalog, reports
from voms.services.people import Session
from voms.web.base import (
    SECURITY_HEADERS,
    ConsoleRoute,
    call,
    filters_of,
    form_errors,
    refused_status,
    render,
    require,
    runtime,
    viewer,
)

router = APIRouter(prefix="/ui/reports", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]

TITLES = {
    "inventory": "Inventory: vouchers by provider, type, batch and state",
    "liability": "Liability: value of vouchers sold and not yet redeemed",
    "redemptions": "Redemptions: count and value per period",
    "failures": "Failures: failed attempts by result and channel",
    "expiries": "Expiries: vouchers that expired unused",
    "partners": "Partners: exported and redeemed per partner",
    "summary": "Monthly summary: redemptions per day, by channel, and the liability",
}
QUERY = ("since", "until", "service_provider", "group_by", "by", "month")
# The PDF is the printable monthly summary and liability; every report prints, though.
FORMATS = ("json", "csv", "xlsx", "pdf")


def _major(value: int, currency: str | None) -> float:
    return value / 10.0 ** minor_unit(currency)


def _grouped(
    rows: list[dict[str, Any]],
    label: Callable[[dict[str, Any]], str],
    series: Callable[[dict[str, Any]], str],
    measure: Callable[[dict[str, Any]], float],
) -> tuple[list[str], dict[str, list[float]]]:
    labels: list[str] = []
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        at = label(row)
        if at not in labels:
            labels.append(at)
        sums[series(row)][at] += measure(row)
    return labels, {name: [by_label.get(at, 0) for at in labels] for name, by_label in sums.items()}


def chart_of(report: reports.Report, by: str) -> dict[str, Any]:
    """What the chart of a report draws: its type, labels and one series per line or
    bar colour (values in major units of their currency)."""
    rows, name = report.rows, report.name
    kind = "bar"
    if name == "inventory":
        labels, series = _grouped(
            rows, lambda r: r["state"], lambda r: "vouchers", lambda r: r["count"]
        )
    elif name == "liability":
        labels, series = _grouped(
            rows,
            lambda r: f"{r['service_provider']} {r['currency'] or ''}".strip(),
            lambda r: "value",
            lambda r: _major(r["value"], r["currency"]),
        )
    elif name == "redemptions":
        kind = "line"
        labels, series = _grouped(
            sorted(rows, key=lambda r: r["period"]),
            lambda r: r["period"],
            lambda r: str(r.get(by)),
            lambda r: r["count"],
        )
    elif name == "failures":
        labels, series = _grouped(
            rows,
            lambda r: f"{r['result_code']} {r.get('result_text') or ''}".strip(),
            lambda r: r["channel"],
            lambda r: r["count"],
        )
    elif name == "expiries":
        labels, series = _grouped(
            rows,
            lambda r: f"batch {r['batch_id']}",
            lambda r: "expired unused",
            lambda r: r["count"],
        )
    elif name == "partners":
        labels = [str(r["partner"]) for r in rows]
        series = {
            "exported": [float(r["exported"]) for r in rows],
            "redeemed": [float(r["redeemed"]) for r in rows],
        }
    else:  # summary: redemptions per day of the month
        labels, series = _grouped(
            rows, lambda r: r["period"], lambda r: "redemptions", lambda r: r["count"]
        )
    return {"type": kind, "labels": labels, "series": series}


def _query(wanted: dict[str, str | None]) -> reports.Query:
    return reports.Query(
        since=wanted["since"],
        until=wanted["until"],
        service_provider=wanted["service_provider"],
        group_by=wanted["group_by"] or "day",
        by=wanted["by"] or "channel",
        month=wanted["month"],
    )


@router.get("")
async def reports_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.REPORT_READ)
    rt = runtime(request)
    name = request.query_params.get("name") or "redemptions"
    wanted = filters_of(request, *QUERY)
    providers = await call(catalog.list_service_providers, rt, who.principal)
    context: dict[str, Any] = {
        "title": "Reports",
        "nav": "reports",
        "name": name,
        "names": list(reports.NAMES),
        "titles": TITLES,
        "wanted": wanted,
        "group_bys": list(reports.GROUP_BY),
        "bys": list(reports.BY),
        "provider_codes": [p["code"] for p in providers],
        "report": None,
    }
    try:
        report = await call(reports.run_report, rt, who.principal, name, _query(wanted))
    except VomsError as exc:
        status = refused_status(exc)
        errors = form_errors("report", exc, {"name": name, **wanted})
        return render(request, who, "reports.html", status=status, errors=errors, **context)
    query = urlencode({k: v for k, v in wanted.items() if v is not None})
    downloads = [
        (fmt.upper(), f"/ui/reports/{name}/download?format={fmt}" + (f"&{query}" if query else ""))
        for fmt in FORMATS
    ]
    sections = [(key.replace("_", " ").capitalize(), part) for key, part in report.sections.items()]
    return render(
        request,
        who,
        "reports.html",
        **{
            **context,
            "report": report,
            "sections": sections,
            "chart": chart_of(report, wanted["by"] or "channel"),
            "downloads": downloads,
        },
    )


@router.get("/{name}/download")
async def download(request: Request, who: Viewer, name: str) -> Response:
    """The report as a file: JSON, CSV, XLSX or PDF (the same figures as the page)."""
    require(who, Permission.REPORT_READ)
    fmt = reports.check_format(request.query_params.get("format") or "csv")
    wanted = filters_of(request, *QUERY)
    report = await call(reports.run_report, runtime(request), who.principal, name, _query(wanted))
    body = await call(reports.render, report, fmt)
    return Response(
        body,
        media_type=reports.MEDIA_TYPES[fmt],
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{report.name}.{fmt}"',
        },
    )
