"""The SOAP channel as a partner uses it: zeep reads the WSDL from a live server socket.

Every response zeep receives is also validated against the schema embedded in the WSDL,
so the server can never answer something its own contract does not allow.
"""

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import uvicorn
import zeep
from fastapi import FastAPI
from lxml import etree
from zeep.exceptions import Fault
from zeep.plugins import HistoryPlugin
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from tests import factories
from voms.api.app import create_app
from voms.channels import soap
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime
from voms.services import auth, transactions
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest
from voms.serving import TokenBuckets

MSISDN = "254700000001"
OTHER = "254700000002"
ENV = "http://schemas.xmlsoap.org/soap/envelope/"
TNS = soap.TNS
WSSE = soap.WSSE
OPERATIONS = {
    "Redeem",
    "Reserve",
    "Commit",
    "Revoke",
    "VoucherTypeRecharge",
    "GetVoucher",
    "GetSubscriber",
}


# --- a real server on a real socket, and zeep clients of it ------------------------------------


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``voms serve`` in a thread: uvicorn serving ``app`` (its lifespan too) on a free
    loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if uv.started:
            break
        thread.join(0.01)
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def server(rt: Runtime) -> Iterator[str]:
    with serving(create_app(rt)) as url:
        yield url


class SchemaCheck(HistoryPlugin):  # type: ignore[misc]
    """Keeps the last exchange, and fails on any response outside the WSDL's schema."""

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> Any:
        body = envelope.find(f"{{{ENV}}}Body")
        payload = body[0]
        if payload.tag != f"{{{ENV}}}Fault":
            soap.request_schema().validate(payload)
        return super().ingress(envelope, http_headers, operation)


class Client:
    def __init__(self, url: str, **auth: Any) -> None:
        self.history = SchemaCheck()
        session = requests.Session()
        if "bearer" in auth:
            session.headers["Authorization"] = f"Bearer {auth.pop('bearer')}"
        self.session = session
        self.zeep = zeep.Client(
            f"{url}/soap?wsdl",
            transport=Transport(session=session, timeout=10),
            plugins=[self.history],
            **auth,
        )
        self.service = self.zeep.service

    @property
    def last_response(self) -> str:
        return etree.tostring(self.history.last_received["envelope"], encoding="unicode")

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def keys(rt: Runtime) -> dict[str, str]:
    """Secrets of API keys named after their roles."""
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return {
        role: factories.api_key(
            rt,
            role,
            name=f"soap-{role}",
            allow=("voucher-type-recharge",) if role == "channel" else (),
        )
        for role in ("channel", "care", "auditor")
    }


@pytest.fixture
def pins(rt: Runtime, keys: dict[str, str]) -> list[tuple[str, str]]:
    return factories.active_batch(rt, count=6)


@pytest.fixture
def client(server: str, keys: dict[str, str]) -> Iterator[Client]:
    """A channel partner: WS-Security UsernameToken with its key name and key."""
    partner = Client(server, wsse=UsernameToken("soap-channel", keys["channel"]))
    yield partner
    partner.close()


@pytest.fixture
def care(server: str, keys: dict[str, str]) -> Iterator[Client]:
    """Customer care: the same key in an Authorization: Bearer header instead."""
    desk = Client(server, bearer=keys["care"])
    yield desk
    desk.close()


def _post(url: str, body: bytes | str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/soap",
        content=body,
        headers={"Content-Type": "text/xml; charset=utf-8", **headers},
        timeout=10,
    )


def _fault(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/xml")
    fault = etree.fromstring(response.content).find(f"{{{ENV}}}Body/{{{ENV}}}Fault")
    assert fault is not None
    return fault.findtext("faultcode") or "", fault.findtext("faultstring") or ""


def _envelope(body: str, header: str = "") -> str:
    return (
        f'<soap:Envelope xmlns:soap="{ENV}" xmlns:v="{TNS}">'
        f"<soap:Header>{header}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    )


def _soap_transactions(rt: Runtime) -> list[dict[str, Any]]:
    listed = transactions.list_transactions(rt, CONSOLE, limit=100)["transactions"]
    return [tx for tx in listed if tx["channel"] == "soap"]


# --- the WSDL --------------------------------------------------------------------------------


def test_the_wsdl_names_every_operation_and_the_address_the_client_reached(server: str) -> None:
    answer = httpx.get(f"{server}/soap?wsdl")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/xml")
    wsdl = etree.fromstring(answer.content)
    address = wsdl.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address is not None
    assert address.get("location") == f"{server}/soap"
    [binding] = zeep.Client(f"{server}/soap?wsdl").wsdl.bindings.values()
    assert set(binding.all()) == OPERATIONS
    assert httpx.get(f"{server}/soap").status_code == 404


def test_a_configured_address_goes_into_the_wsdl(
    rt: Runtime, server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = rt.settings.model_copy(update={"soap_address": "https://vouchers.example.net/soap"})
    monkeypatch.setattr(rt, "settings", public)
    wsdl = etree.fromstring(httpx.get(f"{server}/soap?WSDL").content)
    address = wsdl.find(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address is not None
    assert address.get("location") == "https://vouchers.example.net/soap"


# --- redemption ------------------------------------------------------------------------------


def test_redeeming_credits_the_wallet_and_answers_the_new_balance(
    rt: Runtime, client: Client, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    answer = client.service.Redeem(Msisdn="+254 700 000001", Pin=pin, RequestId="r-1")
    assert (answer.ResultCode, answer.ResultText) == (0, "Success")
    assert (answer.Serial, answer.VoucherType, answer.Scenario) == (serial, "TOPUP10", 1)
    assert (answer.Msisdn, answer.RecipientMsisdn, answer.ProductType) == (MSISDN, MSISDN, "GOLD")
    [credit] = answer.Credits.Credit
    assert (credit.BalanceType, credit.Amount, credit.Balance) == ("CASH", 1000, 1000)
    assert credit.ExpiresAt.utcoffset() is not None
    assert answer.AccountExpiresAt.utcoffset() is not None
    assert answer.TransactionId
    assert pin not in client.last_response

    again = client.service.Redeem(Msisdn="+254 700 000001", Pin=pin, RequestId="r-1")
    assert (again.ResultCode, again.TransactionId) == (0, answer.TransactionId)
    reused = client.service.Redeem(Msisdn=MSISDN, Pin=pin, RequestId="r-1")
    assert (reused.ResultCode, reused.Credits) == (5006, None)

    recorded, failed = sorted(_soap_transactions(rt), key=lambda tx: tx["result_code"])
    assert (failed["result_code"], failed["channel"]) == (5006, "soap")
    assert recorded["id"] == answer.TransactionId
    assert (recorded["kind"], recorded["result_code"], recorded["actor"]) == (
        "redemption",
        0,
        "soap-channel",
    )


def test_redeeming_for_another_number_credits_the_recipient(
    rt: Runtime, client: Client, care: Client, pins: list[tuple[str, str]]
) -> None:
    factories.subscriber(rt, OTHER)
    answer = client.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1], RecipientMsisdn=OTHER)
    assert (answer.ResultCode, answer.RecipientMsisdn) == (0, OTHER)
    assert care.service.GetSubscriber(Msisdn=OTHER).Balances.Balance[0].Amount == 1000
    assert (
        care.service.GetSubscriber(Msisdn=MSISDN).Balances is None
    )  # an empty <Balances/>, to zeep


def test_every_failure_is_a_result_code_not_a_fault_and_is_recorded(
    rt: Runtime, client: Client, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    wrong_digit = pin[:-1] + str((int(pin[-1]) + 1) % 10)
    unknown = with_check_digit("9" * (len(pin) - 1))
    assert unknown not in {p for _, p in pins}
    assert client.service.Redeem(Msisdn=MSISDN, Pin=pin)["ResultCode"] == 0
    cases = [
        ({"Pin": wrong_digit}, 2002, "Invalid voucher number"),
        ({"Pin": pin[:-2]}, 4001, "Invalid voucher number length"),
        ({"Pin": unknown}, 2004, "Voucher not found"),
        ({"Pin": pin}, 2009, "Voucher already redeemed"),
        ({"Pin": pins[1][1], "Serial": pins[2][0]}, 2003, "Invalid serial number"),
        ({"Pin": pins[1][1], "Msisdn": "not-a-number"}, 4006, None),
        ({"Pin": pins[1][1], "Msisdn": "254799999999"}, 5001, "Subscriber not found"),
        ({"Pin": pins[1][1], "Scenario": 7}, 4005, "Invalid scenario number"),
        ({"Pin": pins[1][1], "ServiceProvider": "NOPE"}, 4000, None),
        ({"Pin": ""}, 4007, "Missing voucher number"),
        ({"Pin": pins[1][1], "RequestId": "x" * 101}, 4008, "Invalid request parameter"),
    ]
    for fields, code, text in cases:
        answer = client.service.Redeem(**{"Msisdn": MSISDN, **fields})
        assert answer.ResultCode == code, fields
        assert text is None or answer.ResultText == text
        assert answer.Credits is None
        assert fields["Pin"] == "" or fields["Pin"] not in client.last_response
    assert client.service.Redeem(Msisdn=MSISDN, Pin=pins[1][1], RequestId="x" * 101).Detail
    recorded = _soap_transactions(rt)
    failures = sorted(tx["result_code"] for tx in recorded if tx["result_code"] != 0)
    assert failures == sorted([code for _, code, _ in cases] + [4008])
    assert serial in {tx["serial"] for tx in recorded}


def test_a_voucher_with_several_scenarios_lists_them_on_2008(
    rt: Runtime, client: Client, keys: dict[str, str]
) -> None:
    credit = {"balance_type": "SMS", "amount": 10, "balance_expiry_extension_days": 10}
    factories.voucher_type(
        rt,
        "BUNDLE",
        scenarios=[
            {"number": 1, "name": "10 SMS", "credits": [credit]},
            {
                "number": 2,
                "name": "10 SMS + SILVER",
                "credits": [credit],
                "account_expiry_extension_days": 5,
                "new_product_type": "SILVER",
            },
        ],
    )
    [(_, pin)] = factories.active_batch(rt, "BUNDLE", count=1)
    answer = client.service.Redeem(Msisdn=MSISDN, Pin=pin)
    assert (answer.ResultCode, answer.ResultText) == (2008, "Scenario required")
    first, second = answer.Scenarios.Scenario
    assert (first.Number, first.Name, first.NewProductType) == (1, "10 SMS", None)
    assert (second.Number, second.NewProductType, second.AccountExpiryExtensionDays) == (
        2,
        "SILVER",
        5,
    )
    assert second.Credits.Credit[0].BalanceExpiryExtensionDays == 10
    chosen = client.service.Redeem(Msisdn=MSISDN, Pin=pin, Scenario=2)
    assert (chosen.ResultCode, chosen.Scenario, chosen.ProductType) == (0, 2, "SILVER")


# --- reservations and voucher-type recharges ---------------------------------------------------


def test_reserve_then_commit_redeems_the_voucher_without_touching_the_wallet(
    rt: Runtime, client: Client, care: Client, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    reserved = client.service.Reserve(Msisdn=MSISDN, Pin=pin)
    assert (reserved.ResultCode, reserved.Serial, reserved.VoucherType) == (0, serial, "TOPUP10")
    [credit] = reserved.Credits.Credit
    assert (credit.BalanceType, credit.Amount, credit.Balance) == ("CASH", 1000, None)
    assert credit.BalanceExpiryExtensionDays == 30
    assert reserved.AccountExpiryExtensionDays == 60
    assert reserved.ExpiresAt.utcoffset() is not None
    assert care.service.GetVoucher(Serial=serial).State == "reserved"
    assert client.service.Redeem(Msisdn=MSISDN, Pin=pin).ResultCode == 2010

    committed = client.service.Commit(ReservationId=reserved.ReservationId)
    assert (committed.ResultCode, committed.Serial, committed.ReservationId) == (
        0,
        serial,
        reserved.ReservationId,
    )
    assert committed.Credits.Credit[0].Amount == 1000
    assert care.service.GetVoucher(Serial=serial).State == "redeemed"
    assert (
        care.service.GetSubscriber(Msisdn=MSISDN).Balances is None
    )  # an empty <Balances/>, to zeep
    again = client.service.Commit(ReservationId=reserved.ReservationId)
    assert (again.ResultCode, again.ResultText) == (2005, "Reservation not found")
    kinds = [tx["kind"] for tx in _soap_transactions(rt) if tx["result_code"] == 0]
    assert sorted(kinds) == ["commit", "reservation"]


def test_reserve_then_revoke_makes_the_voucher_redeemable_again(
    client: Client, care: Client, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    reserved = client.service.Reserve(Msisdn=MSISDN, Pin=pin)
    revoked = client.service.Revoke(ReservationId=reserved.ReservationId, RequestId="rv-1")
    assert (revoked.ResultCode, revoked.Serial) == (0, serial)
    assert revoked.Credits is None  # an empty <Credits/>, to zeep
    assert care.service.GetVoucher(Serial=serial).State == "active"
    assert client.service.Revoke(ReservationId="no-such-reservation").ResultCode == 2005
    assert client.service.Redeem(Msisdn=MSISDN, Pin=pin).ResultCode == 0


def test_a_voucher_type_recharge_credits_as_a_voucher_would(
    client: Client, care: Client, keys: dict[str, str]
) -> None:
    answer = client.service.VoucherTypeRecharge(Msisdn=MSISDN, VoucherType="TOPUP10")
    assert (answer.ResultCode, answer.VoucherType, answer.Scenario) == (0, "TOPUP10", 1)
    assert answer.Credits.Credit[0].Balance == 1000
    assert answer.TransactionId
    unknown = client.service.VoucherTypeRecharge(Msisdn=MSISDN, VoucherType="NOPE")
    assert (unknown.ResultCode, unknown.ResultText) == (5005, "Voucher type not found")
    [balance] = care.service.GetSubscriber(Msisdn=MSISDN).Balances.Balance
    assert (balance.BalanceType, balance.Amount) == ("CASH", 1000)


# --- lookups ---------------------------------------------------------------------------------


def test_get_voucher_by_serial_or_pin_never_returns_the_pin(
    client: Client, care: Client, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    client.service.Redeem(Msisdn=MSISDN, Pin=pin)
    for query in ({"Serial": serial}, {"Pin": pin}):
        voucher = care.service.GetVoucher(**query)
        assert (voucher.ResultCode, voucher.Serial, voucher.State) == (0, serial, "redeemed")
        assert (voucher.VoucherType, voucher.RedeemedBy, voucher.BatchState) == (
            "TOPUP10",
            MSISDN,
            "active",
        )
        events = voucher.History.Event
        assert [e.Action for e in events][-1] == "redemption"
        assert events[-1].Channel == "soap"
        assert pin not in care.last_response
    assert care.service.GetVoucher(Serial="999999999999").ResultCode == 2004
    assert care.service.GetVoucher(Serial="12ab").ResultCode == 2003
    malformed = care.service.GetVoucher(Pin="12")
    assert (malformed.ResultCode, malformed.Detail) == (4008, "pin: invalid voucher number length")


def test_get_subscriber_shows_state_product_type_and_balances(
    client: Client, care: Client, pins: list[tuple[str, str]]
) -> None:
    client.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1])
    client.service.Redeem(Msisdn=MSISDN, Pin=pins[1][1])
    subscriber = care.service.GetSubscriber(Msisdn="+254700000001")
    assert (subscriber.ResultCode, subscriber.Msisdn, subscriber.State) == (0, MSISDN, "active")
    assert (subscriber.ServiceProvider, subscriber.ProductType) == ("ACME", "GOLD")
    assert subscriber.AccountExpiresAt.utcoffset() is not None
    assert [(b.BalanceType, b.Amount) for b in subscriber.Balances.Balance] == [("CASH", 2000)]
    assert care.service.GetSubscriber(Msisdn="254799999999").ResultCode == 5001
    assert care.service.GetSubscriber(Msisdn="abc").ResultCode == 4006


# --- authentication and access -----------------------------------------------------------------


def test_a_username_token_must_name_the_key_it_carries(
    server: str, keys: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    cases = [
        UsernameToken("soap-channel", "voms_wrong"),
        UsernameToken("soap-care", keys["channel"]),  # a real key, under another name
        UsernameToken("soap-channel", keys["channel"], use_digest=True),
    ]
    for token in cases:
        partner = Client(server, wsse=token)
        with pytest.raises(Fault) as fault:
            partner.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1])
        assert fault.value.code == "soap:Client"
        assert fault.value.message.startswith("Authentication failed")
        partner.close()
    good = Client(server, wsse=UsernameToken("soap-channel", keys["channel"]))
    assert good.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1]).ResultCode == 0
    good.close()


def test_without_credentials_or_with_a_revoked_key_every_call_faults(
    rt: Runtime, server: str, keys: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    anonymous = Client(server)
    with pytest.raises(Fault) as fault:
        anonymous.service.GetSubscriber(Msisdn=MSISDN)
    assert fault.value.code == "soap:Client"
    assert "Authentication required" in fault.value.message
    anonymous.close()

    auth.revoke_api_key(rt, CONSOLE, "soap-channel")
    for partner in (
        Client(server, bearer=keys["channel"]),
        Client(server, wsse=UsernameToken("soap-channel", keys["channel"])),
    ):
        with pytest.raises(Fault) as fault:
            partner.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1])
        assert fault.value.message.startswith("Authentication failed")
        partner.close()
    assert _soap_transactions(rt) == []


def test_the_bearer_header_authenticates_as_in_the_rest_api(
    rt: Runtime, server: str, keys: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    partner = Client(server, bearer=keys["channel"])
    assert partner.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1]).ResultCode == 0
    partner.close()
    assert [tx["actor"] for tx in _soap_transactions(rt)] == ["soap-channel"]


def test_the_rest_api_rate_limit_applies_per_key_with_5007(
    rt: Runtime, keys: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    app = create_app(rt)
    app.state.rate_limits = TokenBuckets(rate=0.001, burst=2)
    with serving(app) as url:
        partner = Client(url, bearer=keys["channel"])
        first = partner.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1])
        second = partner.service.Redeem(Msisdn=MSISDN, Pin=pins[1][1])
        third = partner.service.Redeem(Msisdn=MSISDN, Pin=pins[2][1])
        care = Client(url, bearer=keys["care"])  # another key has its own bucket
        voucher = care.service.GetVoucher(Serial=pins[2][0])
        partner.close()
        care.close()
    assert [first.ResultCode, second.ResultCode] == [0, 0]
    assert (third.ResultCode, third.ResultText) == (5007, "Too many requests")
    assert (voucher.ResultCode, voucher.State) == (0, "active")


def test_roles_apply_as_in_the_rest_api(
    server: str, client: Client, keys: dict[str, str], pins: list[tuple[str, str]]
) -> None:
    with pytest.raises(Fault) as fault:
        client.service.GetSubscriber(Msisdn=MSISDN)  # a channel key may only redeem
    assert (fault.value.code, fault.value.message) == (
        "soap:Client",
        "Forbidden: role channel may not lookup",
    )
    auditor = Client(server, bearer=keys["auditor"])
    with pytest.raises(Fault) as fault:
        auditor.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1])
    assert fault.value.message == "Forbidden: role auditor may not redeem"
    auditor.close()


# --- malformed messages: faults with a clear reason, no traceback, no PIN ------------------------


def test_malformed_xml_is_a_client_fault_that_echoes_no_pin(
    server: str, keys: dict[str, str], pins: list[tuple[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "voms.soap")  # every fault is logged at INFO
    pin = pins[0][1]
    bearer = {"Authorization": f"Bearer {keys['channel']}"}
    broken = _envelope(f"<v:Redeem><v:Msisdn>{MSISDN}</v:Msisdn><v:Pin>{pin}</v:Pn></v:Redeem>")
    code, text = _fault(_post(server, broken, **bearer))
    assert code == "soap:Client"
    assert text.startswith("Malformed XML: Opening and ending tag mismatch")
    code, text = _fault(_post(server, f"{pin}", **bearer))
    assert (code, text.startswith("Malformed XML")) == ("soap:Client", True)
    assert pin not in text
    code, text = _fault(_post(server, "", **bearer))
    assert text == "Empty request: a SOAP 1.1 envelope was expected"
    assert "soap fault Client: Malformed XML" in caplog.text
    assert pin not in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (
            "<v:Redeem><v:Msisdn>1</v:Msisdn><v:Pin>{pin}</v:Pin><v:Scenario>two</v:Scenario>"
            "</v:Redeem>",
            "soap:Client",
            "Invalid request at /Redeem/Scenario: not a valid xs:int",
        ),
        (
            "<v:Redeem><v:Msisdn>1</v:Msisdn></v:Redeem>",
            "soap:Client",
            "Invalid request at /Redeem: The content of element '{urn:openvoms:soap:v1}Redeem'"
            " is not complete. Tag 'tns:Pin' expected.",
        ),
        (
            "<v:Redeem><v:Msisdn>1</v:Msisdn><v:Pin><b>{pin}</b></v:Pin></v:Redeem>",
            "soap:Client",
            "Invalid request at /Redeem/Pin: a simple content element can't have child elements",
        ),
        (
            '<Redeem xmlns="urn:example:other"><Msisdn>1</Msisdn><Pin>{pin}</Pin></Redeem>',
            "soap:Client",
            "Unknown operation {urn:example:other}Redeem; see /soap?wsdl",
        ),
        (
            "<v:Redeem><v:Msisdn>1</v:Msisdn><v:Pin>{pin}</v:Pin></v:Redeem><v:Redeem/>",
            "soap:Client",
            "The Body must hold exactly one element, not 2",
        ),
        (
            "<v:GetVoucher><v:Serial>1</v:Serial><v:Pin>{pin}</v:Pin></v:GetVoucher>",
            "soap:Client",
            "Invalid request at /GetVoucher: Unexpected child with tag"
            " '{urn:openvoms:soap:v1}Pin' at position 2.",
        ),
    ],
)
def test_requests_outside_the_schema_are_client_faults(
    rt: Runtime,
    server: str,
    keys: dict[str, str],
    pins: list[tuple[str, str]],
    body: str,
    code: str,
    text: str,
) -> None:
    pin = pins[0][1]
    answer = _post(
        server,
        _envelope(body.format(pin=pin)),
        Authorization=f"Bearer {keys['care']}",
        SOAPAction='"urn:openvoms:soap:v1/Redeem"',
    )
    assert _fault(answer) == (code, text)
    assert pin not in answer.text
    assert _soap_transactions(rt) == []


def test_envelopes_that_are_not_soap_1_1_are_refused(server: str, keys: dict[str, str]) -> None:
    bearer = {"Authorization": f"Bearer {keys['care']}"}
    soap12 = (
        '<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body>'
        f'<GetSubscriber xmlns="{TNS}"><Msisdn>{MSISDN}</Msisdn></GetSubscriber>'
        "</e:Body></e:Envelope>"
    )
    assert _fault(_post(server, soap12, **bearer)) == (
        "soap:VersionMismatch",
        "SOAP 1.2 is not supported: send a SOAP 1.1 envelope",
    )
    assert _fault(_post(server, "<GetSubscriber/>", **bearer)) == (
        "soap:Client",
        "Not a SOAP 1.1 envelope: root element GetSubscriber",
    )
    no_body = f'<soap:Envelope xmlns:soap="{ENV}"/>'
    assert _fault(_post(server, no_body, **bearer)) == ("soap:Client", "The envelope has no Body")
    unknown_header = '<x:Trace xmlns:x="urn:example" soap:mustUnderstand="1"/>'
    request = _envelope(f"<v:GetSubscriber><v:Msisdn>{MSISDN}</v:Msisdn></v:GetSubscriber>")
    assert _fault(
        _post(server, request.replace("<soap:Header>", f"<soap:Header>{unknown_header}"), **bearer)
    ) == (
        "soap:MustUnderstand",
        "Header {urn:example}Trace is not understood",
    )


def test_a_document_type_declaration_is_refused_and_no_entity_is_resolved(
    server: str, keys: dict[str, str]
) -> None:
    xxe = '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + _envelope(
        "<v:GetSubscriber><v:Msisdn>&x;</v:Msisdn></v:GetSubscriber>"
    )
    answer = _post(server, xxe, Authorization=f"Bearer {keys['care']}")
    assert _fault(answer) == (
        "soap:Client",
        "A SOAP message must not contain a document type declaration",
    )
    assert "root:" not in answer.text


def test_a_request_over_the_size_limit_is_refused(server: str, keys: dict[str, str]) -> None:
    padding = "<!--" + "x" * soap.MAX_REQUEST_BYTES + "-->"
    request = _envelope(f"<v:GetSubscriber><v:Msisdn>{MSISDN}</v:Msisdn></v:GetSubscriber>")
    answer = _post(server, padding + request, Authorization=f"Bearer {keys['care']}")
    assert _fault(answer) == ("soap:Client", f"Request larger than {soap.MAX_REQUEST_BYTES} bytes")


def test_a_username_token_is_read_from_a_hand_written_header(
    server: str, keys: dict[str, str]
) -> None:
    """What a non-zeep client sends: the token profile's example, PasswordText by default."""
    token = (
        f'<wsse:Security xmlns:wsse="{WSSE}" soap:mustUnderstand="1"><wsse:UsernameToken>'
        f"<wsse:Username>soap-care</wsse:Username>"
        f"<wsse:Password>{keys['care']}</wsse:Password>"
        "</wsse:UsernameToken></wsse:Security>"
    )
    request = _envelope(f"<v:GetSubscriber><v:Msisdn>{MSISDN}</v:Msisdn></v:GetSubscriber>", token)
    answer = _post(server, request)
    assert answer.status_code == 200
    payload = etree.fromstring(answer.content).find(f"{{{ENV}}}Body/{{{TNS}}}GetSubscriberResponse")
    assert payload is not None
    soap.request_schema().validate(payload)
    assert payload.findtext(f"{{{TNS}}}ResultCode") == "0"
    assert payload.findtext(f"{{{TNS}}}Msisdn") == MSISDN


def test_unexpected_errors_are_server_faults_without_a_traceback(
    server: str,
    client: Client,
    pins: list[tuple[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(rt: object, who: object, request: RedemptionRequest) -> None:
        # The message quotes the PIN, as a driver's error may quote a statement's values.
        raise RuntimeError(f"database exploded at pin={request.pin}")

    monkeypatch.setattr(soap.redemption, "redeem", broken)
    with caplog.at_level(logging.ERROR, "voms.soap"), pytest.raises(Fault) as fault:
        client.service.Redeem(Msisdn=MSISDN, Pin=pins[0][1])
    assert (fault.value.code, fault.value.message) == ("soap:Server", "Internal error")
    assert "database exploded" not in client.last_response
    assert "unhandled error on POST /soap: RuntimeError" in caplog.text
    assert pins[0][1] not in caplog.text
