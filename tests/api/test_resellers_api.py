"""Resellers and electronic PIN sales through the HTTP app: order of refusals (401, 403,
404, 422), subtree scope, statements in three formats, and no 500 on bad input."""

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from tests import factories
from tests.api.conftest import bearer
from tests.reseller_support import reseller, stocked_reseller
from voms.runtime import Runtime
from voms.services import auth
from voms.services.auth import CONSOLE


@pytest.fixture
def stocked(rt: Runtime) -> list[str]:
    found = stocked_reseller(rt)
    reseller(rt, "SHOP", parent="DIST")
    reseller(rt, "RIVAL")
    return found


def reseller_key(rt: Runtime, code: str) -> dict[str, str]:
    _, secret = auth.create_api_key(
        rt, CONSOLE, name=f"key-{code}", role="distributor", reseller=code
    )
    return bearer(secret)


def sale(client: TestClient, who: dict[str, str], **fields: Any) -> Any:
    body = {"voucher_type": "TOPUP10", "count": 1, "request_id": "r-1", **fields}
    return client.post("/api/v1/sales", json=body, headers=who)


def test_a_sale_answers_its_pins_once_per_request_id(
    client: TestClient, rt: Runtime, stocked: list[str]
) -> None:
    dist = reseller_key(rt, "DIST")
    first = sale(client, dist, count=2)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["reseller"] == "DIST"
    assert [v["serial"] for v in answer["vouchers"]] == stocked[:2]
    assert all(len(v["pin"]) == 14 for v in answer["vouchers"])
    again = sale(client, dist, count=2)
    assert again.json() == answer
    listed = client.get("/api/v1/resellers/DIST/sales", headers=dist).json()
    assert [s["sale_id"] for s in listed["items"]] == [answer["sale_id"]]
    for voucher in answer["vouchers"]:
        assert voucher["pin"] not in str(listed)
    audit = client.get("/api/v1/audit?object_type=sale", headers=bearer(factories.api_key(rt)))
    assert [entry["action"] for entry in audit.json()["items"]] == ["sale.repeat", "sale.create"]
    for voucher in answer["vouchers"]:
        assert voucher["pin"] not in audit.text


def test_refusals_come_in_order_401_403_404_422(
    client: TestClient, rt: Runtime, stocked: list[str]
) -> None:
    admin = bearer(factories.api_key(rt))
    channel = bearer(factories.api_key(rt, "channel"))
    rival = reseller_key(rt, "RIVAL")
    bad = {"serial_from": "x"}
    cases = [
        ({}, "DIST", bad, 401),
        (channel, "DIST", bad, 403),
        (rival, "DIST", bad, 403),
        (rival, "NO-SUCH", bad, 403),
        (admin, "NO-SUCH", bad, 404),
        (admin, "DIST", bad, 422),
    ]
    for who, code, body, expected in cases:
        for path in ("stock", "activations", "payments"):
            answer = client.post(f"/api/v1/resellers/{code}/{path}", json=body, headers=who)
            assert answer.status_code == expected, (who, code, path, answer.text)
    assert client.post("/api/v1/sales", json=bad, headers=channel).status_code == 403
    assert client.post("/api/v1/resellers", json=bad, headers=channel).status_code == 403
    assert client.get("/api/v1/resellers?limit=abc", headers=channel).status_code == 403
    assert client.get("/api/v1/resellers?limit=5000", headers=admin).status_code == 422


def test_a_resellers_key_sees_only_its_subtree(
    client: TestClient, rt: Runtime, stocked: list[str]
) -> None:
    dist = reseller_key(rt, "DIST")
    shop = reseller_key(rt, "SHOP")
    codes = [r["code"] for r in client.get("/api/v1/resellers", headers=dist).json()["items"]]
    assert codes == ["DIST", "SHOP"]
    for path in ("", "/stock", "/sales", "/statement", "/sell-through"):
        assert client.get(f"/api/v1/resellers/RIVAL{path}", headers=dist).status_code == 403
        assert client.get(f"/api/v1/resellers/DIST{path}", headers=shop).status_code == 403
        assert client.get(f"/api/v1/resellers/SHOP{path}", headers=dist).status_code == 200
    assert sale(client, shop, reseller="DIST").status_code == 403
    assert sale(client, dist, reseller="RIVAL").status_code == 403
    # Nothing else a distributor may do: a reseller's key exports nothing.
    assert client.get("/api/v1/exports", headers=dist).status_code == 403


def test_statements_come_as_json_csv_and_pdf(
    client: TestClient, rt: Runtime, stocked: list[str]
) -> None:
    admin = bearer(factories.api_key(rt))
    assert sale(client, admin, reseller="DIST", count=2).status_code == 201
    paid = client.post(
        "/api/v1/resellers/DIST/payments",
        json={"amount": 1000, "reference": "bank 7"},
        headers=admin,
    )
    assert paid.status_code == 201, paid.text
    report = client.get("/api/v1/resellers/DIST/statement", headers=admin).json()
    assert (report["sales"], report["commission"], report["payments"]) == (2000, 100, 1000)
    assert report["closing_balance"] == 900 == report["opening_balance"] + 900
    as_csv = client.get("/api/v1/resellers/DIST/statement?format=csv", headers=admin)
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[0] == "at,kind,amount,balance_due,sale_id,reference,actor"
    assert "closing_balance,900" in as_csv.text
    as_pdf = client.get("/api/v1/resellers/DIST/statement?format=pdf", headers=admin)
    assert as_pdf.headers["content-type"] == "application/pdf"
    text = PdfReader(io.BytesIO(as_pdf.content), strict=True).pages[0].extract_text()
    lines = text.splitlines()
    summary = [
        "opening balance 0",
        "sales 2000",
        "commission 100",
        "payments 1000",
        "closing balance 900",
    ]
    start = lines.index(summary[0])
    assert lines[start : start + 5] == summary
    assert "at (UTC) kind amount balance due reference" in lines
    assert [line.split()[2:] for line in lines if " payment " in line] == [
        ["payment", "1000", "900", "bank", "7"]
    ]
    assert (
        client.get(
            "/api/v1/resellers/DIST/statement?since=2026-01-01T00:00:00", headers=admin
        ).status_code
        == 422
    )


def test_creating_a_reseller_twice_answers_it_and_a_difference_is_a_conflict(
    client: TestClient, rt: Runtime
) -> None:
    factories.standard_catalog(rt)
    admin = bearer(factories.api_key(rt))
    body = {
        "code": "DIST",
        "name": "Dist",
        "service_provider": "ACME",
        "credit_limit": 5000,
        "commission_percent": 2.5,
    }
    created = client.post("/api/v1/resellers", json=body, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["currency"] == "KES"
    assert created.json()["commission_percent"] == 2.5
    assert client.post("/api/v1/resellers", json=body, headers=admin).status_code == 200
    changed = client.post("/api/v1/resellers", json={**body, "credit_limit": 1}, headers=admin)
    assert changed.status_code == 409
    assert "credit_limit" in changed.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        "null",
        '{"voucher_type": "TOPUP10", "count": "many", "request_id": "x"}',
        '{"voucher_type": "TOPUP10", "count": 1e400, "request_id": "x"}',
        '{"voucher_type": "TOPUP10", "count": 1, "request_id": "x", "reseller": 7}',
        '{"voucher_type": "TOPUP10", "count": 1, "request_id": "x", "extra": 1}',
        '{"voucher_type": "\\u0000", "count": 1, "request_id": "x", "reseller": "DIST"}',
    ],
)
def test_bad_sales_are_refused_never_with_500(
    client: TestClient, rt: Runtime, stocked: list[str], body: str
) -> None:
    admin = bearer(factories.api_key(rt))
    answer = client.post(
        "/api/v1/sales", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text


@pytest.mark.parametrize(
    "body",
    [
        {"serial_from": "1" * 40, "serial_to": "1"},
        {"serial_from": "9", "serial_to": "1"},
        {"serial_from": "abc", "serial_to": "def"},
        {"serial_from": 1.5, "serial_to": 2},
        {"serial_from": "99999999999", "serial_to": "99999999999"},
    ],
)
def test_bad_ranges_are_refused_never_with_500(
    client: TestClient, rt: Runtime, stocked: list[str], body: dict[str, Any]
) -> None:
    admin = bearer(factories.api_key(rt))
    for path in ("stock", "activations"):
        answer = client.post(f"/api/v1/resellers/DIST/{path}", json=body, headers=admin)
        assert answer.status_code in (404, 409, 422), answer.text


def test_bad_reseller_bodies_are_refused_never_with_500(client: TestClient, rt: Runtime) -> None:
    factories.standard_catalog(rt)
    admin = bearer(factories.api_key(rt))
    base = {"code": "D", "name": "D", "service_provider": "ACME", "credit_limit": 0}
    for fields, expected in (
        ({"commission_percent": 101}, 422),
        ({"commission_percent": 1.234}, 422),
        ({"commission_percent": 1, "credit_limit": -1}, 422),
        ({"commission_percent": 1, "credit_limit": 10**30}, 422),
        ({"commission_percent": 1, "currency": "kes"}, 422),
        ({"commission_percent": 1, "parent": "NOPE"}, 404),
        ({"commission_percent": 1, "service_provider": "NOPE"}, 404),
    ):
        answer = client.post("/api/v1/resellers", json={**base, **fields}, headers=admin)
        assert answer.status_code == expected, (fields, answer.text)


def test_sales_are_limited_per_key(client: TestClient, rt: Runtime, stocked: list[str]) -> None:
    rt.settings = rt.settings.model_copy(update={"sales_per_minute": 2})
    dist, shop = reseller_key(rt, "DIST"), reseller_key(rt, "SHOP")
    answers = [sale(client, dist, request_id=f"r-{n}").status_code for n in range(3)]
    assert answers == [201, 201, 429]
    limited = sale(client, dist, request_id="r-9").json()
    assert limited["result_code"] == 5007
    # Another key has its own allowance.
    hand_over = client.post(
        "/api/v1/resellers/SHOP/stock",
        json={"serial_from": stocked[5], "serial_to": stocked[6]},
        headers=dist,
    )
    assert hand_over.status_code == 201, hand_over.text
    assert sale(client, shop).status_code == 201


def test_a_resellers_key_creates_resellers_below_its_own_only(
    client: TestClient, rt: Runtime, stocked: list[str]
) -> None:
    dist = reseller_key(rt, "DIST")
    body = {
        "code": "KIOSK",
        "name": "Kiosk",
        "service_provider": "ACME",
        "credit_limit": 1000,
        "commission_percent": 2,
    }
    assert client.post("/api/v1/resellers", json=body, headers=dist).status_code == 403
    too_much = {**body, "parent": "SHOP", "credit_limit": 10**7}
    assert client.post("/api/v1/resellers", json=too_much, headers=dist).status_code == 403
    elsewhere = {**body, "parent": "RIVAL"}
    assert client.post("/api/v1/resellers", json=elsewhere, headers=dist).status_code == 403
    created = client.post("/api/v1/resellers", json={**body, "parent": "SHOP"}, headers=dist)
    assert created.status_code == 201, created.text
    assert created.json()["parent"] == "SHOP"
    payment = {"amount": 1, "reference": "x"}
    paid = client.post("/api/v1/resellers/KIOSK/payments", json=payment, headers=dist)
    assert paid.status_code == 403


def test_sales_stock_and_resellers_page_with_a_cursor(
    client: TestClient, rt: Runtime, stocked: list[str]
) -> None:
    admin = bearer(factories.api_key(rt))
    made = [sale(client, admin, reseller="DIST", request_id=f"p-{n}").json() for n in range(3)]
    for path, key, expected in (
        ("/api/v1/resellers/DIST/sales", "sale_id", [m["sale_id"] for m in reversed(made)]),
        ("/api/v1/resellers", "code", ["DIST", "RIVAL", "SHOP"]),
    ):
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = client.get(path, params=params, headers=admin).json()
            seen += [item[key] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected
    bad = client.get("/api/v1/resellers/DIST/sales?cursor=x", headers=admin)
    assert bad.status_code == 422
