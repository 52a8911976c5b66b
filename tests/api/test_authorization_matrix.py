"""Who may call what: every operation of /openapi.json against every kind of caller.

Callers: no key, an invalid key, an unscoped key of each role, and an admin key scoped
to another service provider (OTHER) acting on ACME's objects. Each operation's entry in
OPERATIONS says which roles may call it and what the OTHER-scoped key gets. The test
fails for an operation that is missing from the table: that is its point, a new route
cannot be added without deciding who may call it.

To add an operation: add a line ``("METHOD", "/path/{param}"): Rule(roles, other)`` to
OPERATIONS, with ``roles`` the roles that may call it (``PUBLIC`` for a route outside
the API keys, e.g. a channel with its own secret), ``other`` REFUSED when it acts on one
provider's object (the path names it, or ``body`` does), HIDDEN when the call answers
as if another provider's object did not exist (404: the redemption family and the
lookups by PIN or serial, which reveal nothing), and SEES_OWN when the call is
provider-neutral or filters what it answers by the key's scope. Path parameters are
filled from PARAMS; give ``body`` (naming ACME's objects) for a call whose scope check
needs it.

What is checked, for every operation:
- no key and an invalid key: 401, with a body that does not validate (key before body);
- each role not in ``roles``: 403, with that same body (role before validation, 422);
- each role in ``roles``: neither 401 nor 403;
- the OTHER-scoped admin key (with ``body``): 403 for REFUSED, 404 for HIDDEN,
  neither 401 nor 403 for SEES_OWN; where the path names the object, the same answer
  with a body and a query that do not validate (scope before validation);
- nobody gets a server error (5xx).
"""

from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from tests.pgp import PartnerKeys
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services.events.relay import Relay
from voms.serving import TokenBuckets

ALL = frozenset(Role)
A, OP, D, C, CH, AU = (
    Role.ADMIN,
    Role.OPERATOR,
    Role.DISTRIBUTOR,
    Role.CARE,
    Role.CHANNEL,
    Role.AUDITOR,
)
PUBLIC = None  # no API key: the route is open, or has its own authentication
REFUSED, HIDDEN, SEES_OWN = "refused", "hidden", "sees own"
MSISDN = "254700000001"


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role] | None
    other: str = REFUSED
    body: dict[str, Any] | None = field(default=None, hash=False)


def roles(*given: Role) -> frozenset[Role]:
    return frozenset(given)


VOUCHER_TYPE = {
    "code": "NEWTYPE",
    "name": "New",
    "service_provider": "ACME",
    "scenarios": [{"number": 1, "name": "one", "credits": []}],
}

PROMOTION = {
    "code": "NEWPLAN",
    "name": "New",
    "service_provider": "ACME",
    "starts_at": "2026-01-01T00:00:00+00:00",
    "window": {"kind": "calendar_month"},
    "counter": "count",
    "target": 3,
    "repeat": False,
    "reward": {"credits": [{"balance_type": "SMS", "amount": 10}]},
}

OPERATIONS: dict[tuple[str, str], Rule] = {
    # redemption family (the body names nothing of ACME: the voucher found by PIN is)
    ("POST", "/api/v1/redemptions"): Rule(roles(A, C, CH), SEES_OWN),
    ("POST", "/api/v1/reservations"): Rule(roles(A, C, CH), SEES_OWN),
    ("POST", "/api/v1/reservations/{reservation_id}/commit"): Rule(roles(A, C, CH), HIDDEN),
    ("POST", "/api/v1/reservations/{reservation_id}/revoke"): Rule(roles(A, C, CH), HIDDEN),
    ("POST", "/api/v1/voucher-type-recharges"): Rule(
        roles(A),
        HIDDEN,
        body={"msisdn": MSISDN, "voucher_type": "TOPUP10", "service_provider": "ACME"},
    ),
    # open to all, or guarded by their own secret
    ("GET", "/healthz"): Rule(PUBLIC),
    ("GET", "/readyz"): Rule(PUBLIC),
    ("GET", "/metrics"): Rule(PUBLIC),
    # catalog
    ("GET", "/api/v1/service-providers"): Rule(ALL, SEES_OWN),
    ("POST", "/api/v1/service-providers"): Rule(roles(A, OP), body={"code": "NEW", "name": "N"}),
    ("GET", "/api/v1/service-providers/{code}"): Rule(ALL),
    ("PATCH", "/api/v1/service-providers/{code}"): Rule(roles(A, OP), body={"name": "N"}),
    # alerts
    ("GET", "/api/v1/service-providers/{code}/alerts"): Rule(roles(A, OP)),
    ("PATCH", "/api/v1/service-providers/{code}/alerts"): Rule(
        roles(A, OP), body={"expiry_notice_days": 3}
    ),
    ("GET", "/api/v1/alerts"): Rule(roles(A, OP), SEES_OWN),
    ("POST", "/api/v1/balance-types"): Rule(
        roles(A, OP), body={"code": "NEW", "name": "N", "unit": "u", "service_provider": "ACME"}
    ),
    ("GET", "/api/v1/balance-types"): Rule(ALL, SEES_OWN),
    ("GET", "/api/v1/balance-types/{service_provider}/{code}"): Rule(ALL),
    ("PATCH", "/api/v1/balance-types/{service_provider}/{code}"): Rule(
        roles(A, OP), body={"name": "N"}
    ),
    ("POST", "/api/v1/product-types"): Rule(
        roles(A, OP), body={"code": "NEW", "name": "N", "service_provider": "ACME"}
    ),
    ("GET", "/api/v1/product-types"): Rule(ALL, SEES_OWN),
    ("GET", "/api/v1/product-types/{service_provider}/{code}"): Rule(ALL),
    ("PATCH", "/api/v1/product-types/{service_provider}/{code}"): Rule(
        roles(A, OP), body={"name": "N"}
    ),
    ("POST", "/api/v1/voucher-types"): Rule(roles(A, OP), body=VOUCHER_TYPE),
    ("GET", "/api/v1/voucher-types"): Rule(ALL, SEES_OWN),
    ("GET", "/api/v1/voucher-types/{code}"): Rule(ALL),
    ("PATCH", "/api/v1/voucher-types/{code}"): Rule(roles(A, OP), body={"name": "N"}),
    ("GET", "/api/v1/voucher-types/{code}/scenarios"): Rule(ALL),
    # API keys and audit
    ("GET", "/api/v1/api-keys"): Rule(roles(A), SEES_OWN),
    ("POST", "/api/v1/api-keys"): Rule(
        roles(A), body={"name": "new", "role": "care", "service_provider": "ACME"}
    ),
    ("DELETE", "/api/v1/api-keys/{name}"): Rule(roles(A)),
    ("GET", "/api/v1/audit"): Rule(roles(A, AU), SEES_OWN),
    # subscribers and wallet
    ("POST", "/api/v1/subscribers"): Rule(
        roles(A, OP),
        body={"msisdn": "254700000009", "service_provider": "ACME", "product_type": "GOLD"},
    ),
    ("GET", "/api/v1/subscribers/{msisdn}"): Rule(roles(A, OP, C, AU)),
    ("PATCH", "/api/v1/subscribers/{msisdn}"): Rule(roles(A, OP), body={"state": "active"}),
    ("POST", "/api/v1/subscribers/{msisdn}/adjustments"): Rule(
        roles(A, C), body={"balance_type": "CASH", "amount": 1, "reason": "test"}
    ),
    ("GET", "/api/v1/subscribers/{msisdn}/ledger"): Rule(roles(A, OP, C, AU)),
    ("GET", "/api/v1/transactions"): Rule(roles(A, OP, C, AU), SEES_OWN),
    # batches and vouchers
    ("POST", "/api/v1/batches"): Rule(roles(A, OP), body={"voucher_type": "TOPUP10", "count": 1}),
    ("GET", "/api/v1/batches"): Rule(roles(A, OP, D, AU), SEES_OWN),
    ("GET", "/api/v1/batches/{batch_id}"): Rule(roles(A, OP, D, AU)),
    ("PATCH", "/api/v1/batches/{batch_id}"): Rule(
        roles(A, OP), body={"expires_at": "2099-01-01T00:00:00+00:00"}
    ),
    ("POST", "/api/v1/batches/{batch_id}/activate"): Rule(roles(A, OP), body={"reason": "r"}),
    ("POST", "/api/v1/batches/{batch_id}/freeze"): Rule(roles(A, OP), body={"reason": "r"}),
    ("POST", "/api/v1/batches/{batch_id}/unfreeze"): Rule(roles(A, OP), body={"reason": "r"}),
    ("POST", "/api/v1/batches/{batch_id}/delete"): Rule(roles(A, OP), body={"reason": "r"}),
    ("POST", "/api/v1/vouchers/lookup"): Rule(roles(A, OP, C, AU), HIDDEN, body={"pin": "{pin}"}),
    ("POST", "/api/v1/vouchers/freeze"): Rule(
        roles(A, OP), HIDDEN, body={"serial_from": "{serial}", "serial_to": "{serial}"}
    ),
    ("POST", "/api/v1/vouchers/unfreeze"): Rule(
        roles(A, OP), HIDDEN, body={"serial_from": "{serial}", "serial_to": "{serial}"}
    ),
    ("POST", "/api/v1/vouchers/delete"): Rule(
        roles(A, OP), HIDDEN, body={"serial_from": "{serial}", "serial_to": "{serial}"}
    ),
    ("GET", "/api/v1/vouchers/{serial}"): Rule(roles(A, OP, C, AU), HIDDEN),
    # distribution
    ("GET", "/api/v1/partners"): Rule(roles(A, D), SEES_OWN),
    ("POST", "/api/v1/partners"): Rule(
        roles(A, D), body={"name": "new", "public_key": "{key}", "service_provider": "ACME"}
    ),
    ("GET", "/api/v1/partners/{name}"): Rule(roles(A, D)),
    ("PUT", "/api/v1/partners/{name}/public-key"): Rule(roles(A, D), body={"public_key": "{key}"}),
    ("POST", "/api/v1/partners/{name}/disable"): Rule(roles(A, D)),
    ("POST", "/api/v1/exports"): Rule(
        roles(A, D), body={"partner": "printshop", "batch_id": "{batch_id}"}
    ),
    ("GET", "/api/v1/exports"): Rule(roles(A, D), SEES_OWN),
    ("GET", "/api/v1/exports/{export_id}"): Rule(roles(A, D)),
    ("GET", "/api/v1/exports/{export_id}/file"): Rule(roles(A, D)),
    ("POST", "/api/v1/imports"): Rule(
        roles(A, OP), SEES_OWN, body={"csv": "100000009999,12345678901234,TOPUP10,2099-01-01\n"}
    ),
    # housekeeping: installation-wide, so a scoped key only reads
    ("GET", "/api/v1/housekeeping/jobs"): Rule(roles(A, OP, AU), SEES_OWN),
    ("GET", "/api/v1/housekeeping/runs"): Rule(roles(A, OP, AU), SEES_OWN),
    ("GET", "/api/v1/housekeeping/runs/{run_id}"): Rule(roles(A, OP, AU), SEES_OWN),
    ("POST", "/api/v1/housekeeping/jobs/{name}/run"): Rule(roles(A, OP)),
    # range operations: the vouchers are found by serial, as by freeze
    ("POST", "/api/v1/vouchers/activate"): Rule(
        roles(A, OP), HIDDEN, body={"serial_from": "{serial}", "serial_to": "{serial}"}
    ),
    ("POST", "/api/v1/vouchers/amend"): Rule(
        roles(A, OP),
        HIDDEN,
        body={
            "serial_from": "{serial}",
            "serial_to": "{serial}",
            "expires_at": "2099-01-01T00:00:00+00:00",
        },
    ),
    ("GET", "/api/v1/vouchers/{serial}/attempts"): Rule(roles(A, OP, C, AU), HIDDEN),
    # reversal of a redemption
    ("POST", "/api/v1/transactions/{transaction_id}/reversal"): Rule(
        roles(A, C), body={"reason": "r", "reactivate_voucher": False}
    ),
    ("GET", "/api/v1/transactions/{transaction_id}/reversal"): Rule(roles(A, OP, C, AU)),
    # blacklist
    ("GET", "/api/v1/blacklist"): Rule(roles(A, C), SEES_OWN),
    ("POST", "/api/v1/blacklist"): Rule(roles(A, C), body={"msisdn": MSISDN, "reason": "r"}),
    ("DELETE", "/api/v1/blacklist/{msisdn}"): Rule(roles(A, C)),
    # reports: what they count is filtered by the key's scope
    ("GET", "/api/v1/reports/{name}"): Rule(roles(A, OP, C, AU), SEES_OWN),
    # resellers and electronic PINs
    ("GET", "/api/v1/resellers"): Rule(roles(A, D, AU), SEES_OWN),
    ("POST", "/api/v1/resellers"): Rule(
        roles(A, D),
        body={
            "code": "SHOP2",
            "name": "Shop",
            "service_provider": "ACME",
            "credit_limit": 0,
            "commission_percent": "5",
        },
    ),
    ("GET", "/api/v1/resellers/{code}"): Rule(roles(A, D, AU)),
    ("PATCH", "/api/v1/resellers/{code}"): Rule(roles(A, D), body={"credit_limit": 500}),
    ("GET", "/api/v1/resellers/{code}/stock"): Rule(roles(A, D, AU)),
    ("POST", "/api/v1/resellers/{code}/stock"): Rule(
        roles(A, D), body={"serial_from": "{serial}", "serial_to": "{serial}"}
    ),
    ("POST", "/api/v1/resellers/{code}/activations"): Rule(
        roles(A, D), body={"serial_from": "{serial}", "serial_to": "{serial}"}
    ),
    ("GET", "/api/v1/resellers/{code}/sales"): Rule(roles(A, D, AU)),
    ("POST", "/api/v1/resellers/{code}/payments"): Rule(
        roles(A, D), body={"amount": 1, "reference": "r"}
    ),
    ("GET", "/api/v1/resellers/{code}/statement"): Rule(roles(A, D, AU)),
    ("GET", "/api/v1/resellers/{code}/sell-through"): Rule(roles(A, D, AU)),
    ("POST", "/api/v1/sales"): Rule(
        roles(A, D),
        body={"voucher_type": "TOPUP10", "count": 1, "request_id": "r1", "reseller": "SHOP1"},
    ),
    # events: webhooks and deliveries, admins only
    ("POST", "/api/v1/webhooks"): Rule(
        roles(A),
        body={
            "url": "http://127.0.0.1:9/hook",
            "secret": "s" * 16,
            "events": ["voucher.redeemed"],
            "service_provider": "ACME",
        },
    ),
    ("GET", "/api/v1/webhooks"): Rule(roles(A), SEES_OWN),
    ("GET", "/api/v1/webhooks/{webhook_id}"): Rule(roles(A), HIDDEN),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): Rule(roles(A), HIDDEN),
    ("POST", "/api/v1/webhooks/{webhook_id}/replay"): Rule(roles(A), HIDDEN),
    ("GET", "/api/v1/event-deliveries"): Rule(roles(A), SEES_OWN),
    ("POST", "/api/v1/event-deliveries/{delivery_id}/replay"): Rule(roles(A), HIDDEN),
    # TM Forum TMF654: the redemption's keys and roles
    ("POST", "/tmf-api/prepayBalanceManagement/v4/topupBalance"): Rule(roles(A, C, CH), SEES_OWN),
    ("GET", "/tmf-api/prepayBalanceManagement/v4/topupBalance/{id}"): Rule(roles(A, C, CH), HIDDEN),
    # promotions, and a subscriber's counters
    ("POST", "/api/v1/promotions"): Rule(roles(A, OP), body=PROMOTION),
    ("GET", "/api/v1/promotions"): Rule(roles(A, OP), SEES_OWN),
    ("GET", "/api/v1/promotions/{code}"): Rule(roles(A, OP)),
    ("PATCH", "/api/v1/promotions/{code}"): Rule(roles(A, OP), body={"name": "N"}),
    ("GET", "/api/v1/subscribers/{msisdn}/counters"): Rule(roles(A, OP, C, AU)),
}

# A body no operation accepts: whoever may not call gets 401/403, never 422.
JUNK = {"not a field": ["\u2603"], "pin": 12}


@dataclass
class World:
    params: dict[str, str]
    values: dict[str, str]
    callers: dict[str, dict[str, str]]


@pytest.fixture
def world(rt: Runtime, client: TestClient, partner_keys: PartnerKeys) -> World:
    # The matrix presents an invalid key once per operation: more than a client may.
    client.app.state.invalid_keys = TokenBuckets(10_000 / 60, 10_000)  # type: ignore[attr-defined]
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "OTHER")
    factories.subscriber(rt, MSISDN)
    vouchers = factories.active_batch(rt, count=4)
    admin = bearer(factories.api_key(rt, "admin"))
    # (before the redemption: its event is written while a destination wants it)
    webhook = client.post(
        "/api/v1/webhooks",
        headers=admin,
        json={
            "url": "http://127.0.0.1:9/hook",
            "secret": "s" * 16,
            "events": ["voucher.redeemed"],
            "service_provider": "ACME",
        },
    )
    assert webhook.status_code == 201, webhook.text
    redeemed = client.post(
        "/api/v1/redemptions", headers=admin, json={"msisdn": MSISDN, "pin": vouchers[3][1]}
    )
    assert redeemed.status_code == 200, redeemed.text
    reseller = client.post(
        "/api/v1/resellers",
        headers=admin,
        json={
            "code": "SHOP1",
            "name": "Shop",
            "service_provider": "ACME",
            "credit_limit": 1000,
            "commission_percent": "5",
        },
    )
    assert reseller.status_code == 201, reseller.text
    factories.api_key(rt, "care", "ACME", name="victim")
    shop = client.post(
        "/api/v1/partners",
        headers=admin,
        json={"name": "printshop", "public_key": partner_keys.good, "service_provider": "ACME"},
    )
    assert shop.status_code == 201, shop.text
    export = client.post(
        "/api/v1/exports", headers=admin, json={"partner": "printshop", "voucher_type": "TOPUP10"}
    ).json()
    reserved = client.post(
        "/api/v1/reservations", headers=admin, json={"msisdn": MSISDN, "pin": vouchers[2][1]}
    ).json()
    batch = client.get("/api/v1/batches", headers=admin).json()["items"][0]
    Relay(rt).fan_out()  # the redemption's event becomes the webhook's delivery
    delivery = client.get("/api/v1/event-deliveries", headers=admin).json()["items"][0]
    plan = client.post("/api/v1/promotions", headers=admin, json={**PROMOTION, "code": "LOYAL"})
    assert plan.status_code == 201, plan.text
    callers = {"no key": {}, "invalid key": bearer("voms_" + "x" * 40)}
    callers |= {
        role.value: bearer(factories.api_key(rt, role.value, name=f"matrix-{role}"))
        for role in Role
    }
    callers["admin of OTHER"] = bearer(factories.api_key(rt, "admin", "OTHER"))
    return World(
        params={
            "code": "TOPUP10",
            "service_provider": "ACME",
            "name": "printshop",
            "msisdn": MSISDN,
            "batch_id": str(batch["batch_id"]),
            "serial": vouchers[0][0],
            "export_id": str(export["export_id"]),
            "reservation_id": reserved["reservation_id"],
            "run_id": "1",
            "transaction_id": redeemed.json()["transaction_id"],
            "id": redeemed.json()["transaction_id"],
            "webhook_id": str(webhook.json()["id"]),
            "delivery_id": str(delivery["id"]),
        },
        values={
            "{serial}": vouchers[1][0],
            "{pin}": vouchers[1][1],
            "{key}": partner_keys.other,
            "{batch_id}": batch["batch_id"],
            "{token}": export["download_url"].rsplit("token=", 1)[1],
        },
        callers=callers,
    )


def _path(world: World, method: str, template: str) -> str:
    params = dict(world.params)
    if template.startswith("/api/v1/service-providers/"):
        params["code"] = "ACME"
    elif template.startswith(("/api/v1/balance-types/", "/api/v1/housekeeping/jobs/")):
        params["code"] = "CASH"
        params["name"] = "no_such_job"
    elif template.startswith("/api/v1/product-types/"):
        params["code"] = "GOLD"
    elif template.startswith("/api/v1/api-keys/"):
        params["name"] = "victim"
    elif template.startswith("/api/v1/resellers/"):
        params["code"] = "SHOP1"
    elif template.startswith("/api/v1/reports/"):
        params["name"] = "inventory"
    elif template.startswith("/api/v1/promotions/"):
        params["code"] = "LOYAL"
    path = template.format(**params)
    return path + "?token=" + world.values["{token}"] if path.endswith("/file") else path


def _filled(world: World, body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _filled(world, v) for k, v in body.items()}
    if isinstance(body, list):
        return [_filled(world, v) for v in body]
    return world.values.get(body, body) if isinstance(body, str) else body


def _call(client: TestClient, method: str, path: str, headers: dict[str, str], body: Any) -> int:
    sends_body = method in ("POST", "PUT", "PATCH")
    answer = client.request(method, path, headers=headers, json=body if sends_body else None)
    return answer.status_code


def test_every_operation_is_in_the_table(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    missing = sorted(listed - OPERATIONS.keys())
    assert not missing, (
        f"operations without an entry in OPERATIONS (say who may call them): {missing}"
    )
    assert not sorted(OPERATIONS.keys() - listed), "entries for operations that no longer exist"


def test_every_caller_gets_what_the_table_says(client: TestClient, world: World) -> None:
    wrong: list[str] = []
    for (method, template), rule in OPERATIONS.items():
        if rule.roles is None:
            continue
        path = _path(world, method, template)
        for caller, headers in world.callers.items():
            if caller in ("no key", "invalid key"):
                expected: set[int] | None = {401}
            elif caller == "admin of OTHER":
                expected = {REFUSED: {403}, HIDDEN: {404}}.get(rule.other)
            else:
                expected = None if Role(caller) in rule.roles else {403}
            body = JUNK
            if caller == "admin of OTHER" and rule.body is not None:
                body = _filled(world, rule.body)
            status = _call(client, method, path, headers, body)
            if caller == "admin of OTHER" and expected is not None and "{" in template:
                # The path names the object: its scope is refused before the body or
                # the query is looked at, so a bad one gets the same answer as a good one.
                junk_path = path + ("&" if "?" in path else "?") + "limit=-1&not_a_field=1"
                junk = _call(client, method, junk_path, headers, JUNK)
                if junk != status:
                    wrong.append(
                        f"{method} {template} by {caller} with a bad body and query: "
                        f"{junk}, expected {status} as with good ones"
                    )
            if status >= 500:
                wrong.append(f"{method} {template} by {caller}: {status}, a server error")
            elif expected is None and status in (401, 403):
                wrong.append(f"{method} {template} by {caller}: {status}, expected it allowed")
            elif expected is not None and status not in expected:
                wrong.append(f"{method} {template} by {caller}: {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)
