"""Blacklist care over HTTP (API.md "Blacklist"): view, block by hand, release."""

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests import factories
from tests.api.conftest import bearer
from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    app_client,
    bad_check_digit,
    balance,
    configure,
    shop_fixture,  # noqa: F401 (the shop fixture)
)
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.runtime import Runtime
from voms.services import redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest


@pytest.fixture
def care(rt: Runtime, shop: Shop) -> dict[str, str]:
    return bearer(factories.api_key(rt, "care"))


@pytest.fixture
def channel(rt: Runtime, shop: Shop) -> dict[str, str]:
    return bearer(factories.api_key(rt, "channel"))


def _redeem(client: TestClient, channel: dict[str, str], pin: str, msisdn: str = MSISDN) -> int:
    # A USSD gateway's request: the network vouches for the MSISDN, so bad PINs count
    # against it (on REST's own channel they count against the caller: SECURITY.md).
    answer = client.post(
        "/api/v1/redemptions",
        headers=channel,
        json={"msisdn": msisdn, "pin": pin, "channel": "ussd"},
    )
    return int(answer.json()["result_code"])


def _redeem_by_ussd(rt: Runtime, pin: str) -> int:
    try:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin, channel="ussd"))
    except ResultError as error:
        return error.result.code
    return 0


def test_a_block_by_hand_is_honoured_by_the_api_and_the_channels_until_released(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str], channel: dict[str, str]
) -> None:
    blocked = client.post(
        "/api/v1/blacklist",
        headers=care,
        json={"msisdn": "+254 700 000001", "reason": "fraud report 17"},
    )
    assert blocked.status_code == 201, blocked.text
    entry = blocked.json()
    assert (entry["msisdn"], entry["reason"], entry["until"], entry["failures"]) == (
        MSISDN,
        "manual",
        None,
        0,
    )
    assert (entry["note"], entry["blocked_by"]) == ("fraud report 17", "care-all")
    assert _redeem(client, channel, shop.pins[0]) == 5003
    with app_client(rt) as web:
        page = web.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[0]})
    assert "Too many wrong PINs" in page.text  # the mobile page's text for 5003
    assert _redeem(client, channel, shop.pins[0], OTHER) == 0  # only that number

    listed = client.get("/api/v1/blacklist", headers=care).json()
    assert [(i["msisdn"], i["reason"]) for i in listed["items"]] == [(MSISDN, "manual")]
    assert listed["next_cursor"] is None

    released = client.delete(f"/api/v1/blacklist/{MSISDN}", headers=care)
    assert released.status_code == 200
    assert released.json()["was_blocked"] is True
    assert client.get("/api/v1/blacklist", headers=care).json()["items"] == []
    assert _redeem(client, channel, shop.pins[1]) == 0
    assert balance(rt) == 1000
    with rt.engine.connect() as conn:
        actions = conn.execute(
            select(t.audit_log.c.action, t.audit_log.c.object_id).where(
                t.audit_log.c.action.like("blacklist.%")
            )
        ).all()
    assert sorted(actions) == [("blacklist.block", MSISDN), ("blacklist.release", MSISDN)]


def test_bad_pins_show_as_such_and_a_release_counts_from_zero_again(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str], channel: dict[str, str]
) -> None:
    configure(rt, max_bad_pin_attempts=3)
    wrong = bad_check_digit(shop.pins[0])
    # Bad PINs blacklist a number on a channel where the network gives it (USSD); typed
    # in a REST call they count against the caller (issue 14).
    assert [_redeem_by_ussd(rt, wrong) for _ in range(4)] == [2002, 2002, 2002, 5003]
    (entry,) = client.get("/api/v1/blacklist", headers=care, params={"msisdn": MSISDN}).json()[
        "items"
    ]
    assert (entry["reason"], entry["failures"], entry["note"]) == ("bad_pins", 3, None)
    assert entry["until"] is not None
    assert client.delete(f"/api/v1/blacklist/{MSISDN}", headers=care).status_code == 200
    # Two more bad PINs do not blacklist again: the count started at 0.
    assert [_redeem_by_ussd(rt, wrong) for _ in range(2)] == [2002, 2002]
    assert _redeem(client, channel, shop.pins[0]) == 0


def test_a_block_until_a_time_ends_by_itself(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str], channel: dict[str, str]
) -> None:
    until = utcnow() + timedelta(hours=2)
    entry = client.post(
        "/api/v1/blacklist",
        headers=care,
        json={"msisdn": MSISDN, "reason": "cooling off", "until": until.isoformat()},
    ).json()
    assert entry["reason"] == "manual"
    assert abs((entry_until(entry) - until).total_seconds()) < 0.001
    assert _redeem(client, channel, shop.pins[0]) == 5003
    with rt.engine.begin() as conn:  # two hours later
        conn.execute(
            t.pin_attempts.update().values(
                blacklisted_until=utcnow() - timedelta(seconds=1),
                manual_until=utcnow() - timedelta(seconds=1),
            )
        )
    assert client.get("/api/v1/blacklist", headers=care).json()["items"] == []
    assert _redeem(client, channel, shop.pins[0]) == 0


def entry_until(entry: dict[str, str]) -> datetime:
    return datetime.fromisoformat(entry["until"])


def test_who_may_care_for_the_blacklist(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str], channel: dict[str, str]
) -> None:
    factories.standard_catalog(rt, "BETA")
    factories.subscriber(rt, "254711000001", sp="BETA")
    beta_care = bearer(factories.api_key(rt, "care", "BETA"))
    operator = bearer(factories.api_key(rt, "operator"))
    admin = bearer(factories.api_key(rt, "admin"))
    bad = {"msisdn": 5, "reason": ""}
    for who, expected in ((None, 401), (channel, 403), (operator, 403)):
        headers = who or {}
        assert client.get("/api/v1/blacklist", headers=headers).status_code == expected
        assert client.post("/api/v1/blacklist", headers=headers, json=bad).status_code == expected
        assert (
            client.post("/api/v1/blacklist", headers=headers, content=b"{nope").status_code
            == expected
        )
        assert client.delete(f"/api/v1/blacklist/{MSISDN}", headers=headers).status_code == expected
        assert (
            client.get("/api/v1/blacklist", headers=headers, params={"limit": 5000}).status_code
            == expected
        )
    assert client.post("/api/v1/blacklist", headers=care, json=bad).status_code == 422
    assert client.post("/api/v1/blacklist", headers=care, content=b"{nope").status_code == 422
    past = {"msisdn": MSISDN, "reason": "x", "until": "2020-01-01T00:00:00+00:00"}
    assert client.post("/api/v1/blacklist", headers=care, json=past).status_code == 422
    naive = {"msisdn": MSISDN, "reason": "x", "until": "2099-01-01T00:00:00"}
    assert client.post("/api/v1/blacklist", headers=care, json=naive).status_code == 422
    assert client.get("/api/v1/blacklist", headers=care, params={"limit": 1001}).status_code == 422
    assert client.delete(f"/api/v1/blacklist/{MSISDN}", headers=care).status_code == 404

    # A key scoped to BETA sees and changes only BETA's subscribers.
    block = {"msisdn": MSISDN, "reason": "by the wrong provider"}
    assert client.post("/api/v1/blacklist", headers=beta_care, json=block).status_code == 403
    for number, who in ((MSISDN, admin), ("254711000001", beta_care)):
        assert (
            client.post(
                "/api/v1/blacklist", headers=who, json={"msisdn": number, "reason": "x"}
            ).status_code
            == 201
        )
    seen = client.get("/api/v1/blacklist", headers=beta_care).json()["items"]
    assert [i["msisdn"] for i in seen] == ["254711000001"]
    assert client.delete(f"/api/v1/blacklist/{MSISDN}", headers=beta_care).status_code == 403
    everyone = client.get("/api/v1/blacklist", headers=care, params={"limit": 1}).json()
    assert len(everyone["items"]) == 1
    assert everyone["next_cursor"] is not None
    rest = client.get(
        "/api/v1/blacklist", headers=care, params={"limit": 1, "cursor": everyone["next_cursor"]}
    ).json()
    assert {everyone["items"][0]["msisdn"], rest["items"][0]["msisdn"]} == {
        MSISDN,
        "254711000001",
    }
    assert rest["next_cursor"] is None
    assert client.get("/api/v1/blacklist", headers=care, params={"cursor": "zz"}).status_code == 422


def test_blocks_at_the_same_time_leave_one_entry(
    rt: Runtime, client: TestClient, shop: Shop, care: dict[str, str]
) -> None:
    def block(n: int) -> int:
        body = {"msisdn": MSISDN, "reason": f"report {n}"}
        return client.post("/api/v1/blacklist", headers=care, json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(block, range(16))) == {201}
    items = client.get("/api/v1/blacklist", headers=care).json()["items"]
    assert [i["msisdn"] for i in items] == [MSISDN]


def test_the_calls_that_read_their_body_themselves_still_describe_it(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, field in (
        ("/api/v1/blacklist", "msisdn"),
        ("/api/v1/transactions/{transaction_id}/reversal", "reactivate_voucher"),
        ("/api/v1/vouchers/activate", "serial_from"),
        ("/api/v1/vouchers/amend", "expires_at"),
    ):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"], path
