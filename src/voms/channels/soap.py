"""SOAP 1.1 channel: a WSDL 1.1 document/literal service over the redemption services.

No maintained Python SOAP server exists, so the WSDL is hand-written (``soap.wsdl``
beside this module) and served with its address filled in; the XML schema embedded in
it validates every request (xmlschema). Requests are parsed with lxml without DTDs,
entities or network access.

Outcomes of the redemption family, failures included, are ordinary responses carrying
``ResultCode`` and ``ResultText``; SOAP faults (HTTP 500, as SOAP 1.1 and WS-I Basic
Profile R1126 require) are reserved for messages that are malformed, unauthenticated
or not allowed. A fault never carries a traceback or a PIN.
"""

import functools
import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import xmlschema
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from lxml import etree

from voms.domain.errors import Forbidden, Invalid, NotFound, ResultError, VomsError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import care, redemption, wallet
from voms.services.auth import Principal, authenticate
from voms.services.redemption import RechargeRequest, RedemptionRequest, SettlementRequest
from voms.serving import TokenBuckets, run_redemption_work

log = logging.getLogger("voms.soap")

WSDL_FILE = Path(__file__).with_name("soap.wsdl")
TNS = "urn:openvoms:soap:v1"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSDL_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"
XSD = "http://www.w3.org/2001/XMLSchema"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
# WS-Security UsernameToken profile; its Password Type is this URI + "#PasswordText".
USERNAME_PROFILE = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
)
CHANNEL = "soap"
MAX_REQUEST_BYTES = 64 * 1024
XML_MEDIA_TYPE = "text/xml; charset=utf-8"

router = APIRouter(tags=["soap"], include_in_schema=False)


class SoapFault(Exception):
    """A SOAP 1.1 fault: ``code`` is Client, Server, VersionMismatch or MustUnderstand."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


# --- the WSDL and its schema ---------------------------------------------------------------


def _parser() -> etree.XMLParser:
    # No DTD loading, no entity expansion, no network: XXE and entity bombs have no hold.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=True,
    )


@functools.cache
def _wsdl_tree() -> etree._ElementTree:
    return etree.parse(str(WSDL_FILE), _parser())


@functools.cache
def request_schema() -> xmlschema.XMLSchema10:
    """The XML schema embedded in the WSDL: what every request is validated against."""
    schema = _wsdl_tree().find(f".//{{{XSD}}}schema")
    assert schema is not None, "soap.wsdl has no embedded xs:schema"
    return xmlschema.XMLSchema10(etree.tostring(schema, encoding="unicode"))


@functools.lru_cache(maxsize=32)
def wsdl_document(address: str) -> bytes:
    """The WSDL with ``address`` as the service's soap:address."""
    tree = _wsdl_tree()
    copy = etree.fromstring(etree.tostring(tree), _parser())
    for location in copy.iter(f"{{{WSDL_SOAP}}}address"):
        location.set("location", address)
    return etree.tostring(copy, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _service_address(request: Request) -> str:
    configured: str | None = request.app.state.runtime.settings.soap_address
    if configured:
        return configured
    # The URL the client reached (uvicorn applies X-Forwarded-* from trusted proxies).
    return str(request.url.replace(query="", fragment=""))


# --- responses: an ordered field list per schema type -----------------------------------------


@dataclass(frozen=True)
class _Field:
    """One element of a response type: XML name, key in the service's answer, list items."""

    xml: str
    key: str
    item: str | None = None
    fields: tuple["_Field", ...] = ()


def _f(xml: str, key: str) -> _Field:
    return _Field(xml, key)


def _list(xml: str, key: str, item: str, fields: tuple[_Field, ...]) -> _Field:
    return _Field(xml, key, item, fields)


_CREDIT = (
    _f("BalanceType", "balance_type"),
    _f("Amount", "amount"),
    _f("Balance", "balance"),
    _f("ExpiresAt", "expires_at"),
    _f("BalanceExpiryExtensionDays", "balance_expiry_extension_days"),
)
_CREDITS = _list("Credits", "credits", "Credit", _CREDIT)
_SCENARIOS = _list(
    "Scenarios",
    "scenarios",
    "Scenario",
    (
        _f("Number", "number"),
        _f("Name", "name"),
        _f("Default", "default"),
        _CREDITS,
        _f("AccountExpiryExtensionDays", "account_expiry_extension_days"),
        _f("NewProductType", "new_product_type"),
    ),
)
_REWARDS = _list("Rewards", "rewards", "Reward", (_f("Plan", "plan"), _CREDITS))
_OUTCOME = (
    _f("ResultCode", "result_code"),
    _f("ResultText", "result_text"),
    _f("Detail", "detail"),
)

_REDEEM_RESPONSE = (
    *_OUTCOME,
    _f("TransactionId", "transaction_id"),
    _f("Serial", "serial"),
    _f("VoucherType", "voucher_type"),
    _f("Scenario", "scenario"),
    _f("Msisdn", "msisdn"),
    _f("RecipientMsisdn", "recipient_msisdn"),
    _CREDITS,
    _f("AccountExpiresAt", "account_expires_at"),
    _f("ProductType", "product_type"),
    _REWARDS,
    _SCENARIOS,
)
_RESERVATION_OUTCOME = (
    *_OUTCOME,
    _f("TransactionId", "transaction_id"),
    _f("ReservationId", "reservation_id"),
    _f("Serial", "serial"),
    _f("VoucherType", "voucher_type"),
    _f("Scenario", "scenario"),
    _f("Msisdn", "msisdn"),
    _f("RecipientMsisdn", "recipient_msisdn"),
    _CREDITS,
)
_RESERVE_RESPONSE = (
    *_RESERVATION_OUTCOME,
    _f("AccountExpiryExtensionDays", "account_expiry_extension_days"),
    _f("NewProductType", "new_product_type"),
    _f("ExpiresAt", "expires_at"),
    _SCENARIOS,
)
_RECHARGE_RESPONSE = tuple(f for f in _REDEEM_RESPONSE if f.xml != "Serial")
_VOUCHER_RESPONSE = (
    *_OUTCOME,
    _f("Serial", "serial"),
    _f("State", "state"),
    _f("VoucherState", "voucher_state"),
    _f("BatchId", "batch_id"),
    _f("BatchState", "batch_state"),
    _f("VoucherType", "voucher_type"),
    _f("ExpiresAt", "expires_at"),
    _f("RedeemedAt", "redeemed_at"),
    _f("RedeemedBy", "redeemed_by"),
    _list(
        "History",
        "history",
        "Event",
        (
            _f("At", "at"),
            _f("Actor", "actor"),
            _f("Action", "action"),
            _f("BatchId", "batch_id"),
            _f("SerialFrom", "serial_from"),
            _f("SerialTo", "serial_to"),
            _f("Reason", "reason"),
            _f("Channel", "channel"),
            _f("Msisdn", "msisdn"),
        ),
    ),
)
_SUBSCRIBER_RESPONSE = (
    *_OUTCOME,
    _f("Msisdn", "msisdn"),
    _f("ServiceProvider", "service_provider"),
    _f("ProductType", "product_type"),
    _f("State", "state"),
    _f("AccountExpiresAt", "account_expires_at"),
    _f("CreatedAt", "created_at"),
    _list(
        "Balances",
        "balances",
        "Balance",
        (_f("BalanceType", "balance_type"), _f("Amount", "amount"), _f("ExpiresAt", "expires_at")),
    ),
)


def _lexical(value: object) -> str:
    """The XML Schema lexical form of a service value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _write(parent: etree._Element, fields: Iterable[_Field], values: Mapping[str, Any]) -> None:
    for field in fields:
        value = values.get(field.key)
        if value is None:
            continue
        child = etree.SubElement(parent, f"{{{TNS}}}{field.xml}")
        if field.item is None:
            child.text = _lexical(value)
            continue
        for entry in value:
            _write(etree.SubElement(child, f"{{{TNS}}}{field.item}"), field.fields, entry)


def _envelope(payload: etree._Element) -> bytes:
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV, "v": TNS})
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(payload)
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _answer(element: str, fields: tuple[_Field, ...], values: Mapping[str, Any]) -> Response:
    payload = etree.Element(f"{{{TNS}}}{element}")
    _write(payload, fields, values)
    return Response(_envelope(payload), media_type=XML_MEDIA_TYPE)


_NAMESPACE = re.compile(r"\{[^}]*\}|\b\w+:(?=\w)")

# A fault text never echoes a PIN the client sent: neither the PINs of the request nor
# any long digit run (a PIN in a malformed message that could not be read as one).
_DIGIT_RUN = re.compile(r"\d{6,}")


def _fault(fault: SoapFault, secrets: Iterable[str] = ()) -> Response:
    text = fault.text
    for secret in secrets:
        text = text.replace(secret, "…")
    text = _DIGIT_RUN.sub("…", text)
    body = etree.Element(f"{{{SOAP_ENV}}}Fault")
    # SOAP 1.1: faultcode and faultstring are unqualified; the code is a QName.
    etree.SubElement(body, "faultcode").text = f"soap:{fault.code}"
    etree.SubElement(body, "faultstring").text = text
    log.info("soap fault %s: %s", fault.code, text)
    return Response(_envelope(body), status_code=500, media_type=XML_MEDIA_TYPE)


# --- operations: request element → service call → response ------------------------------------

Values = dict[str, Any]


@dataclass(frozen=True)
class _Operation:
    response: str
    fields: tuple[_Field, ...]
    call: Callable[[Runtime, Principal, Values], Values]


def _outcome(call: Callable[[], Values]) -> Values:
    """A service answer, with a failed outcome turned into an answer too."""
    try:
        return call()
    except ResultError as error:
        return error.result.body(**error.extra)


def _redemption_request(values: Values) -> RedemptionRequest:
    return RedemptionRequest(
        msisdn=values.get("Msisdn"),
        pin=values.get("Pin"),
        recipient_msisdn=values.get("RecipientMsisdn"),
        scenario=values.get("Scenario"),
        serial=values.get("Serial"),
        channel=CHANNEL,
        request_id=values.get("RequestId"),
        service_provider=values.get("ServiceProvider"),
    )


def _redeem(rt: Runtime, who: Principal, values: Values) -> Values:
    return _outcome(lambda: redemption.redeem(rt, who, _redemption_request(values)))


def _reserve(rt: Runtime, who: Principal, values: Values) -> Values:
    return _outcome(lambda: redemption.reserve(rt, who, _redemption_request(values)))


def _reservation_action(values: Values) -> SettlementRequest:
    return SettlementRequest(channel=CHANNEL, request_id=values.get("RequestId"))


def _commit(rt: Runtime, who: Principal, values: Values) -> Values:
    reservation_id = values.get("ReservationId") or ""
    action = _reservation_action(values)
    return _outcome(lambda: redemption.commit(rt, who, reservation_id, action))


def _revoke(rt: Runtime, who: Principal, values: Values) -> Values:
    reservation_id = values.get("ReservationId") or ""
    action = _reservation_action(values)
    return _outcome(lambda: redemption.revoke(rt, who, reservation_id, action))


def _recharge(rt: Runtime, who: Principal, values: Values) -> Values:
    request = RechargeRequest(
        msisdn=values.get("Msisdn"),
        voucher_type=values.get("VoucherType"),
        recipient_msisdn=values.get("RecipientMsisdn"),
        scenario=values.get("Scenario"),
        channel=CHANNEL,
        request_id=values.get("RequestId"),
        service_provider=values.get("ServiceProvider"),
    )
    return _outcome(lambda: redemption.recharge(rt, who, request))


def _get_voucher(rt: Runtime, who: Principal, values: Values) -> Values:
    try:
        if "Serial" in values:
            voucher = care.voucher_by_serial(rt, who, values["Serial"] or "")
        else:
            voucher = care.voucher_by_pin(rt, who, values.get("Pin") or "")
    except NotFound:
        return Result.VOUCHER_NOT_FOUND.body()
    except Invalid as error:
        # care names the malformed field in its detail (never the PIN itself).
        invalid = Result.INVALID_SERIAL_NUMBER if "Serial" in values else Result.INVALID_PARAMETER
        return invalid.body(detail=error.detail)
    return Result.SUCCESS.body(**voucher)


def _get_subscriber(rt: Runtime, who: Principal, values: Values) -> Values:
    try:
        subscriber = wallet.get_subscriber(rt, who, values.get("Msisdn") or "")
    except NotFound:
        return Result.SUBSCRIBER_NOT_FOUND.body()
    except Invalid as error:
        return Result.INVALID_SUBSCRIBER.body(detail=error.detail)
    return Result.SUCCESS.body(**subscriber)


OPERATIONS: dict[str, _Operation] = {
    f"{{{TNS}}}Redeem": _Operation("RedeemResponse", _REDEEM_RESPONSE, _redeem),
    f"{{{TNS}}}Reserve": _Operation("ReserveResponse", _RESERVE_RESPONSE, _reserve),
    f"{{{TNS}}}Commit": _Operation("CommitResponse", _RESERVATION_OUTCOME, _commit),
    f"{{{TNS}}}Revoke": _Operation("RevokeResponse", _RESERVATION_OUTCOME, _revoke),
    f"{{{TNS}}}VoucherTypeRecharge": _Operation(
        "VoucherTypeRechargeResponse", _RECHARGE_RESPONSE, _recharge
    ),
    f"{{{TNS}}}GetVoucher": _Operation("GetVoucherResponse", _VOUCHER_RESPONSE, _get_voucher),
    f"{{{TNS}}}GetSubscriber": _Operation(
        "GetSubscriberResponse", _SUBSCRIBER_RESPONSE, _get_subscriber
    ),
}

# Request elements whose content is an int in the schema (already validated as one).
_INTEGERS = frozenset({"Scenario"})


# --- reading a request -------------------------------------------------------------------------


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise SoapFault("Client", f"Request larger than {MAX_REQUEST_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise SoapFault("Client", f"Request larger than {MAX_REQUEST_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> etree._Element:
    if not body.strip():
        raise SoapFault("Client", "Empty request: a SOAP 1.1 envelope was expected")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as error:
        raise SoapFault("Client", f"Malformed XML: {error.msg}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise SoapFault("Client", "A SOAP message must not contain a document type declaration")
    return root


def _tag(element: etree._Element) -> str | None:
    """The element's ``{namespace}name``; None for a comment or processing instruction."""
    return element.tag if isinstance(element.tag, str) else None


def _split(envelope: etree._Element) -> tuple[etree._Element | None, etree._Element]:
    """The Header (if any) and the one element in the Body."""
    tag = _tag(envelope)
    if tag == f"{{{SOAP12_ENV}}}Envelope":
        raise SoapFault("VersionMismatch", "SOAP 1.2 is not supported: send a SOAP 1.1 envelope")
    if tag != f"{{{SOAP_ENV}}}Envelope":
        raise SoapFault("Client", f"Not a SOAP 1.1 envelope: root element {tag}")
    header = envelope.find(f"{{{SOAP_ENV}}}Header")
    body = envelope.find(f"{{{SOAP_ENV}}}Body")
    if body is None:
        raise SoapFault("Client", "The envelope has no Body")
    elements = [child for child in body if _tag(child) is not None]
    if len(elements) != 1:
        raise SoapFault("Client", f"The Body must hold exactly one element, not {len(elements)}")
    return header, elements[0]


def _check_must_understand(header: etree._Element | None) -> None:
    for block in header if header is not None else ():
        tag = _tag(block)
        if tag is None or tag == f"{{{WSSE}}}Security":
            continue
        if block.get(f"{{{SOAP_ENV}}}mustUnderstand") in ("1", "true"):
            raise SoapFault("MustUnderstand", f"Header {tag} is not understood")


def _username_token(header: etree._Element | None) -> tuple[str, str] | None:
    """Username and password of a WS-Security UsernameToken, or None without one."""
    if header is None:
        return None
    tokens = header.findall(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if not tokens:
        return None
    if len(tokens) > 1:
        raise SoapFault("Client", "Authentication failed: more than one UsernameToken")
    username = tokens[0].findtext(f"{{{WSSE}}}Username")
    password = tokens[0].find(f"{{{WSSE}}}Password")
    if not username or password is None or not password.text:
        raise SoapFault(
            "Client", "Authentication failed: UsernameToken needs Username and Password"
        )
    kind = password.get("Type")
    if kind is not None and kind not in (f"{USERNAME_PROFILE}#PasswordText", "wsse:PasswordText"):
        raise SoapFault("Client", "Authentication failed: only PasswordText is supported (use TLS)")
    return username.strip(), password.text.strip()


def _principal(rt: Runtime, header: etree._Element | None, authorization: str | None) -> Principal:
    """The caller: a UsernameToken (name and key must match), else the Bearer header."""
    token = _username_token(header)
    if token is not None:
        username, key = token
        principal = authenticate(rt, key)
        # The key must really be the named one: a name alone proves nothing.
        if principal is None or principal.name != username:
            raise SoapFault("Client", "Authentication failed: invalid username or password")
        return principal
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise SoapFault(
            "Client",
            "Authentication required: a WS-Security UsernameToken or Authorization: Bearer",
        )
    principal = authenticate(rt, key.strip())
    if principal is None:
        raise SoapFault("Client", "Authentication failed: invalid or revoked API key")
    return principal


def _validate(element: etree._Element) -> None:
    # xmlschema reads lxml elements, though its annotations name only ElementTree ones.
    error = next(iter(request_schema().iter_errors(cast(Any, element))), None)
    if error is None:
        return
    reason = error.reason or "does not match the schema"
    if isinstance(error, xmlschema.XMLSchemaDecodeError):
        # Its reason quotes the offending value: say which type was expected instead.
        expected = getattr(error.validator, "prefixed_name", None) or "value"
        reason = f"not a valid {expected}"
    where = _NAMESPACE.sub("", error.path or "") or f"/{etree.QName(element).localname}"
    raise SoapFault("Client", f"Invalid request at {where}: {reason}")


def _values(element: etree._Element) -> Values:
    """The request's fields by local name, as text (ints for xs:int fields)."""
    values: Values = {}
    for child in element:
        if _tag(child) is None:
            continue
        name = etree.QName(child).localname
        text = child.text
        values[name] = int(text) if name in _INTEGERS and text is not None else text
    return values


def _secrets(element: etree._Element) -> list[str]:
    return [
        pin.text.strip() for pin in element.iter(f"{{{TNS}}}Pin") if pin.text and pin.text.strip()
    ]


# --- routes ------------------------------------------------------------------------------------


@router.get("/soap")
async def wsdl(request: Request) -> Response:
    """The WSDL (``GET /soap?wsdl``), its address being this server's /soap."""
    if "wsdl" not in {key.lower() for key in request.query_params}:
        return PlainTextResponse("POST SOAP 1.1 requests here; the WSDL is at /soap?wsdl", 404)
    return Response(wsdl_document(_service_address(request)), media_type=XML_MEDIA_TYPE)


@router.post("/soap")
async def call(request: Request) -> Response:
    """One SOAP 1.1 call (parsing, validation and the service run in a worker thread)."""
    try:
        body = await _read_body(request)
    except SoapFault as fault:
        return _fault(fault)
    return await run_redemption_work(
        request,
        handle,
        request.app.state.runtime,
        request.app.state.rate_limits,
        body,
        request.headers.get("authorization"),
    )


def handle(rt: Runtime, buckets: TokenBuckets, body: bytes, authorization: str | None) -> Response:
    """Envelope → authentication → rate limit → schema → service → response or fault."""
    secrets: list[str] = []
    try:
        header, element = _split(_parse(body))
        secrets = _secrets(element)
        _check_must_understand(header)
        principal = _principal(rt, header, authorization)
        tag = _tag(element) or ""
        operation = OPERATIONS.get(tag)
        if operation is None:
            raise SoapFault("Client", f"Unknown operation {tag}; see /soap?wsdl")
        if principal.api_key_id is not None and not buckets.allow(principal.api_key_id):
            return _answer(operation.response, operation.fields, Result.TOO_MANY_REQUESTS.body())
        _validate(element)
        return _answer(
            operation.response, operation.fields, operation.call(rt, principal, _values(element))
        )
    except SoapFault as fault:
        return _fault(fault, secrets)
    except Forbidden as error:
        return _fault(SoapFault("Client", f"Forbidden: {error.detail}"), secrets)
    except VomsError as error:
        return _fault(SoapFault("Client", error.detail), secrets)
    except Exception as error:
        # The type and the frames only: the exception's message may quote the request's PIN.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("unhandled error on POST /soap: %s\n%s", error.__class__.__name__, frames)
        return _fault(SoapFault("Server", "Internal error"))
