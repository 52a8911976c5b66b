"""Alert settings through the API: merge, thresholds, validation, scope; the alert list."""

from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services.alerts import detection
from voms.services.housekeeping.context import JobContext

URL = "/api/v1/service-providers/ACME/alerts"


def test_settings_merge_and_thresholds_come_and_go(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    fresh = client.get(URL, headers=admin)
    assert fresh.status_code == 200
    assert fresh.json()["quiet_hours"] is None
    assert fresh.json()["low_balance"] == {}

    changed = client.patch(
        URL,
        headers=admin,
        json={
            "quiet_hours": {"from": "21:00", "until": "08:00"},
            "time_zone": "Africa/Nairobi",
            "low_balance": {"CASH": 1000, "SMS": 5},
            "voucher_stock": {"TOPUP10": 500},
            "expiry_notice_days": 3,
            "blacklist_burst": {"count": 20, "minutes": 10},
            "operator_emails": ["ops@acme.example"],
        },
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["quiet_hours"] == {"from": "21:00", "until": "08:00"}
    assert body["low_balance"] == {"CASH": 1000, "SMS": 5}
    assert body["voucher_stock"] == {"TOPUP10": 500}
    assert body["blacklist_burst"] == {"count": 20, "minutes": 10}

    # A field left out is kept; null removes a threshold or a setting.
    again = client.patch(
        URL, headers=admin, json={"low_balance": {"SMS": None}, "quiet_hours": None}
    )
    assert again.status_code == 200
    assert again.json()["low_balance"] == {"CASH": 1000}
    assert again.json()["quiet_hours"] is None
    assert again.json()["time_zone"] == "Africa/Nairobi"
    assert again.json()["expiry_notice_days"] == 3
    assert client.get(URL, headers=admin).json() == again.json()


def test_bad_settings_are_refused_with_422(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "OTHER")
    for body in (
        {"quiet_hours": {"from": "25:00", "until": "08:00"}},
        {"time_zone": "Mars/Olympus"},
        {"low_balance": {"NOPE": 100}},
        {"low_balance": {"CASH": 0}},
        {"voucher_stock": {"TOPUP10_OTHER": 10}},  # another provider's type
        {"operator_emails": ["not an address"]},
        {"expiry_notice_days": 0},
        {"time_zone": None},
        {"unknown": 1},
    ):
        answer = client.patch(URL, headers=admin, json=body)
        assert answer.status_code == 422, (body, answer.text)
    assert client.get(URL, headers=admin).json()["low_balance"] == {}


def test_an_operator_key_of_another_provider_may_not_touch_them(
    client: TestClient, rt: Runtime
) -> None:
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "OTHER")
    other = bearer(factories.api_key(rt, "operator", "OTHER"))
    own = bearer(factories.api_key(rt, "operator", "ACME"))
    assert client.patch(URL, headers=other, json={"expiry_notice_days": 2}).status_code == 403
    assert client.patch(URL, headers=own, json={"expiry_notice_days": 2}).status_code == 200
    care = bearer(factories.api_key(rt, "care", "ACME"))
    assert client.get(URL, headers=care).status_code == 403


def test_the_alert_list_shows_a_scoped_key_its_own_providers_alerts(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "OTHER")
    for sp in ("ACME", "OTHER"):
        vt = "TOPUP10" if sp == "ACME" else "TOPUP10_OTHER"
        assert (
            client.patch(
                f"/api/v1/service-providers/{sp}/alerts",
                headers=admin,
                json={"voucher_stock": {vt: 5}},
            ).status_code
            == 200
        )
    detection.detect(JobContext(rt=rt, now=utcnow(), chunk_size=100))
    everything = client.get("/api/v1/alerts", headers=admin).json()
    assert sorted(a["service_provider"] for a in everything["items"]) == ["ACME", "OTHER"]
    assert {a["kind"] for a in everything["items"]} == {"voucher_stock"}
    assert {a["state"] for a in everything["items"]} == {"pending"}
    acme = bearer(factories.api_key(rt, "operator", "ACME"))
    mine = client.get("/api/v1/alerts", headers=acme).json()
    assert [a["service_provider"] for a in mine["items"]] == ["ACME"]
    for bad in (
        "kind=nope",
        "state=nope",
        "cursor=99999999999999999999999",
        "since=2026-01-01T00:00",
    ):
        assert client.get(f"/api/v1/alerts?{bad}", headers=admin).status_code == 422, bad
    page = client.get("/api/v1/alerts?limit=1", headers=admin).json()
    assert len(page["items"]) == 1
    assert page["next_cursor"] is not None
    rest = client.get(f"/api/v1/alerts?limit=1&cursor={page['next_cursor']}", headers=admin).json()
    assert rest["next_cursor"] is None
    assert rest["items"][0]["id"] < page["items"][0]["id"]
