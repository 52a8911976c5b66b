"""Promotions over HTTP: plans (operators) and a subscriber's counters (care)."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.runtime import Runtime

MSISDN = "254700000001"
PLAN: dict[str, Any] = {
    "code": "TALKFEST",
    "name": "Talk-Fest July",
    "service_provider": "ACME",
    "starts_at": "2026-07-01T00:00:00+00:00",
    "ends_at": "2099-08-01T00:00:00+00:00",
    "window": {"kind": "campaign"},
    "counter": "count",
    "eligible": {"voucher_types": ["TOPUP10"], "channels": ["ussd", "rest"]},
    "target": 2,
    "repeat": False,
    "reward": {
        "credits": [{"balance_type": "SMS", "amount": 180, "balance_expiry_extension_days": 7}],
        "account_expiry_extension_days": 10,
    },
}


@pytest.fixture
def operator(rt: Runtime) -> dict[str, str]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return bearer(factories.api_key(rt, "operator"))


def test_a_plan_is_created_once_and_shown_as_it_was_given(
    client: TestClient, operator: dict[str, str]
) -> None:
    created = client.post("/api/v1/promotions", headers=operator, json=PLAN)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["eligible"] == {
        "voucher_types": ["TOPUP10"],
        "channels": ["rest", "ussd"],
        "product_types": [],
    }
    assert body["reward"]["credits"] == PLAN["reward"]["credits"]
    again = client.post("/api/v1/promotions", headers=operator, json=PLAN)
    assert again.status_code == 200
    assert again.json()["code"] == "TALKFEST"
    other = client.post("/api/v1/promotions", headers=operator, json={**PLAN, "target": 5})
    assert other.status_code == 409
    assert "target" in other.json()["detail"]
    listed = client.get("/api/v1/promotions", headers=operator).json()
    assert [p["code"] for p in listed["items"]] == ["TALKFEST"]
    assert listed["next_cursor"] is None


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"reward": {"credits": [{"balance_type": "NOPE", "amount": 1}]}}, 404),
        ({"eligible": {"product_types": ["PLATINUM"]}}, 404),
        ({"window": {"kind": "rolling_days"}}, 422),  # days missing
        ({"window": {"kind": "calendar_month", "days": 3}}, 422),
        ({"eligible": {"channels": ["fax"]}}, 422),
        ({"reward": {}}, 422),  # gives nothing
        ({"ends_at": "2026-06-01T00:00:00+00:00"}, 422),  # before it starts
        ({"starts_at": "2026-07-01T00:00:00"}, 422),  # no offset
        ({"target": 0}, 422),
    ],
)
def test_a_bad_plan_is_refused_with_4xx(
    client: TestClient, operator: dict[str, str], change: dict[str, Any], status: int
) -> None:
    answer = client.post("/api/v1/promotions", headers=operator, json={**PLAN, **change})
    assert answer.status_code == status, answer.text


def test_a_plan_can_end_early_and_its_target_change(
    client: TestClient, operator: dict[str, str]
) -> None:
    assert client.post("/api/v1/promotions", headers=operator, json=PLAN).status_code == 201
    changed = client.patch(
        "/api/v1/promotions/TALKFEST",
        headers=operator,
        json={"ends_at": "2026-07-31T00:00:00+00:00", "target": 4},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["ends_at"], changed.json()["target"]) == ("2026-07-31T00:00:00Z", 4)
    assert client.get("/api/v1/promotions/NOPE", headers=operator).status_code == 404


def test_the_redemption_answers_its_rewards_and_care_sees_the_counter(
    rt: Runtime, client: TestClient, operator: dict[str, str]
) -> None:
    assert client.post("/api/v1/promotions", headers=operator, json=PLAN).status_code == 201
    care = bearer(factories.api_key(rt, "care"))
    answers = [
        client.post(
            "/api/v1/redemptions",
            headers=care,
            json={"msisdn": MSISDN, "pin": pin, "channel": "ussd"},
        ).json()
        for _, pin in factories.active_batch(rt, count=2)
    ]
    assert answers[0]["rewards"] == []
    (reward,) = answers[1]["rewards"]
    assert reward["promotion"] == "TALKFEST"
    assert [(c["balance_type"], c["amount"]) for c in reward["credits"]] == [("SMS", 180)]
    counters = client.get(f"/api/v1/subscribers/{MSISDN}/counters", headers=care)
    assert counters.status_code == 200
    (counter,) = counters.json()["items"]
    assert {k: counter[k] for k in ("promotion", "value", "target", "rewards", "running")} == {
        "promotion": "TALKFEST",
        "value": 2,
        "target": 2,
        "rewards": 1,
        "running": True,
    }
    ledger = client.get(f"/api/v1/subscribers/{MSISDN}/ledger", headers=care).json()["items"]
    assert [e["cause"] for e in ledger].count("reward") == 1
    unknown = client.get("/api/v1/subscribers/254799999999/counters", headers=care)
    assert unknown.status_code == 404


def test_a_campaign_scenario_shows_its_window_and_product_types(
    client: TestClient, operator: dict[str, str]
) -> None:
    regular = {"number": 1, "name": "10", "credits": [{"balance_type": "CASH", "amount": 1000}]}
    campaign = {
        "number": 2,
        "name": "Talk-Fest",
        "credits": [{"balance_type": "SMS", "amount": 180}],
        "valid_from": "2027-07-01T00:00:00+00:00",
        "valid_until": "2027-08-01T00:00:00+00:00",
        "product_types": ["GOLD"],
    }
    body = {"code": "FEST", "name": "Fest", "service_provider": "ACME"}
    created = client.post(
        "/api/v1/voucher-types", headers=operator, json={**body, "scenarios": [regular, campaign]}
    )
    assert created.status_code == 201, created.text
    shown = client.get("/api/v1/voucher-types/FEST/scenarios", headers=operator).json()["items"]
    assert "valid_from" not in shown[0]
    assert (shown[1]["valid_from"], shown[1]["valid_until"], shown[1]["product_types"]) == (
        "2027-07-01T00:00:00Z",
        "2027-08-01T00:00:00Z",
        ["GOLD"],
    )


def test_counters_of_a_malformed_number_answer_422(
    client: TestClient, operator: dict[str, str]
) -> None:
    answer = client.get("/api/v1/subscribers/not-a-number/counters", headers=operator)
    assert answer.status_code == 422
