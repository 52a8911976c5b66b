"""Batches and vouchers over HTTP (API.md "Administration" and "Lookups")."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.domain.pins import with_check_digit
from voms.domain.states import (
    BATCH_TRANSITIONS,
    VOUCHER_TRANSITIONS,
    BatchAction,
    BatchState,
    VoucherAction,
    VoucherState,
)
from voms.runtime import Runtime
from voms.services import generation, lifecycle, redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

Headers = dict[str, str]
OPERATOR_ACTIONS = ["activate", "freeze", "unfreeze", "delete"]


@pytest.fixture
def catalog(rt: Runtime) -> None:
    factories.standard_catalog(rt)


def _post_batch(client: TestClient, headers: Headers, **body: Any) -> Any:
    return client.post(
        "/api/v1/batches", headers=headers, json={"voucher_type": "TOPUP10", "count": 5, **body}
    )


def _batch_in(rt: Runtime, state: BatchState) -> int:
    """A batch brought into ``state`` the way production brings it there."""
    if state in (BatchState.GENERATING, BatchState.FAILED):
        batch_id = int(
            generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=3).batch["batch_id"]
        )
        if state is BatchState.FAILED:
            assert generation.fail_stalled_batches(rt, CONSOLE, timedelta(0)) == [batch_id]
        return batch_id
    batch_id = int(
        generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=3)["batch_id"]
    )
    path = {
        BatchState.GENERATED: [],
        BatchState.ACTIVE: ["activate"],
        BatchState.FROZEN: ["activate", "freeze"],
        BatchState.DELETED: ["delete"],
    }[state]
    for action in path:
        lifecycle.change_batch(rt, CONSOLE, batch_id, action)
    return batch_id


# --- generation ----------------------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
def test_ordering_a_batch_answers_as_api_md_shows(client: TestClient, admin: Headers) -> None:
    answer = _post_batch(client, admin, count=7, expires_at="2030-01-01T00:00:00+03:00")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["state"] == "generated"
    assert body["count"] == body["generated_count"] == 7
    assert (body["serial_first"], body["serial_last"]) == ("100000000001", "100000000007")
    assert body["expires_at"].startswith("2029-12-31T21:00:00")
    assert isinstance(body["batch_id"], int)
    shown = client.get(f"/api/v1/batches/{body['batch_id']}", headers=admin).json()
    assert shown == body


@pytest.mark.usefixtures("catalog")
def test_a_large_batch_is_generated_in_the_background_with_visible_progress(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    rt.settings = rt.settings.model_copy(
        update={"background_generation_threshold": 100, "generation_chunk_size": 100}
    )
    answer = _post_batch(client, admin, count=1000)
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "generating"
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = client.get(f"/api/v1/batches/{answer.json()['batch_id']}", headers=admin).json()
        seen.append(shown["generated_count"])
        if shown["state"] != "generating":
            break
        time.sleep(0.05)
    assert shown["state"] == "generated"
    assert shown["generated_count"] == 1000
    assert seen == sorted(seen)


@pytest.mark.usefixtures("catalog")
def test_a_request_id_makes_ordering_idempotent(client: TestClient, admin: Headers) -> None:
    first = _post_batch(client, admin, request_id="order-1")
    again = _post_batch(client, admin, request_id="order-1")
    assert first.status_code == again.status_code == 201
    assert again.json()["batch_id"] == first.json()["batch_id"]
    listed = client.get("/api/v1/batches", headers=admin).json()["items"]
    assert len(listed) == 1
    other = _post_batch(client, admin, request_id="order-1", count=6)
    assert other.status_code == 409
    # Request ids belong to one API key: another key may use the same id.
    colleague = bearer(factories.api_key(rt=client.app.state.runtime, role="operator"))
    assert (
        _post_batch(client, colleague, request_id="order-1").json()["batch_id"]
        != (first.json()["batch_id"])
    )


@pytest.mark.usefixtures("catalog")
def test_an_unknown_voucher_type_is_404_naming_it(client: TestClient, admin: Headers) -> None:
    answer = _post_batch(client, admin, voucher_type="GOLD99")
    assert answer.status_code == 404
    assert "GOLD99" in answer.json()["detail"]


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    "body",
    [
        {"count": 0},
        {"count": -3},
        {"count": 10_000_001},
        {"count": "many"},
        {"count": 2.5},
        {"count": None},
        {"voucher_type": None},
        {"voucher_type": "X" * 40},
        {"expires_at": "2030-01-01T00:00:00"},
        {"expires_at": "2001-01-01T00:00:00+00:00"},
        {"expires_at": "soon"},
        {"request_id": "r" * 101},
        {"colour": "blue"},
    ],
)
def test_bad_orders_are_refused_with_422_never_500(
    client: TestClient, admin: Headers, body: dict[str, Any]
) -> None:
    answer = _post_batch(client, admin, **body)
    assert answer.status_code == 422, answer.text


@pytest.mark.usefixtures("catalog")
def test_malformed_requests_are_never_500(client: TestClient, admin: Headers) -> None:
    for method, path, kwargs in [
        ("post", "/api/v1/batches", {"content": b"{not json"}),
        ("post", "/api/v1/batches", {"json": [1, 2]}),
        ("get", "/api/v1/batches/99999999999", {}),
        ("get", "/api/v1/batches/abc", {}),
        ("get", "/api/v1/batches?limit=0", {}),
        ("get", "/api/v1/batches?state=bogus", {}),
        ("get", "/api/v1/batches?cursor=x", {}),
        ("get", "/api/v1/batches?since=yesterday", {}),
        ("get", "/api/v1/batches?since=2020-01-01T00:00:00", {}),
        ("get", "/api/v1/vouchers/12ab", {}),
        ("get", "/api/v1/vouchers/" + "9" * 40, {}),
        ("post", "/api/v1/batches/1/activate", {"json": {"reason": "x" * 300}}),
        ("patch", "/api/v1/batches/1", {"json": {"expires_at": "2030-01-01"}}),
        ("post", "/api/v1/vouchers/freeze", {"json": {"serial_from": "2", "serial_to": "1"}}),
        ("post", "/api/v1/vouchers/freeze", {"json": {"serial_from": "abc"}}),
        ("post", "/api/v1/vouchers/freeze", {"json": {}}),
        ("post", "/api/v1/vouchers/lookup", {"json": {"pin": "12345678901234"}}),
        ("post", "/api/v1/vouchers/lookup", {"json": {"pin": "not a pin"}}),
        ("post", "/api/v1/vouchers/lookup", {"json": {"pin": 5}}),
    ]:
        answer = getattr(client, method)(path, headers=admin, **kwargs)
        assert 400 <= answer.status_code < 500, (path, kwargs, answer.status_code, answer.text)


# --- state transitions ----------------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("state", list(BatchState))
@pytest.mark.parametrize("action", OPERATOR_ACTIONS)
def test_every_batch_transition_is_applied_or_refused_with_409(
    rt: Runtime, client: TestClient, admin: Headers, state: BatchState, action: str
) -> None:
    batch_id = _batch_in(rt, state)
    answer = client.post(f"/api/v1/batches/{batch_id}/{action}", headers=admin)
    expected = BATCH_TRANSITIONS.get((state, BatchAction(action)))
    shown = client.get(f"/api/v1/batches/{batch_id}", headers=admin).json()
    if expected is None:
        assert answer.status_code == 409, answer.text
        assert action in answer.json()["detail"]
        assert state.value in answer.json()["detail"]
        assert shown["state"] == state.value
    else:
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == shown["state"] == expected.value


@pytest.mark.usefixtures("catalog")
def test_generation_steps_are_not_operator_actions(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    batch_id = _batch_in(rt, BatchState.GENERATING)
    for action in ("complete", "fail"):
        assert client.post(f"/api/v1/batches/{batch_id}/{action}", headers=admin).status_code in (
            404,
            405,
        )
    assert client.post("/api/v1/batches/999/activate", headers=admin).status_code == 404


@pytest.mark.usefixtures("catalog")
def test_four_eyes_the_key_that_ordered_a_batch_cannot_activate_it(
    rt: Runtime, client: TestClient
) -> None:
    rt.settings = rt.settings.model_copy(update={"require_approval": True})
    maker = bearer(factories.api_key(rt, "operator", name="maker"))
    checker = bearer(factories.api_key(rt, "operator", name="checker"))
    batch = _post_batch(client, maker).json()
    refused = client.post(f"/api/v1/batches/{batch['batch_id']}/activate", headers=maker)
    assert refused.status_code == 403
    assert "four-eyes" in refused.json()["detail"]
    # The maker may still freeze or delete; only activation needs a second person.
    assert (
        client.post(f"/api/v1/batches/{batch['batch_id']}/freeze", headers=maker).status_code == 200
    )
    batch = _post_batch(client, maker).json()
    approved = client.post(f"/api/v1/batches/{batch['batch_id']}/activate", headers=checker)
    assert approved.status_code == 200
    assert approved.json()["state"] == "active"


@pytest.mark.usefixtures("catalog")
def test_without_four_eyes_the_maker_may_activate(rt: Runtime, client: TestClient) -> None:
    maker = bearer(factories.api_key(rt, "operator", name="maker"))
    batch = _post_batch(client, maker).json()
    assert (
        client.post(f"/api/v1/batches/{batch['batch_id']}/activate", headers=maker).json()["state"]
        == "active"
    )


@pytest.mark.usefixtures("catalog")
def test_roles_and_scope_guard_batches(rt: Runtime, client: TestClient, admin: Headers) -> None:
    factories.standard_catalog(rt, "OTHER")
    batch = _post_batch(client, admin).json()
    care = bearer(factories.api_key(rt, "care"))
    channel = bearer(factories.api_key(rt, "channel"))
    other_operator = bearer(factories.api_key(rt, "operator", sp="OTHER"))
    auditor = bearer(factories.api_key(rt, "auditor"))
    assert _post_batch(client, care).status_code == 403
    assert _post_batch(client, other_operator).status_code == 403
    assert client.get("/api/v1/batches", headers=channel).status_code == 403
    assert client.get(f"/api/v1/batches/{batch['batch_id']}", headers=auditor).status_code == 200
    path = f"/api/v1/batches/{batch['batch_id']}"
    assert client.post(f"{path}/activate", headers=auditor).status_code == 403
    assert client.post(f"{path}/activate", headers=other_operator).status_code == 403
    assert client.get(path, headers=other_operator).status_code == 403
    assert client.get("/api/v1/batches", headers=other_operator).json()["items"] == []
    assert client.get("/api/v1/batches").status_code == 401


# --- listing and amending -------------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
def test_batches_are_listed_newest_first_with_filters_and_paging(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    factories.voucher_type(rt, "TOPUP50")
    ids = [_post_batch(client, admin).json()["batch_id"] for _ in range(5)]
    topup50 = _post_batch(client, admin, voucher_type="TOPUP50").json()["batch_id"]
    client.post(f"/api/v1/batches/{ids[1]}/activate", headers=admin)

    def listed(query: str) -> Any:
        answer = client.get(f"/api/v1/batches?{query}", headers=admin)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert [b["batch_id"] for b in listed("")["items"]] == [topup50, *reversed(ids)]
    assert [b["batch_id"] for b in listed("state=active")["items"]] == [ids[1]]
    assert [b["batch_id"] for b in listed("voucher_type=TOPUP50")["items"]] == [topup50]
    assert listed("service_provider=ACME&state=deleted")["items"] == []
    pages, cursor = [], ""
    while True:
        page = listed(f"limit=4{cursor}")
        pages.append([b["batch_id"] for b in page["items"]])
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert pages == [[topup50, ids[4], ids[3], ids[2]], [ids[1], ids[0]]]
    since = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+", "%2B")
    assert listed(f"since={since}")["items"] == []
    missing = client.get("/api/v1/batches?voucher_type=NOPE", headers=admin)
    assert missing.status_code == 404
    assert "NOPE" in missing.json()["detail"]


@pytest.mark.usefixtures("catalog")
def test_amending_the_expiry_moves_every_voucher_of_the_batch(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    pairs = factories.active_batch(rt, count=3)
    batch_id = client.get(f"/api/v1/vouchers/{pairs[0][0]}", headers=admin).json()["batch_id"]
    answer = client.patch(
        f"/api/v1/batches/{batch_id}",
        headers=admin,
        json={"expires_at": "2031-06-30T12:00:00+00:00"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["expires_at"].startswith("2031-06-30T12:00:00")
    shown = client.get(f"/api/v1/vouchers/{pairs[2][0]}", headers=admin).json()
    assert shown["expires_at"].startswith("2031-06-30T12:00:00")
    assert shown["history"][-1]["action"] == "amend_expiry"
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    client.patch(f"/api/v1/batches/{batch_id}", headers=admin, json={"expires_at": past})
    assert client.get(f"/api/v1/vouchers/{pairs[2][0]}", headers=admin).json()["state"] == (
        "expired"
    )
    client.post(f"/api/v1/batches/{batch_id}/delete", headers=admin)
    refused = client.patch(
        f"/api/v1/batches/{batch_id}", headers=admin, json={"expires_at": "2031-01-01T00:00Z"}
    )
    assert refused.status_code == 409


# --- serial ranges ------------------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
def test_a_serial_range_is_frozen_unfrozen_and_deleted(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    pairs = factories.active_batch(rt, count=10)
    serials = [s for s, _ in pairs]

    def state(serial: str) -> str:
        return str(client.get(f"/api/v1/vouchers/{serial}", headers=admin).json()["state"])

    frozen = client.post(
        "/api/v1/vouchers/freeze",
        headers=admin,
        json={"serial_from": serials[2], "serial_to": serials[5], "reason": "stolen"},
    )
    assert frozen.status_code == 200, frozen.text
    assert frozen.json() == {
        "action": "freeze",
        "serial_from": serials[2],
        "serial_to": serials[5],
        "matched": 4,
        "affected": 4,
        "unchanged": 0,
    }
    assert [state(s) for s in serials] == ["active"] * 2 + ["frozen"] * 4 + ["active"] * 4
    # Overlapping range: only the vouchers that are available can be frozen.
    again = client.post(
        "/api/v1/vouchers/freeze",
        headers=admin,
        json={"serial_from": serials[4], "serial_to": serials[7]},
    ).json()
    assert (again["matched"], again["affected"], again["unchanged"]) == (4, 2, 2)
    one = client.post("/api/v1/vouchers/unfreeze", headers=admin, json={"serial_from": serials[3]})
    assert one.json()["affected"] == 1
    assert state(serials[3]) == "active"
    refused = client.post(
        "/api/v1/vouchers/unfreeze", headers=admin, json={"serial_from": serials[0]}
    )
    assert refused.status_code == 409
    assert "available" in refused.json()["detail"]
    deleted = client.post(
        "/api/v1/vouchers/delete",
        headers=admin,
        json={"serial_from": serials[0], "serial_to": serials[-1], "reason": "damaged"},
    ).json()
    assert deleted["affected"] == 10
    assert {state(s) for s in serials} == {"deleted"}
    nothing = client.post(
        "/api/v1/vouchers/delete",
        headers=admin,
        json={"serial_from": serials[0], "serial_to": serials[-1]},
    )
    assert nothing.status_code == 409
    missing = client.post(
        "/api/v1/vouchers/freeze", headers=admin, json={"serial_from": "999999999999"}
    )
    assert missing.status_code == 404


@pytest.mark.usefixtures("catalog")
def test_a_range_operation_never_touches_a_redeemed_voucher_or_another_provider(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    factories.standard_catalog(rt, "OTHER")
    ours = factories.active_batch(rt, count=3)
    theirs = factories.active_batch(rt, "TOPUP10_OTHER", count=3)
    factories.subscriber(rt, "254700000001")
    redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=ours[1][1]))
    acme_operator = bearer(factories.api_key(rt, "operator", sp="ACME"))
    answer = client.post(
        "/api/v1/vouchers/delete",
        headers=acme_operator,
        json={"serial_from": ours[0][0], "serial_to": theirs[-1][0]},
    ).json()
    assert (answer["matched"], answer["affected"], answer["unchanged"]) == (3, 2, 1)
    states = {
        s: client.get(f"/api/v1/vouchers/{s}", headers=admin).json()["state"]
        for s, _ in ours + theirs
    }
    assert [states[s] for s, _ in ours] == ["deleted", "redeemed", "deleted"]
    assert {states[s] for s, _ in theirs} == {"active"}


# --- lookups -------------------------------------------------------------------------------


@pytest.mark.usefixtures("catalog")
def test_lookups_by_serial_and_pin_show_state_and_history_never_the_pin(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    pairs = factories.active_batch(rt, count=3)
    serial, pin = pairs[1]
    client.post(
        "/api/v1/vouchers/freeze",
        headers=admin,
        json={"serial_from": serial, "reason": "investigation"},
    )
    care = bearer(factories.api_key(rt, "care"))
    by_serial = client.get(f"/api/v1/vouchers/{serial}", headers=care)
    by_pin = client.post("/api/v1/vouchers/lookup", headers=care, json={"pin": pin})
    assert by_serial.status_code == by_pin.status_code == 200
    assert by_serial.json() == by_pin.json()
    body = by_serial.json()
    assert {k: body[k] for k in ("serial", "state", "voucher_type", "redeemed_at")} == {
        "serial": serial,
        "state": "frozen",
        "voucher_type": "TOPUP10",
        "redeemed_at": None,
    }
    assert [(h["action"], h["actor"]) for h in body["history"]] == [
        ("generate", "console"),
        ("generated", "console"),
        ("activate", "console"),
        ("voucher_freeze", "admin-all"),
    ]
    assert body["history"][-1]["reason"] == "investigation"
    for answer in (by_serial, by_pin):
        assert pin not in answer.text
        assert "pin" not in answer.json()
    # A serial is a number: written without its zero padding it names the same voucher.
    assert client.get(f"/api/v1/vouchers/{int(serial)}", headers=care).status_code == 200


@pytest.mark.usefixtures("catalog")
def test_a_pin_lookup_checks_the_pin_before_looking(
    rt: Runtime, client: TestClient, admin: Headers
) -> None:
    (serial, pin), *_ = factories.active_batch(rt, count=1)
    typo = pin[:-1] + str((int(pin[-1]) + 1) % 10)
    bad = client.post("/api/v1/vouchers/lookup", headers=admin, json={"pin": typo})
    assert bad.status_code == 422
    assert typo not in bad.text
    unknown = with_check_digit("1234567890123")
    assert (
        client.post("/api/v1/vouchers/lookup", headers=admin, json={"pin": unknown}).status_code
        == 404
    )
    spaced = " ".join([pin[:4], pin[4:8], pin[8:]])
    found = client.post("/api/v1/vouchers/lookup", headers=admin, json={"pin": spaced})
    assert found.json()["serial"] == serial


@pytest.mark.usefixtures("catalog")
def test_lookups_respect_roles_and_scope(rt: Runtime, client: TestClient) -> None:
    factories.standard_catalog(rt, "OTHER")
    (serial, pin), *_ = factories.active_batch(rt, count=1)
    other_care = bearer(factories.api_key(rt, "care", sp="OTHER"))
    channel = bearer(factories.api_key(rt, "channel"))
    assert client.get(f"/api/v1/vouchers/{serial}", headers=other_care).status_code == 404
    assert (
        client.post("/api/v1/vouchers/lookup", headers=other_care, json={"pin": pin}).status_code
        == 404
    )
    assert client.get(f"/api/v1/vouchers/{serial}", headers=channel).status_code == 403


def _voucher_in(rt: Runtime, own_state: VoucherState) -> str:
    """An active voucher brought into its own ``own_state`` the way production does."""
    ((serial, pin),) = factories.active_batch(rt, count=1)
    if own_state in (VoucherState.REDEEMED, VoucherState.RESERVED):
        factories.subscriber(rt, "254700000001")
        use = redemption.redeem if own_state is VoucherState.REDEEMED else redemption.reserve
        use(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin))
    elif own_state is not VoucherState.AVAILABLE:
        action = "freeze" if own_state is VoucherState.FROZEN else "delete"
        lifecycle.change_vouchers(rt, CONSOLE, action, serial)
    return serial


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize("own_state", list(VoucherState))
@pytest.mark.parametrize("action", ["freeze", "unfreeze", "delete"])
def test_every_voucher_transition_is_applied_or_refused_with_409(
    rt: Runtime, client: TestClient, admin: Headers, own_state: VoucherState, action: str
) -> None:
    serial = _voucher_in(rt, own_state)
    answer = client.post(f"/api/v1/vouchers/{action}", headers=admin, json={"serial_from": serial})
    expected = VOUCHER_TRANSITIONS.get((own_state, VoucherAction(action)))
    shown = client.get(f"/api/v1/vouchers/{serial}", headers=admin).json()
    if expected is None:
        assert answer.status_code == 409, answer.text
        assert own_state.value in answer.json()["detail"]
        assert shown["voucher_state"] == own_state.value
    else:
        assert answer.status_code == 200, answer.text
        assert answer.json()["affected"] == 1
        assert shown["voucher_state"] == expected.value
