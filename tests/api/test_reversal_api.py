"""Reversal of a redemption over HTTP (API.md "Reversal of a redemption")."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests import factories
from tests.api.conftest import bearer
from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    bad_check_digit,
    balance,
    shop_fixture,  # noqa: F401 (the shop fixture)
)
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services import verify

REASON = "recharged the wrong number"


@pytest.fixture
def keys(rt: Runtime, shop: Shop) -> dict[str, dict[str, str]]:
    return {
        role: bearer(factories.api_key(rt, role))
        for role in ("care", "admin", "channel", "operator", "auditor")
    }


def _redeem(
    client: TestClient, keys: dict[str, dict[str, str]], pin: str, msisdn: str = MSISDN
) -> Any:
    return client.post(
        "/api/v1/redemptions", headers=keys["channel"], json={"msisdn": msisdn, "pin": pin}
    ).json()


def _reverse(client: TestClient, who: dict[str, str], transaction_id: str, **body: Any) -> Any:
    return client.post(f"/api/v1/transactions/{transaction_id}/reversal", headers=who, json=body)


def _ledger(rt: Runtime, cause: str) -> list[Any]:
    lg = t.ledger
    with rt.engine.connect() as conn:
        return conn.execute(
            select(lg.c.amount, lg.c.transaction_id).where(lg.c.cause == cause)
        ).all()


def test_a_reversal_takes_the_credit_back_and_the_voucher_can_be_sold_again(
    rt: Runtime, client: TestClient, shop: Shop, keys: dict[str, dict[str, str]]
) -> None:
    redeemed = _redeem(client, keys, shop.pins[0])
    assert balance(rt) == 1000
    answer = _reverse(
        client, keys["care"], redeemed["transaction_id"], reason=REASON, reactivate_voucher=True
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["transaction_id"], body["serial"], body["msisdn"]) == (
        redeemed["transaction_id"],
        shop.serials[0],
        MSISDN,
    )
    assert body["credits"] == [
        {"balance_type": "CASH", "credited": 1000, "amount": -1000, "shortfall": 0, "balance": 0}
    ]
    assert (body["voucher_reactivated"], body["forced"], body["shortfall"]) == (True, False, [])
    assert balance(rt) == 0
    assert _ledger(rt, "reversal") == [(-1000, body["reversal_id"])]

    # Reversing twice answers the first reversal again and takes nothing more.
    again = _reverse(
        client, keys["admin"], redeemed["transaction_id"], reason="again", reactivate_voucher=False
    )
    assert again.json() == body
    assert (
        client.get(
            f"/api/v1/transactions/{redeemed['transaction_id']}/reversal", headers=keys["auditor"]
        ).json()
        == body
    )

    # The two transactions name each other.
    listed = client.get(
        "/api/v1/transactions", headers=keys["care"], params={"serial": int(shop.serials[0])}
    ).json()["transactions"]
    by_kind = {row["kind"]: row for row in listed}
    assert by_kind["redemption"]["reversed_by"] == body["reversal_id"]
    assert by_kind["reversal"]["reverses"] == redeemed["transaction_id"]
    assert by_kind["reversal"]["credits"] == [
        {"balance_type": "CASH", "amount": -1000, "balance": 0}
    ]

    voucher = client.get(f"/api/v1/vouchers/{shop.serials[0]}", headers=keys["care"]).json()
    assert voucher["state"] == "active"
    assert [h["action"] for h in voucher["history"]][-2:] == ["redemption", "reversal"]

    # The voucher is sold again, to the right number this time.
    assert _redeem(client, keys, shop.pins[0], OTHER)["result_code"] == 0
    assert balance(rt, OTHER) == 1000
    report = verify.verify(rt)
    assert report.ok, report.problems
    with rt.engine.connect() as conn:
        audited = conn.execute(
            select(t.audit_log.c.object_id, t.audit_log.c.detail).where(
                t.audit_log.c.action == "transaction.reverse"
            )
        ).all()
    assert [(row.object_id, row.detail["reason"]) for row in audited] == [
        (redeemed["transaction_id"], REASON)
    ]


def test_a_voucher_may_stay_used(
    rt: Runtime, client: TestClient, shop: Shop, keys: dict[str, dict[str, str]]
) -> None:
    redeemed = _redeem(client, keys, shop.pins[0])
    answer = _reverse(
        client,
        keys["care"],
        redeemed["transaction_id"],
        reason="disputed sale",
        reactivate_voucher=False,
    )
    assert answer.status_code == 200
    assert balance(rt) == 0
    assert _redeem(client, keys, shop.pins[0])["result_code"] == 2009
    assert verify.verify(rt).ok


def test_a_spent_credit_is_taken_back_only_when_an_admin_forces_it(
    rt: Runtime, client: TestClient, shop: Shop, keys: dict[str, dict[str, str]]
) -> None:
    redeemed = _redeem(client, keys, shop.pins[0])
    spent = client.post(
        f"/api/v1/subscribers/{MSISDN}/adjustments",
        headers=keys["care"],
        json={"balance_type": "CASH", "amount": -700, "reason": "calls"},
    )
    assert spent.status_code == 201
    tx = redeemed["transaction_id"]
    refused = _reverse(client, keys["care"], tx, reason=REASON, reactivate_voucher=True)
    assert refused.status_code == 409
    assert "CASH balance is 300" in refused.json()["detail"]
    assert (
        _reverse(
            client, keys["care"], tx, reason=REASON, reactivate_voucher=True, force=True
        ).status_code
        == 403
    )
    assert balance(rt) == 300
    assert (
        client.get(f"/api/v1/vouchers/{shop.serials[0]}", headers=keys["care"]).json()["state"]
        == "redeemed"
    )
    forced = _reverse(client, keys["admin"], tx, reason=REASON, reactivate_voucher=True, force=True)
    assert forced.status_code == 200, forced.text
    body = forced.json()
    assert body["credits"] == [
        {"balance_type": "CASH", "credited": 1000, "amount": -300, "shortfall": 700, "balance": 0}
    ]
    assert body["shortfall"] == [{"balance_type": "CASH", "amount": 700}]
    assert balance(rt) == 0
    report = verify.verify(rt)
    assert report.ok, report.problems


def test_refusals_come_in_the_order_role_existence_body(
    rt: Runtime, client: TestClient, shop: Shop, keys: dict[str, dict[str, str]]
) -> None:
    tx = _redeem(client, keys, shop.pins[0])["transaction_id"]
    good = {"reason": REASON, "reactivate_voucher": True}
    bad = {"reason": "", "reactivate_voucher": "perhaps", "extra": 1}
    unknown = "00000000-0000-0000-0000-000000000000"
    for target in (tx, unknown):
        assert _reverse(client, {}, target, **bad).status_code == 401
        for role in ("channel", "operator", "auditor"):
            assert _reverse(client, keys[role], target, **bad).status_code == 403
    assert _reverse(client, keys["care"], unknown, **bad).status_code == 404
    not_json = client.post(
        f"/api/v1/transactions/{unknown}/reversal", headers=keys["care"], content=b"{oops"
    )
    assert not_json.status_code == 404
    assert _reverse(client, keys["care"], tx, **bad).status_code == 422
    assert _reverse(client, keys["care"], tx, reason=REASON).status_code == 422
    assert (
        client.post(
            f"/api/v1/transactions/{tx}/reversal", headers=keys["care"], content=b"{oops"
        ).status_code
        == 422
    )
    factories.standard_catalog(rt, "BETA")
    beta = bearer(factories.api_key(rt, "care", "BETA"))
    assert _reverse(client, beta, tx, **good).status_code == 403

    failed = _redeem(client, keys, bad_check_digit(shop.pins[1]))["transaction_id"]
    assert _reverse(client, keys["care"], failed, **good).status_code == 409
    assert balance(rt) == 1000  # nothing was reversed


def test_a_request_id_replays_and_refuses_another_body(
    rt: Runtime, client: TestClient, shop: Shop, keys: dict[str, dict[str, str]]
) -> None:
    tx = _redeem(client, keys, shop.pins[0])["transaction_id"]
    first = _reverse(
        client, keys["care"], tx, reason=REASON, reactivate_voucher=False, request_id="rv-1"
    )
    assert first.status_code == 200
    replay = _reverse(
        client, keys["care"], tx, reason=REASON, reactivate_voucher=False, request_id="rv-1"
    )
    assert replay.json() == first.json()
    other = _reverse(
        client, keys["care"], tx, reason="else", reactivate_voucher=False, request_id="rv-1"
    )
    assert other.status_code == 409


def test_two_reversals_at_once_make_one(
    rt: Runtime, client: TestClient, shop: Shop, keys: dict[str, dict[str, str]]
) -> None:
    tx = _redeem(client, keys, shop.pins[0])["transaction_id"]

    def reverse(n: int) -> tuple[int, str]:
        answer = _reverse(client, keys["care"], tx, reason=f"call {n}", reactivate_voucher=True)
        return answer.status_code, answer.json()["reversal_id"]

    with ThreadPoolExecutor(8) as pool:
        outcomes = set(pool.map(reverse, range(8)))
    assert len(outcomes) == 1
    ((status, reversal_id),) = outcomes
    assert status == 200
    assert _ledger(rt, "reversal") == [(-1000, reversal_id)]
    assert balance(rt) == 0
    assert verify.verify(rt).ok
