"""What care sees of a voucher: its failed attempts, not only its redemption."""

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    app_client,
    shop_fixture,  # noqa: F401 (the shop fixture)
)
from voms.runtime import Runtime
from voms.services.care import ATTEMPTS_SHOWN


@pytest.fixture
def care(rt: Runtime, shop: Shop) -> dict[str, str]:
    return bearer(factories.api_key(rt, "care"))


def test_the_voucher_shows_who_tried_it_when_through_which_channel_and_why_it_failed(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str]
) -> None:
    gateway = bearer(factories.api_key(rt, "channel", name="ussd-gateway"))
    serial, pin = shop.serials[0], shop.pins[0]
    ok = client.post("/api/v1/redemptions", headers=gateway, json={"msisdn": MSISDN, "pin": pin})
    assert ok.json()["result_code"] == 0
    late = client.post(
        "/api/v1/redemptions",
        headers=gateway,
        json={"msisdn": OTHER, "pin": pin, "channel": "ussd"},
    ).json()
    with app_client(rt) as web:
        web.post("/m", data={"msisdn": MSISDN, "pin": pin})

    voucher = client.get(f"/api/v1/vouchers/{serial}", headers=care).json()
    attempts = voucher["failed_attempts"]
    assert attempts["next_cursor"] is None
    assert [
        (a["channel"], a["actor"], a["msisdn"], a["result_code"], a["result_text"])
        for a in attempts["items"]
    ] == [
        ("web", "web", MSISDN, 2009, "Voucher already redeemed"),
        ("ussd", "ussd-gateway", OTHER, 2009, "Voucher already redeemed"),
    ]
    assert attempts["items"][1]["transaction_id"] == late["transaction_id"]
    assert attempts["items"][0]["at"] >= attempts["items"][1]["at"]
    by_pin = client.post("/api/v1/vouchers/lookup", headers=care, json={"pin": pin}).json()
    assert by_pin["failed_attempts"] == attempts
    assert [h["action"] for h in voucher["history"]][-1] == "redemption"


def test_many_attempts_are_shown_a_page_at_a_time(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str]
) -> None:
    serial, pin = shop.serials[1], shop.pins[1]
    operator = bearer(factories.api_key(rt, "operator"))
    frozen = client.post(
        "/api/v1/vouchers/freeze",
        headers=operator,
        json={"serial_from": serial, "reason": "stolen"},
    )
    assert frozen.status_code == 200
    channel = bearer(factories.api_key(rt, "channel"))
    made = [
        client.post(
            "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pin}
        ).json()["transaction_id"]
        for _ in range(ATTEMPTS_SHOWN + 3)
    ]
    shown = client.get(f"/api/v1/vouchers/{serial}", headers=care).json()["failed_attempts"]
    assert len(shown["items"]) == ATTEMPTS_SHOWN
    assert {a["result_code"] for a in shown["items"]} == {2012}
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = client.get(f"/api/v1/vouchers/{serial}/attempts", headers=care, params=params)
        assert page.status_code == 200
        seen += [a["transaction_id"] for a in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)
    assert len(set(seen)) == len(made)
    assert seen[:ATTEMPTS_SHOWN] == [a["transaction_id"] for a in shown["items"]]


def test_attempts_are_for_lookup_roles_of_the_vouchers_provider(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str]
) -> None:
    serial = shop.serials[0]
    channel = bearer(factories.api_key(rt, "channel"))
    factories.standard_catalog(rt, "BETA")
    beta = bearer(factories.api_key(rt, "care", "BETA"))
    url = f"/api/v1/vouchers/{serial}/attempts"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=channel, params={"limit": 5000}).status_code == 403
    assert client.get(url, headers=care, params={"limit": 5000}).status_code == 422
    assert client.get(url, headers=care, params={"cursor": "nope"}).status_code == 422
    assert client.get(url, headers=beta).status_code == 404
    assert client.get("/api/v1/vouchers/999999999999/attempts", headers=care).status_code == 404
    assert client.get(url, headers=care).json() == {"items": [], "next_cursor": None}
