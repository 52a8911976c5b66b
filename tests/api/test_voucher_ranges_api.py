"""Range operations that live on the batch: activate a serial range, change its expiry."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests import factories
from tests.api.conftest import bearer
from tests.channel_support import configure
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Forbidden
from voms.runtime import Runtime
from voms.services import ranges
from voms.services.auth import CONSOLE

MSISDN = "254700000001"


@pytest.fixture
def keys(rt: Runtime) -> dict[str, dict[str, str]]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return {role: bearer(factories.api_key(rt, role)) for role in ("operator", "channel", "care")}


@pytest.fixture
def stock(rt: Runtime, keys: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """Ten vouchers of an inactive (generated) batch."""
    return factories.active_batch(rt, count=10, activate=False)


def _redeem(client: TestClient, keys: dict[str, dict[str, str]], pin: str) -> int:
    answer = client.post(
        "/api/v1/redemptions", headers=keys["channel"], json={"msisdn": MSISDN, "pin": pin}
    )
    return int(answer.json()["result_code"])


def _activate(client: TestClient, who: dict[str, str], first: str, last: str) -> Any:
    return client.post(
        "/api/v1/vouchers/activate", headers=who, json={"serial_from": first, "serial_to": last}
    )


def _batch(client: TestClient, keys: dict[str, dict[str, str]], batch_id: int) -> Any:
    return client.get(f"/api/v1/batches/{batch_id}", headers=keys["operator"]).json()


def _counts_hold(rt: Runtime) -> dict[int, int]:
    """Every batch's count is the number of its vouchers; returns them by batch."""
    b, v = t.batches, t.vouchers
    with rt.engine.connect() as conn:
        declared = {
            row.id: row._mapping["count"] for row in conn.execute(select(b.c.id, b.c.count))
        }
        actual = {
            row.batch_id: row.n
            for row in conn.execute(
                select(v.c.batch_id, func.count().label("n")).group_by(v.c.batch_id)
            )
        }
    assert declared == actual
    return actual


def test_activating_a_range_of_an_inactive_batch_makes_that_range_alone_redeemable(
    rt: Runtime, client: TestClient, keys: dict[str, dict[str, str]], stock: list[tuple[str, str]]
) -> None:
    serials = [serial for serial, _ in stock]
    pins = [pin for _, pin in stock]
    answer = _activate(client, keys["operator"], serials[2], serials[5])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["action"], body["matched"], body["affected"], body["unchanged"]) == (
        "activate",
        4,
        4,
        0,
    )
    (moved,) = body["batches"]
    parent, part = moved["from_batch"], moved["to_batch"]
    assert part != parent
    assert (moved["state"], moved["count"]) == ("active", 4)
    assert [_redeem(client, keys, pins[i]) for i in (3, 0, 6)] == [0, 2011, 2011]
    assert _batch(client, keys, parent)["count"] == 6
    shown = _batch(client, keys, part)
    assert (shown["state"], shown["parent_batch_id"], shown["count"]) == ("active", parent, 4)
    voucher = client.get(f"/api/v1/vouchers/{serials[4]}", headers=keys["care"]).json()
    assert (voucher["state"], voucher["batch_id"]) == ("active", part)
    assert "voucher_activate" in [h["action"] for h in voucher["history"]]

    # The next range sold joins the part instead of making another.
    more = _activate(client, keys["operator"], serials[6], serials[7]).json()
    assert more["batches"][0]["to_batch"] == part
    assert (_batch(client, keys, part)["count"], _batch(client, keys, part)["serial_last"]) == (
        6,
        serials[7],
    )
    # Activating the batch itself activates the rest; the part was active already.
    assert (
        client.post(f"/api/v1/batches/{parent}/activate", headers=keys["operator"]).status_code
        == 200
    )
    assert _redeem(client, keys, pins[0]) == 0
    # Freezing the batch freezes its part too.
    assert (
        client.post(f"/api/v1/batches/{parent}/freeze", headers=keys["operator"]).status_code == 200
    )
    assert _redeem(client, keys, pins[4]) == 2001
    assert _counts_hold(rt) == {parent: 4, part: 6}
    with rt.engine.connect() as conn:
        audited = (
            conn.execute(
                select(t.audit_log.c.object_id).where(t.audit_log.c.action == "voucher.activate")
            )
            .scalars()
            .all()
        )
    assert audited == [f"{serials[2]}-{serials[5]}", f"{serials[6]}-{serials[7]}"]


def test_a_range_that_is_a_whole_batch_changes_the_batch_row_alone(
    rt: Runtime, client: TestClient, keys: dict[str, dict[str, str]], stock: list[tuple[str, str]]
) -> None:
    first, last = stock[0][0], stock[-1][0]
    body = _activate(client, keys["operator"], "0", "999999999999").json()
    assert body["affected"] == 10
    (moved,) = body["batches"]
    assert moved["from_batch"] == moved["to_batch"]
    assert (first, last) == (body["batches"][0]["serial_from"], body["batches"][0]["serial_to"])
    again = _activate(client, keys["operator"], first, last)
    assert again.status_code == 409
    assert len(_counts_hold(rt)) == 1


def test_changing_the_expiry_of_a_range(
    rt: Runtime, client: TestClient, keys: dict[str, dict[str, str]], stock: list[tuple[str, str]]
) -> None:
    serials = [serial for serial, _ in stock]
    pins = [pin for _, pin in stock]
    _activate(client, keys["operator"], serials[0], serials[-1])
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    answer = client.post(
        "/api/v1/vouchers/amend",
        headers=keys["operator"],
        json={
            "serial_from": serials[0],
            "serial_to": serials[1],
            "expires_at": past,
            "reason": "damaged print run",
        },
    )
    assert answer.status_code == 200, answer.text
    ((moved),) = answer.json()["batches"]
    parent, part = moved["from_batch"], moved["to_batch"]
    assert [_redeem(client, keys, pins[i]) for i in (0, 2)] == [2014, 0]
    expired = client.get(f"/api/v1/vouchers/{serials[1]}", headers=keys["care"]).json()
    assert (expired["state"], expired["batch_id"]) == ("expired", part)
    # The batch's new expiry is its parts' too.
    later = (utcnow() + timedelta(days=30)).isoformat()
    patched = client.patch(
        f"/api/v1/batches/{parent}", headers=keys["operator"], json={"expires_at": later}
    )
    assert patched.status_code == 200
    assert _redeem(client, keys, pins[1]) == 0
    assert _counts_hold(rt) == {parent: 8, part: 2}


def test_who_may_change_ranges_and_what_is_refused(
    rt: Runtime, client: TestClient, keys: dict[str, dict[str, str]], stock: list[tuple[str, str]]
) -> None:
    serial = stock[0][0]
    factories.standard_catalog(rt, "BETA")
    beta = bearer(factories.api_key(rt, "operator", "BETA"))
    bad: dict[str, Any] = {"serial_from": ["x"], "expires_at": "soon", "extra": 1}
    for path, good in (
        ("/api/v1/vouchers/activate", {"serial_from": serial}),
        ("/api/v1/vouchers/amend", {"serial_from": serial, "expires_at": "2099-01-01T00:00+00:00"}),
    ):
        assert client.post(path, json=bad).status_code == 401
        for role in ("channel", "care"):
            assert client.post(path, headers=keys[role], json=bad).status_code == 403
            assert client.post(path, headers=keys[role], content=b"{no").status_code == 403
        assert client.post(path, headers=keys["operator"], json=bad).status_code == 422
        assert client.post(path, headers=keys["operator"], content=b"{no").status_code == 422
        assert client.post(path, headers=beta, json=good).status_code == 404
    naive = {"serial_from": serial, "expires_at": "2099-01-01T00:00:00"}
    assert (
        client.post("/api/v1/vouchers/amend", headers=keys["operator"], json=naive).status_code
        == 422
    )
    backwards = {"serial_from": "200", "serial_to": "100"}
    assert (
        client.post(
            "/api/v1/vouchers/activate", headers=keys["operator"], json=backwards
        ).status_code
        == 422
    )
    assert _activate(client, keys["operator"], "1", "2").status_code == 404


def test_overlapping_activations_at_once_lose_no_voucher(
    rt: Runtime, client: TestClient, keys: dict[str, dict[str, str]], stock: list[tuple[str, str]]
) -> None:
    serials = [serial for serial, _ in stock]
    spans = [(0, 4), (3, 7), (5, 9), (2, 6), (8, 9), (1, 1)]

    def activate(bounds: tuple[int, int]) -> int:
        return _activate(
            client, keys["operator"], serials[bounds[0]], serials[bounds[1]]
        ).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(activate, spans))
    assert set(statuses) <= {200, 409}
    counts = _counts_hold(rt)
    assert sum(counts.values()) == 10
    with rt.engine.connect() as conn:
        b, v = t.batches, t.vouchers
        states = conn.execute(select(b.c.state).join(v, v.c.batch_id == b.c.id)).scalars().all()
    assert set(states) == {"active"}


def test_four_eyes_applies_to_a_range_as_to_the_batch(
    rt: Runtime, client: TestClient, keys: dict[str, dict[str, str]], stock: list[tuple[str, str]]
) -> None:
    configure(rt, require_approval=True)
    with pytest.raises(Forbidden, match="four-eyes"):
        ranges.activate_range(rt, CONSOLE, stock[0][0], stock[1][0])
    other = _activate(client, keys["operator"], stock[0][0], stock[1][0])  # not its maker
    assert other.status_code == 200
