"""Issue 14's holes, one test each (each failed before its fix): keys, minting credit,
bodies read before the key, 500s from bad input, PINs in clear, idempotent catalog."""

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests import factories
from tests.api.conftest import bearer
from voms.db import tables as t
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime
from voms.services import overview
from voms.services.auth import CONSOLE
from voms.serving import TokenBuckets

MSISDN = "254700000001"


@pytest.fixture
def shop(rt: Runtime) -> list[tuple[str, str]]:
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "OTHER")
    factories.subscriber(rt, MSISDN)
    return factories.active_batch(rt, count=3)


# --- 1. privilege escalation ------------------------------------------------------------


def test_a_scoped_admin_key_cannot_revoke_unscoped_keys(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    root = bearer(factories.api_key(rt, "admin", name="root"))
    scoped = bearer(factories.api_key(rt, "admin", "ACME", name="acme-admin"))
    factories.api_key(rt, "care", "OTHER", name="other-care")
    assert client.delete("/api/v1/api-keys/root", headers=scoped).status_code == 403
    assert client.delete("/api/v1/api-keys/other-care", headers=scoped).status_code == 403
    assert client.get("/api/v1/service-providers", headers=root).status_code == 200


def test_the_last_unscoped_admin_key_cannot_be_revoked(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    root = bearer(factories.api_key(rt, "admin", name="root"))
    refused = client.delete("/api/v1/api-keys/root", headers=root)
    assert refused.status_code == 409
    assert "last unscoped admin key" in refused.json()["detail"]
    factories.api_key(rt, "admin", name="second")
    assert client.delete("/api/v1/api-keys/root", headers=root).status_code == 204


# --- 4. minting credit ------------------------------------------------------------------


@pytest.mark.parametrize("role", ["channel", "care"])
def test_voucher_type_recharges_need_the_right_given_by_name(
    rt: Runtime, client: TestClient, shop: Any, role: str
) -> None:
    body = {"msisdn": MSISDN, "voucher_type": "TOPUP10"}
    plain = bearer(factories.api_key(rt, role))
    assert (
        client.post("/api/v1/voucher-type-recharges", headers=plain, json=body).status_code == 403
    )
    given = bearer(factories.api_key(rt, role, allow=("voucher-type-recharge",)))
    answer = client.post("/api/v1/voucher-type-recharges", headers=given, json=body)
    assert answer.json()["result_code"] == 0
    keys = client.get("/api/v1/api-keys", headers=bearer(factories.api_key(rt, "admin")))
    assert {k["name"]: k["allow"] for k in keys.json()["items"]}[
        f"{role}-all+voucher-type-recharge"
    ] == ["voucher-type-recharge"]


# --- 6. bodies read before the key -------------------------------------------------------


def _send(app: Any, path: str, headers: dict[str, str], chunks: int) -> tuple[int, int]:
    """POST an endless body of 64 KiB chunks straight to the ASGI app: (status, chunks read)."""
    read = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": read < chunks}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-type", b"application/json")],
        "client": ("203.0.113.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    return status, read


@pytest.mark.parametrize("path", ["/api/v1/batches", "/api/v1/redemptions"])
def test_a_huge_body_without_a_key_is_refused_before_it_is_read(
    rt: Runtime, client: TestClient, path: str
) -> None:
    assert _send(client.app, path, {}, chunks=3200) == (401, 0)  # 200 MB offered


def test_a_body_over_the_cap_is_refused_after_the_key_without_reading_it_all(
    rt: Runtime, client: TestClient
) -> None:
    admin = {"Authorization": f"Bearer {factories.api_key(rt, 'admin')}"}
    status, read = _send(client.app, "/api/v1/batches", admin, chunks=3200)
    assert status == 413
    assert read <= 2


def test_a_key_without_the_role_gets_403_whatever_the_body(rt: Runtime, client: TestClient) -> None:
    channel = bearer(factories.api_key(rt, "channel"))
    for body in ("{not json", "[" * 5000, '{"voucher_type": 1}'):
        answer = client.post(
            "/api/v1/batches",
            headers={**channel, "content-type": "application/json"},
            content=body,
        )
        assert answer.status_code == 403


def test_scope_and_existence_come_before_the_body(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    other = bearer(factories.api_key(rt, "admin", "OTHER"))
    batch_id = client.get("/api/v1/batches", headers=admin).json()["items"][0]["batch_id"]
    for body in ("{not json", '{"reason": 12, "junk": 1}', "[" * 5000):
        sent = {"content": body, "headers": {"content-type": "application/json"}}
        # another provider's admin: 403 whatever the body
        answer = client.post(
            f"/api/v1/batches/{batch_id}/freeze",
            **{**sent, "headers": {**sent["headers"], **other}},
        )
        assert answer.status_code == 403, (body[:20], answer.text)
        # no such batch: 404 before the body is looked at
        answer = client.post(
            "/api/v1/batches/99999/freeze", **{**sent, "headers": {**sent["headers"], **admin}}
        )
        assert answer.status_code == 404, (body[:20], answer.text)
    # the object's own provider with a bad body: now the body's 422
    answer = client.patch(
        f"/api/v1/batches/{batch_id}", headers=admin, json={"expires_at": "someday"}
    )
    assert answer.status_code == 422
    # a NUL in the path of a write is refused before any lookup
    answer = client.patch("/api/v1/service-providers/AC%00ME", headers=admin, json={"name": "N"})
    assert answer.status_code == 422


# --- 7. 500s from bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/transactions?serial=" + "1" * 30,
        "/api/v1/batches?cursor=%C2%B9",
        "/api/v1/batches?cursor=" + "9" * 40,
        "/api/v1/housekeeping/runs?cursor=" + "9" * 40,
        "/api/v1/housekeeping/runs/" + "9" * 30,
        "/api/v1/service-providers/AC%00ME",
        "/api/v1/transactions?msisdn=2547%0000",
        "/api/v1/audit?limit=" + "9" * 30,
    ],
)
def test_bad_input_in_paths_and_queries_is_refused_never_a_500(
    rt: Runtime, client: TestClient, shop: Any, url: str
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    answer = client.get(url, headers=admin)
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], list)


def test_nul_characters_and_deep_nesting_in_bodies_are_refused(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    admin = {**bearer(factories.api_key(rt, "admin")), "content-type": "application/json"}
    nul = client.post(
        "/api/v1/service-providers", headers=admin, content='{"code": "X\\u0000", "name": "n"}'
    )
    assert nul.status_code == 422
    deep = client.post("/api/v1/redemptions", headers=admin, content="[" * 5000 + "]" * 5000)
    assert deep.json()["result_code"] == 4006  # not JSON that any request has: an empty one
    with_nul = {"msisdn": MSISDN, "pin": shop[0][1], "request_id": "r\u0000"}
    assert client.post("/api/v1/redemptions", headers=admin, json=with_nul).status_code == 400


def test_expiries_at_the_end_of_the_calendar_do_not_break_later_redemptions(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    far = {"msisdn": "254700000002", "service_provider": "ACME", "product_type": "GOLD"}
    far["account_expires_at"] = "9999-12-31T00:00:00+00:00"
    assert client.post("/api/v1/subscribers", headers=admin, json=far).status_code == 201
    body = {"msisdn": "254700000002", "pin": shop[0][1]}
    answer = client.post("/api/v1/redemptions", headers=admin, json=body)
    assert answer.json()["result_code"] == 0
    assert answer.json()["account_expires_at"].startswith("9999-12-31")


# --- 8. a PIN in clear -------------------------------------------------------------------


def test_a_pin_typed_as_the_msisdn_is_stored_masked(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    channel = bearer(factories.api_key(rt, "channel"))
    pin = shop[0][1]
    body = {"msisdn": pin, "pin": pin, "channel": "ussd"}
    answer = client.post("/api/v1/redemptions", headers=channel, json=body)
    assert answer.json()["result_code"] == 5001
    with rt.engine.connect() as conn:
        stored = conn.execute(
            select(t.transactions.c.msisdn, t.transactions.c.recipient_msisdn)
        ).all()
    assert stored == [("*" * 12 + pin[-2:], "*" * 12 + pin[-2:])]


def test_an_unknown_subscriber_gets_5001_whatever_the_pin(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    """A valid PIN and a wrong one answer alike for a number that is no subscriber; the
    valid voucher is not used."""
    channel = bearer(factories.api_key(rt, "channel"))
    stranger = "254799999999"
    wrong = with_check_digit("1234567890123")
    for pin in (shop[0][1], wrong, ""):
        answer = client.post(
            "/api/v1/redemptions", headers=channel, json={"msisdn": stranger, "pin": pin}
        )
        assert answer.json()["result_code"] == 5001
    mine = client.post(
        "/api/v1/redemptions", headers=channel, json={"msisdn": MSISDN, "pin": shop[0][1]}
    )
    assert mine.json()["result_code"] == 0


# --- 9. hygiene ---------------------------------------------------------------------------


def test_invalid_keys_are_throttled_per_client(rt: Runtime, client: TestClient) -> None:
    client.app.state.invalid_keys = TokenBuckets(3 / 60, 3)  # type: ignore[attr-defined]
    statuses = [
        client.get("/api/v1/batches", headers=bearer(f"voms_guess{n}")).status_code
        for n in range(5)
    ]
    assert statuses == [401, 401, 401, 429, 429]


def test_a_catalog_code_cannot_start_like_a_spreadsheet_formula(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    for code in ("-1+1", "=SUM", "+1", "@A1"):
        body = {"code": code, "name": "n", "service_provider": "ACME"}
        assert client.post("/api/v1/product-types", headers=admin, json=body).status_code == 422


# --- 10. the contract: idempotent catalog creation -------------------------------------------


def test_creating_a_catalog_object_again_is_idempotent_or_names_what_differs(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    same = client.post(
        "/api/v1/service-providers", headers=admin, json={"code": "ACME", "name": "ACME Mobile"}
    )
    assert (same.status_code, same.json()["code"]) == (200, "ACME")
    other = client.post(
        "/api/v1/service-providers", headers=admin, json={"code": "ACME", "name": "Else"}
    )
    assert other.status_code == 409
    assert "name" in other.json()["detail"]
    vt = client.get("/api/v1/voucher-types/TOPUP10", headers=admin).json()
    body = {k: vt[k] for k in ("code", "name", "service_provider", "pin_length", "scenarios")}
    assert client.post("/api/v1/voucher-types", headers=admin, json=body).status_code == 200
    body["pin_length"] = 16
    changed = client.post("/api/v1/voucher-types", headers=admin, json=body)
    assert changed.status_code == 409
    assert "pin_length" in changed.json()["detail"]


def test_generating_vouchers_with_pins_too_short_for_the_budget_warns(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    admin = bearer(factories.api_key(rt, "admin"))
    factories.voucher_type(rt, "SHORT", pin_length=8)
    short = client.post(
        "/api/v1/batches", headers=admin, json={"voucher_type": "SHORT", "count": 50}
    )
    assert short.status_code == 201
    assert "PINs of 8 digits" in short.json()["warnings"][0]
    long = client.post(
        "/api/v1/batches", headers=admin, json={"voucher_type": "TOPUP10", "count": 5}
    )
    assert long.json()["warnings"] == []


def test_a_patch_cannot_null_a_required_field(rt: Runtime, client: TestClient, shop: Any) -> None:
    """Found by schemathesis: {"name": null} reached the database (500)."""
    admin = bearer(factories.api_key(rt, "admin"))
    answer = client.patch("/api/v1/balance-types/ACME/CASH", headers=admin, json={"name": None})
    assert answer.status_code == 422
    cleared = client.patch(
        "/api/v1/balance-types/ACME/CASH", headers=admin, json={"max_balance": None}
    )
    assert cleared.status_code == 200


def test_a_jump_in_failed_lookups_raises_the_guessing_alert_once(
    rt: Runtime, client: TestClient, shop: Any
) -> None:
    rt.settings = rt.settings.model_copy(
        update={
            "lookup_failure_alert_minimum": 4,
            "lookup_failure_alert_factor": 3.0,
            "max_bad_pin_attempts": 100,
        }
    )
    gateway = bearer(factories.api_key(rt, "channel", "ACME"))
    admin = bearer(factories.api_key(rt, "admin"))

    def alerts() -> list[str]:
        found = client.get("/api/v1/audit?action=guessing.alert", headers=admin).json()
        return sorted(entry["object_id"].split(":")[0] for entry in found["items"])

    for n in range(7):
        answer = client.post(
            "/api/v1/redemptions",
            headers=gateway,
            json={"msisdn": MSISDN, "pin": with_check_digit(f"{n:013d}"), "channel": "ussd"},
        )
        assert answer.json()["result_code"] == 2004
        # three failures in a minute are no jump; the fourth is, for the key and for
        # the provider, each alerted once
        assert alerts() == (["key", "sp"] if n >= 3 else []), n
    assert any("PIN-guessing" in line for line in overview.overview(rt, CONSOLE)["alerts"])
