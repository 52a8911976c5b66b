from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.runtime import Runtime


def test_health_ready_and_metrics_answer(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.get("/healthz")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'voms_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics.text


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/voucher-types" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_a_call_without_a_key_gets_401(client: TestClient) -> None:
    response = client.get("/api/v1/service-providers")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_wrong_or_revoked_key_gets_401(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    assert client.get("/api/v1/service-providers", headers=bearer("voms_nope")).status_code == 401
    key = factories.api_key(rt, "auditor", name="temp")
    assert client.get("/api/v1/service-providers", headers=bearer(key)).status_code == 200
    assert client.delete("/api/v1/api-keys/temp", headers=admin).status_code == 204
    assert client.get("/api/v1/service-providers", headers=bearer(key)).status_code == 401


def test_a_wrong_role_gets_403(client: TestClient, rt: Runtime) -> None:
    channel = bearer(factories.api_key(rt, "channel"))
    response = client.post(
        "/api/v1/service-providers", json={"code": "X", "name": "X"}, headers=channel
    )
    assert response.status_code == 403
    auditor = bearer(factories.api_key(rt, "auditor"))
    assert (
        client.post(
            "/api/v1/api-keys", json={"name": "n", "role": "admin"}, headers=auditor
        ).status_code
        == 403
    )


def test_api_keys_over_rest_return_the_secret_once(
    client: TestClient, admin: dict[str, str]
) -> None:
    client.post("/api/v1/service-providers", json={"code": "ACME", "name": "Acme"}, headers=admin)
    created = client.post(
        "/api/v1/api-keys",
        json={"name": "gw", "role": "channel", "service_provider": "ACME"},
        headers=admin,
    )
    assert created.status_code == 201
    secret = created.json()["key"]
    listed = client.get("/api/v1/api-keys", headers=admin).json()["items"]
    assert {k["name"] for k in listed} >= {"gw"}
    assert secret not in str(listed)
    assert client.get("/api/v1/voucher-types", headers=bearer(secret)).status_code == 200


def test_rate_limits_answer_5007(rt: Runtime) -> None:
    from voms.api.app import create_app

    rt.settings = rt.settings.model_copy(
        update={"rate_limit_per_second": 0.001, "rate_limit_burst": 2}
    )
    with TestClient(create_app(rt)) as client:
        key = bearer(factories.api_key(rt, "auditor"))
        codes = [client.get("/api/v1/service-providers", headers=key).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert client.get("/api/v1/service-providers", headers=key).json()["result_code"] == 5007
