"""Redemption policy through the REST API and a subscriber channel (USSD): recharge
limits (5008), account states (5010, 5002), default scenarios."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from tests import factories
from tests.api.conftest import bearer
from tests.api.test_ussd_channel import SECRET, Phone
from tests.channel_support import MSISDN, OTHER, Shop, app_client, balance
from tests.channel_support import shop_fixture as shop_fixture
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime


@pytest.fixture
def app(rt: Runtime, shop: Shop) -> Iterator[TestClient]:
    with app_client(rt, ussd_secret=SECRET) as client:
        yield client


def set_account(rt: Runtime, msisdn: str = MSISDN, **values: Any) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(t.subscribers).where(t.subscribers.c.msisdn == msisdn).values(**values))


def redeem(app: TestClient, key: dict[str, str], pin: str, **fields: Any) -> Any:
    return app.post(
        "/api/v1/redemptions", headers=key, json={"msisdn": MSISDN, "pin": pin, **fields}
    )


def test_limits_are_set_by_patch_and_answered_with_5008(
    rt: Runtime, app: TestClient, shop: Shop
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    operator = bearer(factories.api_key(rt, "operator", "ACME"))
    care = bearer(factories.api_key(rt, "care"))
    patch = {"recharge_limits": {"max_per_day": 1, "max_value_per_day": {"CASH": 5000}}}
    assert app.patch("/api/v1/service-providers/ACME", headers=care, json=patch).status_code == 403
    bad = {"recharge_limits": {"max_per_day": -1}}
    answer = app.patch("/api/v1/service-providers/ACME", headers=operator, json=bad)
    assert answer.status_code == 422
    unknown = {"recharge_limits": {"max_value_per_day": {"NOPE": 1}}}
    answer = app.patch("/api/v1/service-providers/ACME", headers=operator, json=unknown)
    assert answer.status_code == 404
    assert "NOPE" in answer.json()["detail"]
    answer = app.patch("/api/v1/service-providers/ACME", headers=operator, json=patch)
    assert answer.status_code == 200
    assert answer.json()["recharge_limits"] == patch["recharge_limits"]
    shown = app.get("/api/v1/service-providers/ACME", headers=admin).json()
    assert shown["recharge_limits"] == patch["recharge_limits"]

    assert redeem(app, admin, shop.pins[0]).json()["result_code"] == 0
    refused = redeem(app, admin, shop.pins[1])
    assert refused.status_code == 409
    assert refused.json()["result_code"] == 5008
    assert refused.json()["result_text"] == "Recharge limit reached"
    # The subscriber on USSD is told so, and nothing is credited.
    phone = Phone(app)
    phone.dial()
    phone.step("1")
    assert phone.step(shop.pins[2]) == (
        "END Recharge limit reached for this number. Try again later."
    )
    assert balance(rt) == 1000
    merged = {"recharge_limits": {"max_per_day": None}}
    answer = app.patch("/api/v1/service-providers/ACME", headers=operator, json=merged)
    assert answer.json()["recharge_limits"] == {"max_value_per_day": {"CASH": 5000}}
    assert redeem(app, admin, shop.pins[1]).json()["result_code"] == 0


def test_a_frozen_account_answers_5010_and_a_suspended_one_5002(
    rt: Runtime, app: TestClient, shop: Shop
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    set_account(rt, state="frozen")
    frozen = redeem(app, admin, shop.pins[0])
    assert (frozen.status_code, frozen.json()["result_code"]) == (409, 5010)
    assert frozen.json()["result_text"] == "Subscriber account frozen"
    phone = Phone(app)
    phone.dial()
    phone.step("1")
    assert phone.step(shop.pins[0]) == "END This account is frozen. Please call customer care."
    set_account(rt, state="suspended")
    assert redeem(app, admin, shop.pins[0]).json()["result_code"] == 5002
    # Expired within the grace period: revived by the recharge.
    set_account(rt, state="expired", account_expires_at=utcnow() - timedelta(days=2))
    assert redeem(app, admin, shop.pins[0]).json()["result_code"] == 0
    subscriber = app.get(f"/api/v1/subscribers/{MSISDN}", headers=admin).json()
    assert subscriber["state"] == "active"
    set_account(rt, OTHER, account_expires_at=utcnow() - timedelta(days=90))
    assert redeem(app, admin, shop.pins[1], msisdn=OTHER).json()["result_code"] == 5002


def test_default_scenarios_through_the_api(rt: Runtime, app: TestClient, shop: Shop) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    # BUNDLE has two offers and no default: a recharge without a scenario must choose.
    body = {"msisdn": MSISDN, "voucher_type": "BUNDLE"}
    answer = app.post("/api/v1/voucher-type-recharges", headers=admin, json=body)
    assert answer.json()["result_code"] == 2008
    scenarios = app.get("/api/v1/voucher-types/BUNDLE", headers=admin).json()["scenarios"]
    scenarios[1]["default"] = True
    changed = app.patch(
        "/api/v1/voucher-types/BUNDLE",
        headers=admin,
        json={"scenarios": scenarios, "scenario_selection": "default"},
    )
    assert changed.status_code == 200
    assert changed.json()["scenario_selection"] == "default"
    rt.caches["voucher_types"].clear()  # (another process: within the cache's seconds)
    answer = app.post("/api/v1/voucher-type-recharges", headers=admin, json=body)
    assert (answer.json()["result_code"], answer.json()["scenario"]) == (0, 2)
    redeemed = redeem(app, admin, shop.bundle_pins[0])
    assert (redeemed.json()["result_code"], redeemed.json()["scenario"]) == (0, 2)
    wrong = app.patch(
        "/api/v1/voucher-types/BUNDLE", headers=admin, json={"scenario_selection": "always"}
    )
    assert wrong.status_code == 422
