"""The redemption family over HTTP: shapes of API.md, result codes on every answer."""

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.api.app import create_app
from voms.runtime import Runtime

MSISDN = "254700000001"


@pytest.fixture
def pins(rt: Runtime) -> list[tuple[str, str]]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return factories.active_batch(rt, count=4)


@pytest.fixture
def channel(rt: Runtime) -> dict[str, str]:
    return bearer(factories.api_key(rt, "channel"))


def test_a_redemption_answers_as_api_md_shows(
    client: TestClient, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    answer = client.post(
        "/api/v1/redemptions",
        headers=channel,
        json={"msisdn": "+254 700 000001", "pin": pin, "channel": "ussd", "request_id": "b7c1"},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert {k: body[k] for k in ("result_code", "result_text", "serial", "msisdn")} == {
        "result_code": 0,
        "result_text": "Success",
        "serial": serial,
        "msisdn": MSISDN,
    }
    assert body["credits"][0]["balance"] == 1000
    assert body["credits"][0]["expires_at"].endswith("+00:00")
    assert body["account_expires_at"].endswith("+00:00")
    assert (body["product_type"], body["rewards"], body["voucher_type"]) == ("GOLD", [], "TOPUP10")
    again = client.post(
        "/api/v1/redemptions",
        headers=channel,
        json={"msisdn": "+254 700 000001", "pin": pin, "channel": "ussd", "request_id": "b7c1"},
    )
    assert again.json() == body
    second = client.post(
        "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pin}
    )
    assert (second.status_code, second.json()["result_code"]) == (409, 2009)
    assert second.json()["result_text"] == "Voucher already redeemed"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (None, 400, 4006),
        (b"{not json", 400, 4006),
        (b"[1, 2]", 400, 4006),
        ({"msisdn": MSISDN}, 400, 4007),
        ({"msisdn": MSISDN, "pin": 12}, 400, 4001),
        ({"msisdn": MSISDN, "pin": {"a": 1}}, 400, 2002),
        ({"msisdn": MSISDN, "pin": "x" * 10_000}, 400, 2002),
        ({"msisdn": ["x"], "pin": "1"}, 400, 4006),
        ({"msisdn": MSISDN, "pin": "1", "channel": 5}, 400, 4008),
    ],
)
def test_malformed_bodies_still_get_a_result_code(
    client: TestClient,
    channel: dict[str, str],
    pins: list[tuple[str, str]],
    body: Any,
    status: int,
    code: int,
) -> None:
    for path in ("/api/v1/redemptions", "/api/v1/reservations"):
        if isinstance(body, bytes):
            answer = client.post(path, headers=channel, content=body)
        else:
            answer = client.post(path, headers=channel, json=body)
        assert (answer.status_code, answer.json()["result_code"]) == (status, code)
        assert answer.json()["result_text"]


def test_2008_lists_the_scenarios_to_choose_from(
    rt: Runtime, client: TestClient, channel: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    factories.voucher_type(
        rt,
        "BUNDLE",
        scenarios=[
            {
                "number": 1,
                "name": "10 SMS + 10 days",
                "credits": [
                    {"balance_type": "SMS", "amount": 10, "balance_expiry_extension_days": 10}
                ],
            },
            {"number": 2, "name": "1 KES", "credits": [{"balance_type": "CASH", "amount": 100}]},
        ],
    )
    [(_, pin)] = factories.active_batch(rt, "BUNDLE", count=1)
    answer = client.post(
        "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pin}
    )
    assert answer.status_code == 409
    body = answer.json()
    assert (body["result_code"], body["result_text"]) == (2008, "Scenario required")
    assert body["scenarios"][0]["credits"] == [
        {"balance_type": "SMS", "amount": 10, "balance_expiry_extension_days": 10}
    ]
    assert body["scenarios"][0]["account_expiry_extension_days"] == 0
    assert body["scenarios"][0]["new_product_type"] is None
    chosen = client.post(
        "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pin, "scenario": 1}
    )
    assert chosen.json()["credits"][0]["balance_type"] == "SMS"


def test_reserve_commit_and_revoke_over_http(
    client: TestClient, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    held = client.post(
        "/api/v1/reservations", headers=channel, json={"msisdn": MSISDN, "pin": pins[0][1]}
    ).json()
    assert held["result_code"] == 0
    assert held["credits"][0]["balance"] is None
    assert held["expires_at"].endswith("+00:00")
    committed = client.post(
        f"/api/v1/reservations/{held['reservation_id']}/commit", headers=channel
    )
    assert (committed.status_code, committed.json()["result_code"]) == (200, 0)
    late = client.post(f"/api/v1/reservations/{held['reservation_id']}/revoke", headers=channel)
    assert (late.status_code, late.json()["result_code"]) == (404, 2005)
    other = client.post(
        "/api/v1/reservations", headers=channel, json={"msisdn": MSISDN, "pin": pins[1][1]}
    ).json()
    revoked = client.post(
        f"/api/v1/reservations/{other['reservation_id']}/revoke",
        headers=channel,
        json={"request_id": "rv-1"},
    )
    assert revoked.json()["result_code"] == 0
    unknown = client.post("/api/v1/reservations/nope/commit", headers=channel, content=b"garbage")
    assert (unknown.status_code, unknown.json()["result_code"]) == (404, 2005)


def test_voucher_type_recharge_over_http(
    rt: Runtime, client: TestClient, pins: list[tuple[str, str]]
) -> None:
    channel = bearer(factories.api_key(rt, "channel", allow=("voucher-type-recharge",)))
    answer = client.post(
        "/api/v1/voucher-type-recharges",
        headers=channel,
        json={"msisdn": MSISDN, "voucher_type": "TOPUP10"},
    )
    assert answer.json()["result_code"] == 0
    assert "serial" not in answer.json()
    missing = client.post(
        "/api/v1/voucher-type-recharges", headers=channel, json={"msisdn": MSISDN}
    )
    assert (missing.status_code, missing.json()["result_code"]) == (404, 5005)


def test_who_may_redeem(
    rt: Runtime, client: TestClient, pins: list[tuple[str, str]], admin: dict[str, str]
) -> None:
    body = {"msisdn": MSISDN, "pin": pins[0][1]}
    assert client.post("/api/v1/redemptions", json=body).status_code == 401
    auditor = bearer(factories.api_key(rt, "auditor"))
    assert client.post("/api/v1/redemptions", headers=auditor, json=body).status_code == 403
    care = bearer(factories.api_key(rt, "care"))
    answer = client.post("/api/v1/redemptions", headers=care, json={**body, "channel": "care"})
    assert answer.json()["result_code"] == 0


def test_no_pin_in_any_answer_or_log(
    client: TestClient,
    channel: dict[str, str],
    pins: list[tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    pin = pins[0][1]
    texts = []
    for body in (
        {"msisdn": MSISDN, "pin": pin},
        {"msisdn": MSISDN, "pin": pin},
        {"msisdn": MSISDN, "pin": pin[:-1] + str((int(pin[-1]) + 1) % 10)},
        {"msisdn": "bad", "pin": pin},
        {"msisdn": MSISDN, "pin": pins[1][1], "serial": "1"},
    ):
        texts.append(client.post("/api/v1/redemptions", headers=channel, json=body).text)
    texts.append(client.get("/api/v1/transactions", headers=channel).text)
    assert all(pin[:-1] not in text and pins[1][1] not in text for text in texts)
    assert pin[:-1] not in caplog.text


def test_transactions_are_paged_newest_first_and_filtered(
    rt: Runtime, client: TestClient, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    care = bearer(factories.api_key(rt, "care"))
    for _, pin in pins:
        client.post("/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pin})
    client.post("/api/v1/redemptions", headers=channel, json={"msisdn": "254711111111"})
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/transactions", headers=care, params=params).json()
        seen += page["transactions"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5
    assert [row["at"] for row in seen] == sorted((row["at"] for row in seen), reverse=True)
    # Not a subscriber: 5001 whatever the PIN (here none) would have answered.
    assert seen[0]["result_code"] == 5001
    mine = client.get("/api/v1/transactions", headers=care, params={"msisdn": MSISDN}).json()
    assert len(mine["transactions"]) == 4
    assert mine["transactions"][0]["credits"][0]["amount"] == 1000
    by_serial = client.get(
        "/api/v1/transactions", headers=care, params={"serial": pins[0][0]}
    ).json()["transactions"]
    assert [(row["serial"], row["channel"]) for row in by_serial] == [(pins[0][0], "rest")]
    oldest = seen[-1]["at"]
    since = client.get("/api/v1/transactions", headers=care, params={"since": oldest}).json()
    assert len(since["transactions"]) == 5
    until = client.get("/api/v1/transactions", headers=care, params={"until": oldest}).json()
    assert until["transactions"] == []
    bad = client.get("/api/v1/transactions", headers=care, params={"cursor": "%%%"})
    assert bad.status_code == 422
    assert client.get("/api/v1/transactions", headers=channel).status_code == 403


def test_a_scoped_key_sees_only_its_providers_transactions(
    rt: Runtime, client: TestClient, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    client.post("/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pins[0][1]})
    factories.service_provider(rt, "OTHER")
    other = bearer(factories.api_key(rt, "care", sp="OTHER"))
    acme = bearer(factories.api_key(rt, "care", sp="ACME"))
    assert client.get("/api/v1/transactions", headers=other).json()["transactions"] == []
    assert len(client.get("/api/v1/transactions", headers=acme).json()["transactions"]) == 1


def test_the_busiest_calls_skip_routing_and_answer_the_same(
    rt: Runtime,
    client: TestClient,
    channel: dict[str, str],
    pins: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /redemptions, /reservations and /voucher-type-recharges go straight to their
    endpoints (voms.api.app.App): with FastAPI's own stack broken they still answer, with
    their metrics and error handlers; every other call goes through that stack."""
    app: Any = client.app
    counted = (
        ("/api/v1/redemptions", "200"),
        ("/api/v1/redemptions", "409"),
        ("/api/v1/reservations", "200"),
    )
    before = [_requests_counted(client, *each) for each in counted]

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("went through FastAPI's routing")

    monkeypatch.setattr(app, "middleware_stack", broken)
    body = {"msisdn": MSISDN, "pin": pins[0][1]}
    assert client.post("/api/v1/redemptions", headers=channel, json=body).json()["result_code"] == 0
    held = client.post("/api/v1/reservations", headers=channel, json={**body, "pin": pins[1][1]})
    assert held.json()["result_code"] == 0
    recharge = {"msisdn": MSISDN, "voucher_type": "TOPUP10"}
    admin = bearer(factories.api_key(rt, "admin"))
    answer = client.post("/api/v1/voucher-type-recharges", headers=admin, json=recharge)
    assert answer.json()["result_code"] == 0
    # The exception handlers: 401 with its challenge, result codes, 413 for a huge body.
    anonymous = client.post("/api/v1/redemptions", json=body)
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")
    taken = client.post("/api/v1/redemptions", headers=channel, json=body)
    assert (taken.status_code, taken.json()["result_code"]) == (409, 2009)
    huge = client.post("/api/v1/redemptions", headers=channel, content=b" " * (65 * 1024))
    assert (huge.status_code, huge.json()) == (413, {"detail": "request body larger than 64 KiB"})
    assert client.get("/healthz").status_code == 500  # the client does not raise
    monkeypatch.undo()
    after = [_requests_counted(client, *each) for each in counted]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


def _requests_counted(client: TestClient, route: str, status: str) -> float:
    series = f'voms_http_requests_total{{method="POST",route="{route}",status="{status}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series):
            return float(line.removeprefix(series))
    return 0.0


def test_an_unexpected_error_in_a_busy_call_is_a_clean_500(
    client: TestClient,
    channel: dict[str, str],
    pins: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from voms.services import redemption

    def failing(*args: object) -> None:
        raise RuntimeError(f"boom with {pins[0][1]}")

    monkeypatch.setattr(redemption, "redeem", failing)
    answer = client.post(
        "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pins[0][1]}
    )
    assert (answer.status_code, answer.json()["result_code"]) == (500, 3000)
    assert pins[0][1] not in answer.text
    assert pins[0][1] not in caplog.text
    assert "unhandled error on POST /api/v1/redemptions: RuntimeError" in caplog.text


def test_the_redemption_threads_keep_their_connections_until_the_app_stops(
    rt: Runtime, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    rt.settings = rt.settings.model_copy(update={"redemption_threads": 1})
    pool: Any = rt.engine.pool
    with TestClient(create_app(rt)) as client:
        for _, pin in pins[:3]:
            answer = client.post(
                "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": pin}
            )
            assert answer.json()["result_code"] == 0
            assert pool.checkedout() == 1  # kept by the one redemption thread
    assert pool.checkedout() == 0
