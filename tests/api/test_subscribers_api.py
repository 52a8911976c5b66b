"""Subscribers and adjustments over HTTP."""

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.runtime import Runtime

MSISDN = "254700000001"


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)


def test_create_and_read_a_subscriber(
    client: TestClient, admin: dict[str, str], catalog: None
) -> None:
    created = client.post(
        "/api/v1/subscribers",
        headers=admin,
        json={
            "msisdn": "+254-700-000001",
            "service_provider": "ACME",
            "product_type": "GOLD",
            "account_expires_at": "2027-02-21T00:00:00+00:00",
        },
    )
    assert created.status_code == 201
    assert created.json()["msisdn"] == MSISDN
    shown = client.get(f"/api/v1/subscribers/{MSISDN}", headers=admin).json()
    assert (shown["state"], shown["product_type"], shown["balances"]) == ("active", "GOLD", [])
    assert shown["account_expires_at"].startswith("2027-02-21T00:00:00")
    again = client.post(
        "/api/v1/subscribers",
        headers=admin,
        json={"msisdn": MSISDN, "service_provider": "ACME", "product_type": "GOLD"},
    )
    assert again.status_code == 409
    for body, status in (
        ({"msisdn": "2547", "service_provider": "ACME", "product_type": "GOLD"}, 422),
        ({"msisdn": "254700000009", "service_provider": "NOPE", "product_type": "GOLD"}, 404),
        ({"msisdn": "254700000009", "service_provider": "ACME", "product_type": "NOPE"}, 404),
        (
            {
                "msisdn": "254700000009",
                "service_provider": "ACME",
                "product_type": "GOLD",
                "state": "sleeping",
            },
            422,
        ),
    ):
        assert client.post("/api/v1/subscribers", headers=admin, json=body).status_code == status
    assert client.get("/api/v1/subscribers/254799999999", headers=admin).status_code == 404


def test_care_adjusts_balances_with_a_reason_and_the_ledger_shows_it(
    rt: Runtime, client: TestClient, admin: dict[str, str], catalog: None
) -> None:
    factories.subscriber(rt, MSISDN)
    care = bearer(factories.api_key(rt, "care"))
    path = f"/api/v1/subscribers/{MSISDN}/adjustments"
    no_reason = client.post(path, headers=care, json={"balance_type": "CASH", "amount": 500})
    assert no_reason.status_code == 422
    credit = client.post(
        path, headers=care, json={"balance_type": "CASH", "amount": 500, "reason": "goodwill"}
    )
    assert credit.status_code == 201
    assert credit.json()["balance"] == 500
    debit = client.post(
        path, headers=care, json={"balance_type": "CASH", "amount": -200, "reason": "fix"}
    )
    assert debit.json()["balance"] == 300
    too_much = client.post(
        path, headers=care, json={"balance_type": "CASH", "amount": -301, "reason": "oops"}
    )
    assert too_much.status_code == 409
    ledger = client.get(f"/api/v1/subscribers/{MSISDN}/ledger", headers=care).json()["items"]
    assert [(e["amount"], e["cause"], e["reason"]) for e in ledger] == [
        (-200, "adjustment", "fix"),
        (500, "adjustment", "goodwill"),
    ]
    assert (
        client.post(
            "/api/v1/subscribers",
            headers=care,
            json={"msisdn": "254700000005", "service_provider": "ACME", "product_type": "GOLD"},
        ).status_code
        == 403
    )


def test_a_subscriber_can_be_suspended(
    rt: Runtime, client: TestClient, admin: dict[str, str], catalog: None
) -> None:
    factories.subscriber(rt, MSISDN)
    changed = client.patch(
        f"/api/v1/subscribers/{MSISDN}",
        headers=admin,
        json={"state": "suspended", "product_type": "SILVER"},
    )
    assert (changed.json()["state"], changed.json()["product_type"]) == ("suspended", "SILVER")
