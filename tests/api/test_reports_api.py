"""GET /api/v1/reports/{name}: formats, roles and provider scope before validation."""

import csv
import io
from datetime import UTC, datetime

import openpyxl
import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.runtime import Runtime
from voms.services import redemption
from voms.services.auth import CONSOLE
from voms.services.housekeeping import runner
from voms.services.redemption import RedemptionRequest
from voms.services.reports import rollups

MSISDN = "254700000001"


@pytest.fixture
def redeemed(rt: Runtime) -> None:
    """ACME: 5 vouchers, two redeemed over USSD; BETA: 3 vouchers."""
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "BETA")
    factories.subscriber(rt, MSISDN)
    pins = [pin for _, pin in factories.active_batch(rt, count=5)]
    factories.active_batch(rt, "TOPUP10_BETA", count=3)
    for pin in pins[:2]:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin, channel="ussd"))
    rollups.fold(rt, until=datetime(2100, 1, 1, tzinfo=UTC))


def test_redemptions_as_json(client: TestClient, admin: dict[str, str], redeemed: None) -> None:
    answer = client.get("/api/v1/reports/redemptions?group_by=month", headers=admin)
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"report", "since", "until", "rows", "totals"}
    assert body["report"] == "redemptions"
    assert [(r["channel"], r["count"], r["value"]) for r in body["rows"]] == [("ussd", 2, 2000)]
    assert body["totals"] == {"count": 2, "value": {"KES": 2000}}


def test_liability_as_csv_and_xlsx(
    client: TestClient, admin: dict[str, str], redeemed: None
) -> None:
    answer = client.get("/api/v1/reports/liability?format=csv", headers=admin)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(answer.text)))
    assert lines == [
        ["service_provider", "currency", "count", "value"],
        ["ACME", "KES", "3", "3000"],
        ["BETA", "KES", "3", "3000"],
        ["total", "", "6", "6000"],
    ]
    answer = client.get("/api/v1/reports/liability?format=xlsx", headers=admin)
    assert answer.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(answer.content)).active
    assert [list(row) for row in sheet.iter_rows(values_only=True)][:2] == [
        ["service_provider", "currency", "count", "value"],
        ["ACME", "KES", 3, 3000],
    ]


def test_monthly_summary_as_pdf(client: TestClient, admin: dict[str, str], redeemed: None) -> None:
    month = datetime.now(UTC).strftime("%Y-%m")
    answer = client.get(f"/api/v1/reports/summary?month={month}&format=pdf", headers=admin)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/pdf"
    assert answer.content.startswith(b"%PDF-")


@pytest.mark.parametrize("role", ["auditor", "operator", "care", "admin"])
def test_reading_roles_may_read(rt: Runtime, client: TestClient, role: str, redeemed: None) -> None:
    key = bearer(factories.api_key(rt, role))
    assert client.get("/api/v1/reports/inventory", headers=key).status_code == 200


@pytest.mark.parametrize("role", ["channel", "distributor"])
def test_other_roles_get_403_before_validation(rt: Runtime, client: TestClient, role: str) -> None:
    key = bearer(factories.api_key(rt, role))
    assert client.get("/api/v1/reports/nonsense?since=x&format=doc", headers=key).status_code == 403
    assert client.get("/api/v1/reports/inventory").status_code == 401


def test_a_scoped_key_sees_only_its_provider(
    rt: Runtime, client: TestClient, redeemed: None
) -> None:
    beta = bearer(factories.api_key(rt, "auditor", "BETA"))
    answer = client.get("/api/v1/reports/liability", headers=beta)
    assert [r["service_provider"] for r in answer.json()["rows"]] == ["BETA"]
    assert client.get("/api/v1/reports/redemptions", headers=beta).json()["rows"] == []
    for asked in ("ACME", "NOSUCH"):
        other = client.get(
            f"/api/v1/reports/nonsense?service_provider={asked}&format=doc", headers=beta
        )
        assert other.status_code == 403


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/reports/loyalty", 404),
        ("/api/v1/reports/redemptions?service_provider=NOSUCH", 404),
        ("/api/v1/reports/redemptions?format=doc", 422),
        ("/api/v1/reports/redemptions?group_by=week", 422),
        ("/api/v1/reports/redemptions?by=colour", 422),
        ("/api/v1/reports/redemptions?since=yesterday", 422),
        ("/api/v1/reports/redemptions?since=2026-03-01T00:00:00", 422),
        ("/api/v1/reports/summary?month=March", 422),
        (
            "/api/v1/reports/redemptions?since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z",
            422,
        ),
    ],
)
def test_bad_requests_are_answered_not_crashed(
    client: TestClient, admin: dict[str, str], path: str, status: int
) -> None:
    assert client.get(path, headers=admin).status_code == status


def test_business_metrics_come_from_the_rollups(
    rt: Runtime, client: TestClient, redeemed: None
) -> None:
    runner.run(rt, "report_rollups")
    text = client.get("/metrics").text
    assert (
        'voms_redemption_attempts_total{channel="ussd",kind="redemption",'
        'result_code="0",service_provider="ACME"} 2.0'
    ) in text
    assert 'voms_vouchers{service_provider="ACME",state="active"} 3.0' in text
    assert 'voms_vouchers{service_provider="ACME",state="redeemed"} 2.0' in text
    assert 'voms_job_runs_last_24h{job="report_rollups",outcome="succeeded"} 1.0' in text
    assert 'voms_job_last_duration_seconds{job="report_rollups",outcome="succeeded"}' in text


def test_an_hourly_report_covers_at_most_31_days(client: TestClient, admin: dict[str, str]) -> None:
    base = "/api/v1/reports/redemptions?group_by=hour&since=2026-01-01T00:00:00Z"
    assert client.get(base + "&until=2026-02-01T00:00:00Z", headers=admin).status_code == 200
    assert client.get(base + "&until=2026-02-01T01:00:00Z", headers=admin).status_code == 422
