"""Choosing a provider's charging system over the API (admin only, secrets by reference),
redeeming through it over HTTP, its subscribers' balances, and its metrics."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from tests.charging_support import InSimulator, external_catalog
from voms.runtime import Runtime

MSISDN = "254711000001"


@pytest.fixture
def sim() -> Iterator[InSimulator]:
    simulator = InSimulator(slow_s=0.5)
    simulator.add_subscriber(MSISDN, main=500)
    yield simulator
    simulator.stop()
    assert simulator.violations == []


def test_only_an_admin_chooses_where_balances_live(
    client: TestClient, rt: Runtime, admin: dict[str, str], sim: InSimulator
) -> None:
    external_catalog(rt, None)
    factories.service_provider(rt, "OTHER")
    operator = bearer(factories.api_key(rt, "operator"))
    other_admin = bearer(factories.api_key(rt, "admin", sp="OTHER"))
    ucip = {"engine": "ucip", "url": sim.url, "timeout_ms": 500}
    url = "/api/v1/service-providers/INOP"
    assert client.patch(url, json={"billing": ucip}, headers=operator).status_code == 403
    assert client.patch(url, json={"billing": ucip}, headers=other_admin).status_code == 403
    assert client.patch(url, json={"name": "In Op"}, headers=operator).status_code == 200
    answer = client.patch(url, json={"billing": ucip}, headers=admin)
    assert answer.status_code == 200
    assert answer.json()["billing"] == {**ucip, "origin_host": "voms"}
    assert client.get(url, headers=operator).json()["billing"]["engine"] == "ucip"
    back = client.patch(url, json={"billing": {"engine": "builtin"}}, headers=admin)
    assert back.json()["billing"] == {"engine": "builtin"}


@pytest.mark.parametrize(
    "billing",
    [
        {"engine": "http", "url": "http://127.0.0.1:9/c", "secret": "plain-secret"},
        {"engine": "http", "url": "http://127.0.0.1:9/c", "secret": "env:VOMS_TEST_UNSET_SECRET"},
        {"engine": "ucip", "url": "http://127.0.0.1:9/Air", "password": "keys:absent"},
        {"engine": "ucip", "url": "ftp://127.0.0.1/Air"},
        {"engine": "ucip", "url": "http://voms:pw@127.0.0.1:9/Air"},
        {"engine": "ucip", "url": "http://127.0.0.1:9/Air", "timeout_ms": 600_000},
        {"engine": "ocs", "url": "http://127.0.0.1:9/"},
        {"engine": "ucip", "url": "http://127.0.0.1:9/Air", "token": "x"},
    ],
)
def test_a_secret_is_a_reference_that_must_resolve_and_bad_billing_is_422(
    client: TestClient, rt: Runtime, admin: dict[str, str], billing: dict[str, object]
) -> None:
    external_catalog(rt, None)
    answer = client.patch(
        "/api/v1/service-providers/INOP", json={"billing": billing}, headers=admin
    )
    assert answer.status_code == 422
    assert "plain-secret" not in answer.text


def test_a_secret_from_the_environment_is_stored_as_its_name_only(
    client: TestClient,
    rt: Runtime,
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOMS_TEST_IN_SECRET", "very-secret-value")
    external_catalog(rt, None)
    billing = {"engine": "http", "url": "http://127.0.0.1:9/c", "secret": "env:VOMS_TEST_IN_SECRET"}
    answer = client.patch(
        "/api/v1/service-providers/INOP", json={"billing": billing}, headers=admin
    )
    assert answer.status_code == 200
    with rt.engine.connect() as conn:
        dump = "\n".join(
            str(row) for row in conn.exec_driver_sql("SELECT * FROM service_providers")
        )
        dump += "\n".join(str(row) for row in conn.exec_driver_sql("SELECT * FROM audit_log"))
    assert "env:VOMS_TEST_IN_SECRET" in dump
    assert "very-secret-value" not in dump


def test_balance_types_name_their_account_at_the_charging_system(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    external_catalog(rt, None)
    found = client.get("/api/v1/balance-types/INOP/SMS", headers=admin).json()
    assert found["external_id"] == "7"
    url = "/api/v1/balance-types/INOP/SMS"
    assert (
        client.patch(url, json={"external_id": "12"}, headers=admin).json()["external_id"] == "12"
    )
    assert client.patch(url, json={"external_id": "twelve"}, headers=admin).status_code == 422
    assert (
        client.patch(url, json={"external_id": None}, headers=admin).json()["external_id"] is None
    )


def test_redeeming_over_http_through_the_in_and_reading_its_balances(
    client: TestClient, rt: Runtime, admin: dict[str, str], sim: InSimulator
) -> None:
    external_catalog(rt, {"engine": "ucip", "url": sim.url, "timeout_ms": 3000})
    (_, p1), (_, p2) = factories.active_batch(rt, "IN10", count=2)
    body = {"msisdn": MSISDN, "pin": p1, "channel": "ussd"}
    answer = client.post("/api/v1/redemptions", json=body, headers=admin)
    assert answer.status_code == 200, answer.text
    assert answer.json()["credits"][0]["balance"] == 1500
    sim.fault = "drop"
    answer = client.post("/api/v1/redemptions", json={**body, "pin": p2}, headers=admin)
    assert answer.status_code == 503
    assert answer.json()["result_code"] == 5009
    assert answer.json()["result_text"] == "Charging system unavailable"
    assert p2 not in answer.text

    found = client.get(f"/api/v1/subscribers/{MSISDN}?service_provider=INOP", headers=admin)
    assert found.status_code == 200, found.text
    shown = found.json()
    assert shown["charging_system"] == "ucip"
    assert {b["balance_type"]: b["amount"] for b in shown["balances"]} == {"CASH": 2500, "SMS": 20}
    scoped = bearer(factories.api_key(rt, "care", sp="INOP"))
    assert client.get(f"/api/v1/subscribers/{MSISDN}", headers=scoped).status_code == 200
    unknown = client.get("/api/v1/subscribers/254799999999?service_provider=INOP", headers=admin)
    assert unknown.status_code == 404
    assert client.get(f"/api/v1/subscribers/{MSISDN}", headers=admin).status_code == 404
    sim.down()
    assert client.get(f"/api/v1/subscribers/{MSISDN}", headers=scoped).status_code == 503

    metrics = client.get("/metrics").text
    assert (
        'voms_charging_calls_total{call="credit",engine="ucip",outcome="credited",service_provider="INOP"}'
        in metrics
    )
    assert 'outcome="unknown",service_provider="INOP"' in metrics
    assert "voms_charging_call_seconds_bucket" in metrics
    assert "voms_charging_breaker_open" in metrics
    assert 'voms_charges_unsettled{service_provider="INOP",state="unknown"} 1.0' in metrics
