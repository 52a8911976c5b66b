from typing import Any

from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.runtime import Runtime

TOPUP: dict[str, Any] = {
    "code": "TOPUP10",
    "name": "Top-up 10",
    "service_provider": "ACME",
    "pin_length": 14,
    "validity_days": 365,
    "reservation_timeout_s": 300,
    "timeout_action": "revoke",
    "allowed_product_types": ["GOLD"],
    "scenarios": [
        {
            "number": 1,
            "name": "10 KES",
            "default": True,
            "credits": [
                {"balance_type": "CASH", "amount": 1000, "balance_expiry_extension_days": 30}
            ],
            "account_expiry_extension_days": 60,
            "new_product_type": None,
        }
    ],
}


def _base(client: TestClient, admin: dict[str, str]) -> None:
    for path, body in [
        ("service-providers", {"code": "ACME", "name": "Acme Mobile"}),
        (
            "balance-types",
            {
                "code": "CASH",
                "name": "Cash",
                "unit": "cent",
                "currency": "KES",
                "service_provider": "ACME",
                "max_balance": 1_000_000,
            },
        ),
        ("product-types", {"code": "GOLD", "name": "Gold", "service_provider": "ACME"}),
    ]:
        response = client.post(f"/api/v1/{path}", json=body, headers=admin)
        assert response.status_code == 201, response.text


def test_the_catalog_is_created_read_and_updated_over_rest(
    client: TestClient, admin: dict[str, str]
) -> None:
    _base(client, admin)
    created = client.post("/api/v1/voucher-types", json=TOPUP, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["allowed_product_types"] == ["GOLD"]
    got = client.get("/api/v1/voucher-types/TOPUP10", headers=admin).json()
    assert got["scenarios"] == TOPUP["scenarios"]
    scenarios = client.get("/api/v1/voucher-types/TOPUP10/scenarios", headers=admin).json()
    assert scenarios["items"] == scenarios["scenarios"] == TOPUP["scenarios"]
    assert scenarios["next_cursor"] is None
    patched = client.patch(
        "/api/v1/balance-types/ACME/CASH", json={"max_balance": 5}, headers=admin
    )
    assert patched.json()["max_balance"] == 5
    assert (
        client.get("/api/v1/balance-types?service_provider=ACME", headers=admin).json()["items"][0][
            "code"
        ]
        == "CASH"
    )
    assert client.get("/api/v1/product-types/ACME/GOLD", headers=admin).json()["name"] == "Gold"
    renamed = client.patch("/api/v1/service-providers/ACME", json={"name": "Acme"}, headers=admin)
    assert renamed.json()["name"] == "Acme"


def test_duplicates_give_409(client: TestClient, admin: dict[str, str]) -> None:
    _base(client, admin)
    again = client.post(
        "/api/v1/service-providers", json={"code": "ACME", "name": "x"}, headers=admin
    )
    assert again.status_code == 409
    assert again.json() == {"detail": "service provider 'ACME' already exists with other name"}


def test_unknown_references_give_404_naming_them(client: TestClient, admin: dict[str, str]) -> None:
    _base(client, admin)
    body = {**TOPUP, "allowed_product_types": ["PLATINUM"]}
    response = client.post("/api/v1/voucher-types", json=body, headers=admin)
    assert response.status_code == 404
    assert response.json()["detail"] == "product type 'PLATINUM' not found"
    missing = client.post(
        "/api/v1/balance-types",
        json={"code": "SMS", "name": "SMS", "unit": "sms", "service_provider": "NOPE"},
        headers=admin,
    )
    assert (missing.status_code, missing.json()["detail"]) == (
        404,
        "service provider 'NOPE' not found",
    )
    assert client.get("/api/v1/voucher-types/NOPE", headers=admin).status_code == 404


def test_malformed_bodies_give_422_never_500(client: TestClient, admin: dict[str, str]) -> None:
    _base(client, admin)
    bad_bodies = [
        {**TOPUP, "pin_length": 3},
        {**TOPUP, "scenarios": []},
        {**TOPUP, "timeout_action": "explode"},
        {**TOPUP, "unknown_field": 1},
        {
            **TOPUP,
            "scenarios": [
                {"number": 1, "name": "x", "credits": [{"balance_type": "CASH", "amount": -5}]}
            ],
        },
        {"code": "a b", "name": "x"},
    ]
    for body in bad_bodies:
        response = client.post("/api/v1/voucher-types", json=body, headers=admin)
        assert response.status_code == 422, (body, response.text)
        assert all("input" not in error for error in response.json()["detail"])
    not_json = client.post("/api/v1/service-providers", content=b"{nope", headers=admin)
    assert not_json.status_code == 422
    assert client.post("/api/v1/balance-types", json=[1, 2], headers=admin).status_code == 422


def test_a_scoped_key_is_held_to_its_provider(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    _base(client, admin)
    client.post("/api/v1/service-providers", json={"code": "BETA", "name": "Beta"}, headers=admin)
    beta = bearer(factories.api_key(rt, "operator", "BETA"))
    response = client.post(
        "/api/v1/product-types",
        json={"code": "X", "name": "X", "service_provider": "ACME"},
        headers=beta,
    )
    assert response.status_code == 403
    assert (
        client.post(
            "/api/v1/product-types",
            json={"code": "X", "name": "X", "service_provider": "BETA"},
            headers=beta,
        ).status_code
        == 201
    )
    assert [
        sp["code"] for sp in client.get("/api/v1/service-providers", headers=beta).json()["items"]
    ] == ["BETA"]
    assert client.get("/api/v1/product-types/ACME/GOLD", headers=beta).status_code == 403


def test_every_change_is_in_the_audit_log(client: TestClient, admin: dict[str, str]) -> None:
    _base(client, admin)
    client.post("/api/v1/voucher-types", json=TOPUP, headers=admin)
    entries = client.get("/api/v1/audit", headers=admin).json()["items"]
    actions = [e["action"] for e in entries]
    assert actions[:4] == [
        "voucher_type.create",
        "product_type.create",
        "balance_type.create",
        "service_provider.create",
    ]
    assert all(e["actor"] == "admin-all" for e in entries[:4])


def test_a_scoped_auditor_reads_only_its_providers_audit_entries(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    _base(client, admin)
    client.post("/api/v1/service-providers", json={"code": "BETA", "name": "Beta"}, headers=admin)
    beta_type = {"code": "B1", "name": "B1", "service_provider": "BETA"}
    assert client.post("/api/v1/product-types", json=beta_type, headers=admin).status_code == 201
    beta = bearer(factories.api_key(rt, "auditor", "BETA"))

    entries = client.get("/api/v1/audit?limit=3", headers=beta).json()["items"]

    assert [(e["action"], e["object_id"]) for e in entries] == [
        ("apikey.create", "2"),
        ("product_type.create", "BETA/B1"),
        ("service_provider.create", "BETA"),
    ]
    channel = bearer(factories.api_key(rt, "channel"))
    assert client.get("/api/v1/audit", headers=channel).status_code == 403


def test_every_collection_answers_items_and_pages_with_a_keyset_cursor(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    for code in ("SP3", "SP1", "SP2"):
        assert (
            client.post(
                "/api/v1/service-providers", json={"code": code, "name": code}, headers=admin
            ).status_code
            == 201
        )
    seen: list[str] = []
    url = "/api/v1/service-providers?limit=2"
    while True:
        page = client.get(url, headers=admin).json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= 2
        seen += [sp["code"] for sp in page["items"]]
        if page["next_cursor"] is None:
            break
        url = f"/api/v1/service-providers?limit=2&cursor={page['next_cursor']}"
    assert seen == ["SP1", "SP2", "SP3"]
    for url in (
        "/api/v1/service-providers?limit=1001",
        "/api/v1/service-providers?limit=0",
        "/api/v1/service-providers?cursor=not-a-cursor",
        "/api/v1/audit?cursor=WyJ4Il0",  # a cursor of another collection (a string)
    ):
        assert client.get(url, headers=admin).status_code == 422, url
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        if get is None or not path.startswith("/api/v1"):
            continue
        schema = get["responses"]["200"]["content"].get("application/json", {}).get("schema", {})
        ref = schema.get("$ref", "")
        if schema.get("type") == "array":
            raise AssertionError(f"GET {path} answers a bare list")
        if ref:
            model = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
            if "items" in model.get("properties", {}):
                names = {p["name"] for p in get.get("parameters", [])}
                assert {"limit", "cursor"} <= names, f"GET {path} pages without limit/cursor"
                assert "next_cursor" in model["properties"], path
