"""Webhooks, deliveries and replays over HTTP (docs/api.md "Events"; admins only)."""

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests import factories
from tests.api.conftest import bearer
from tests.events_support import SECRET, WebhookReceiver, run_cycle
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services.events.relay import Relay

MSISDN = "254700000001"


def _hook(url: str, **extra: object) -> dict[str, object]:
    return {"url": url, "secret": SECRET, "events": ["voucher.redeemed"], **extra}


def test_an_admin_adds_lists_and_removes_a_webhook_whose_secret_is_never_shown(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    added = client.post(
        "/api/v1/webhooks",
        headers=admin,
        json=_hook("https://crm.example/hooks", events=["batch.frozen", "voucher.redeemed"]),
    )
    assert added.status_code == 201, added.text
    webhook = added.json()
    assert SECRET not in added.text
    assert webhook["events"] == ["voucher.redeemed", "batch.frozen"]
    assert (webhook["kind"], webhook["state"], webhook["service_provider"]) == (
        "webhook",
        "active",
        None,
    )
    listed = client.get("/api/v1/webhooks", headers=admin).json()
    assert [w["id"] for w in listed["items"]] == [webhook["id"]]
    assert listed["next_cursor"] is None
    assert SECRET not in client.get("/api/v1/webhooks", headers=admin).text
    removed = client.delete(f"/api/v1/webhooks/{webhook['id']}", headers=admin)
    assert removed.json()["state"] == "disabled"
    assert client.get(f"/api/v1/webhooks/{webhook['id']}", headers=admin).json()["state"] == (
        "disabled"
    )


def test_a_webhook_needs_a_url_a_secret_and_known_event_types(
    client: TestClient, admin: dict[str, str]
) -> None:
    for bad in (
        _hook("ftp://example/x"),
        _hook("http://example/x", secret="short"),
        _hook("http://example/x", events=["voucher.eaten"]),
        _hook("http://example/x", events=[]),
        {"url": "http://example/x", "events": ["voucher.redeemed"]},
    ):
        answer = client.post("/api/v1/webhooks", headers=admin, json=bad)
        assert answer.status_code == 422, bad
        assert SECRET not in answer.text
    assert client.get("/api/v1/webhooks?limit=1001", headers=admin).status_code == 422
    assert client.get("/api/v1/webhooks/99999999999", headers=admin).status_code == 422
    assert client.get("/api/v1/webhooks/7", headers=admin).status_code == 404
    assert client.get("/api/v1/event-deliveries?cursor=x", headers=admin).status_code == 422
    huge = "9" * 19  # above any id a column holds
    assert client.get(f"/api/v1/webhooks?cursor={huge}", headers=admin).status_code == 422
    assert client.get("/api/v1/webhooks?cursor=12", headers=admin).status_code == 200


def test_a_scoped_admins_webhook_is_its_providers(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "OTHER")
    other = bearer(factories.api_key(rt, "admin", "OTHER"))
    mine = client.post("/api/v1/webhooks", headers=other, json=_hook("http://h.example/a"))
    assert mine.json()["service_provider"] == "OTHER"
    refused = client.post(
        "/api/v1/webhooks", headers=other, json=_hook("http://h.example/b", service_provider="ACME")
    )
    assert refused.status_code == 403
    acme = client.post(
        "/api/v1/webhooks", headers=admin, json=_hook("http://h.example/c", service_provider="ACME")
    ).json()
    assert client.get(f"/api/v1/webhooks/{acme['id']}", headers=other).status_code == 404
    seen = client.get("/api/v1/webhooks", headers=other).json()["items"]
    assert [w["id"] for w in seen] == [mine.json()["id"]]
    operator = bearer(factories.api_key(rt, "operator"))
    assert client.get("/api/v1/webhooks", headers=operator).status_code == 403


def test_dead_letters_are_listed_and_replayed_with_the_same_event_id(
    client: TestClient, rt: Runtime, admin: dict[str, str]
) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    pins = factories.active_batch(rt, count=1)
    with WebhookReceiver() as receiver:
        hook = client.post("/api/v1/webhooks", headers=admin, json=_hook(receiver.url)).json()
        client.post(
            "/api/v1/redemptions", headers=admin, json={"msisdn": MSISDN, "pin": pins[0][1]}
        )
        relay = Relay(rt)
        receiver.fail_with = 410
        run_cycle(relay)
        metrics = client.get("/metrics").text
        assert 'voms_events_waiting{destination="outbox",state="undispatched"} 0.0' in metrics
        assert f'voms_events_waiting{{destination="webhook {hook["id"]}",state="pending"}} 1.0' in (
            metrics
        )
        dead = _kill(rt, relay)
        metrics = client.get("/metrics").text
        assert f'voms_events_waiting{{destination="webhook {hook["id"]}",state="dead"}} 1.0' in (
            metrics
        )
        listed = client.get("/api/v1/event-deliveries?state=dead", headers=admin).json()["items"]
        assert [d["id"] for d in listed] == [dead]
        assert listed[0]["destination"]["id"] == hook["id"]
        assert listed[0]["last_error"] == "HTTP 410"
        event_id = listed[0]["event_id"]
        receiver.fail_with = None
        replayed = client.post(f"/api/v1/event-deliveries/{dead}/replay", headers=admin).json()
        assert replayed["replayed"] == 1
        assert replayed["delivery"]["state"] == "pending"
        run_cycle(relay)
        assert receiver.ids() == [event_id]
        delivered = client.get("/api/v1/event-deliveries?state=delivered", headers=admin).json()
        assert [d["event_id"] for d in delivered["items"]] == [event_id]


def _kill(rt: Runtime, relay: Relay) -> int:
    """Make the failing delivery a day old and let the relay dead-letter it; its id."""
    q = t.event_deliveries
    with rt.engine.begin() as conn:
        conn.execute(
            update(q).values(first_failed_at=utcnow() - timedelta(days=2), next_attempt_at=utcnow())
        )
    run_cycle(relay)
    with rt.engine.connect() as conn:
        return int(conn.execute(select(q.c.id).where(q.c.state == "dead")).scalar_one())
