"""TM Forum TMF654 topupBalance over HTTP: a BSS's top-up is a redemption, and the answer
and its read-back are TopupBalance resources as the specification shapes them."""

from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.conftest import bearer
from voms.runtime import Runtime

MSISDN = "254700000001"
PATH = "/tmf-api/prepayBalanceManagement/v4/topupBalance"

# TMF654 Prepay Balance Management v4.0.0: the TopupBalance resource and the references
# it holds, as the specification's schema defines them (Extensible: @type, @baseType,
# @schemaLocation), plus `characteristic`, where docs/api.md puts the result code.
_REF_EXTRAS = {
    "@baseType": {"type": "string"},
    "@schemaLocation": {"type": "string"},
    "@type": {"type": "string"},
    "@referredType": {"type": "string"},
}
_REF = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "href": {"type": "string"},
        "name": {"type": "string"},
        **_REF_EXTRAS,
    },
    "additionalProperties": False,
}
_RELATED_PARTY = {
    "type": "object",
    "required": ["id", "@referredType"],
    "properties": {**_REF["properties"], "role": {"type": "string"}},  # type: ignore[dict-item]
    "additionalProperties": False,
}
_DATE_TIME = {"type": "string", "format": "date-time"}
TOPUP_BALANCE: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "id": {"type": "string"},
        "href": {"type": "string"},
        "confirmationDate": _DATE_TIME,
        "description": {"type": "string"},
        "isAutoTopup": {"type": "boolean"},
        "numberOfPeriods": {"type": "integer"},
        "reason": {"type": "string"},
        "requestedDate": _DATE_TIME,
        "voucher": {"type": "string"},
        "amount": {
            "type": "object",
            "properties": {"amount": {"type": "number"}, "units": {"type": "string"}},
            "additionalProperties": False,
        },
        "balanceTopup": _REF,
        "bucket": _REF,
        "channel": _REF,
        "logicalResource": {"type": "array", "items": _REF},
        "partyAccount": _REF,
        "paymentMethod": _REF,
        "product": {"type": "array", "items": _REF},
        "recurringPeriod": {"type": "string"},
        "relatedParty": {"type": "array", "items": _RELATED_PARTY},
        "requestor": _RELATED_PARTY,
        "status": {"enum": ["created", "failed", "cancelled", "completed"]},
        "usageType": {"type": "string"},
        "validFor": {"type": "object"},
        "characteristic": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "value"],
                "properties": {
                    "name": {"type": "string"},
                    "value": {},
                    "valueType": {"type": "string"},
                },
                "additionalProperties": False,
            },
        },
        "@baseType": {"type": "string"},
        "@schemaLocation": {"type": "string"},
        "@type": {"type": "string"},
    },
    "additionalProperties": False,
}
SHAPE = jsonschema_rs.validator_for(TOPUP_BALANCE)


def _characteristic(resource: dict[str, Any], name: str) -> Any:
    (value,) = [c["value"] for c in resource["characteristic"] if c["name"] == name]
    return value


@pytest.fixture
def pins(rt: Runtime) -> list[tuple[str, str]]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return factories.active_batch(rt, count=3)


@pytest.fixture
def channel(rt: Runtime) -> dict[str, str]:
    return bearer(factories.api_key(rt, "channel"))


def _create(pin: str, msisdn: str = MSISDN, **extra: Any) -> dict[str, Any]:
    return {
        "@type": "TopupBalanceCreate",
        "voucher": pin,
        "relatedParty": [{"id": msisdn, "role": "customer", "@referredType": "Individual"}],
        "channel": {"name": "USSD"},
        "usageType": "monetary",
        **extra,
    }


def test_a_topup_with_a_voucher_is_a_redemption_answered_as_a_topup_balance(
    client: TestClient, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    answer = client.post(PATH, headers=channel, json=_create(pin))
    assert answer.status_code == 201, answer.text
    topup = answer.json()
    SHAPE.validate(topup)
    assert topup["status"] == "completed"
    assert topup["href"] == f"{PATH}/{topup['id']}"
    assert topup["@type"] == "TopupBalance"
    assert topup["voucher"] == serial  # the serial: never the PIN
    assert pin not in answer.text
    assert topup["amount"] == {"amount": 1000, "units": "CASH"}
    assert topup["channel"]["name"] == "ussd"
    assert topup["relatedParty"][0] == {
        "id": MSISDN,
        "role": "customer",
        "@referredType": "Individual",
    }
    assert _characteristic(topup, "resultCode") == 0
    assert topup["confirmationDate"] == topup["requestedDate"]
    # It is the redemption: the wallet is credited and the transaction is the topup.
    balances = client.get(f"/api/v1/subscribers/{MSISDN}", headers=bearer_admin(client))
    assert balances.json()["balances"][0]["amount"] == 1000
    read = client.get(f"{PATH}/{topup['id']}", headers=channel)
    assert read.status_code == 200
    assert read.json() == topup


def bearer_admin(client: TestClient) -> dict[str, str]:
    rt: Runtime = client.app.state.runtime  # type: ignore[attr-defined]
    return bearer(factories.api_key(rt, "admin", name="tmf-admin"))


def test_a_refused_topup_is_a_failed_topup_balance_with_its_result_code(
    client: TestClient, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    _, pin = pins[0]
    assert client.post(PATH, headers=channel, json=_create(pin)).status_code == 201
    again = client.post(PATH, headers=channel, json=_create(pin))
    assert again.status_code == 409
    failed = again.json()
    SHAPE.validate(failed)
    assert failed["status"] == "failed"
    assert _characteristic(failed, "resultCode") == 2009
    assert "confirmationDate" not in failed
    assert pin not in again.text
    read = client.get(f"{PATH}/{failed['id']}", headers=channel)
    assert read.json() == failed
    nobody = client.post(PATH, headers=channel, json=_create(pins[1][1], msisdn="254799999999"))
    assert (nobody.status_code, _characteristic(nobody.json(), "resultCode")) == (404, 5001)
    no_party = client.post(PATH, headers=channel, json={"voucher": pins[1][1]})
    assert _characteristic(no_party.json(), "resultCode") == 4006
    SHAPE.validate(no_party.json())


def test_a_topup_is_read_only_by_whom_may_see_it(
    client: TestClient, rt: Runtime, channel: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    topup = client.post(PATH, headers=channel, json=_create(pins[0][1])).json()
    other_channel = bearer(factories.api_key(rt, "channel", name="other-channel"))
    assert client.get(f"{PATH}/{topup['id']}", headers=other_channel).status_code == 404
    care = bearer(factories.api_key(rt, "care", "ACME", name="care"))
    assert client.get(f"{PATH}/{topup['id']}", headers=care).status_code == 200
    factories.standard_catalog(rt, "OTHER")
    other_care = bearer(factories.api_key(rt, "care", "OTHER", name="other-care"))
    assert client.get(f"{PATH}/{topup['id']}", headers=other_care).status_code == 404
    auditor = bearer(factories.api_key(rt, "auditor"))
    assert client.get(f"{PATH}/{topup['id']}", headers=auditor).status_code == 403
    assert client.post(PATH, headers=auditor, json=_create(pins[1][1])).status_code == 403
    assert client.post(PATH, json=_create(pins[1][1])).status_code == 401
    assert client.get(f"{PATH}/nope", headers=channel).status_code == 404
    assert client.get(f"{PATH}/{'x' * 200}", headers=channel).status_code in (404, 422)
