"""TM Forum TMF654 (Prepay Balance Management v4): ``topupBalance`` mapped onto redemption.

A BSS that speaks TMF654 creates a TopupBalance with the PIN in ``voucher`` and the
subscriber in ``relatedParty`` (role ``customer``, ``id`` the MSISDN); that is one
redemption, through the same service every channel calls (same checks, result codes,
limits, events). The answer, and a read of it later, is the TopupBalance resource built
from the redemption's transaction: ``id`` is the transaction id, ``status`` ``completed``
or ``failed``, the result code in the characteristic ``resultCode``, ``voucher`` the
voucher's serial (never the PIN). docs/api.md, "TM Forum TMF654".
"""

from typing import Any

from sqlalchemy import select

from voms.db import tables as t
from voms.domain.errors import NotFound, ResultError
from voms.domain.results import Result
from voms.domain.roles import Permission, Role
from voms.domain.serials import format_serial
from voms.runtime import Runtime
from voms.services import redemption
from voms.services.auth import Principal
from voms.services.redemption import CHANNELS, RedemptionRequest
from voms.services.uow import UnitOfWork

BASE_PATH = "/tmf-api/prepayBalanceManagement/v4"
RESOURCE = "topupBalance"
CUSTOMER = "customer"


def request_of(body: object) -> RedemptionRequest:
    """The redemption a TopupBalanceCreate body asks for (values checked by the service)."""
    if not isinstance(body, dict):
        return RedemptionRequest()
    msisdn = None
    parties = body.get("relatedParty")
    if isinstance(parties, list):
        for party in parties:
            if isinstance(party, dict) and str(party.get("role", "")).lower() == CUSTOMER:
                msisdn = party.get("id")
                break
    channel = "rest"
    given = body.get("channel")
    if isinstance(given, dict):
        for name in (given.get("name"), given.get("id")):
            if isinstance(name, str) and name.lower() in CHANNELS:
                channel = name.lower()
                break
    return RedemptionRequest(msisdn=msisdn, pin=body.get("voucher"), channel=channel)


def create(rt: Runtime, actor: Principal, body: object) -> tuple[int, dict[str, Any]]:
    """Redeem as a TopupBalanceCreate asks; the HTTP status and the TopupBalance.

    201 when completed; a refusal answers its result code's HTTP status with the failed
    TopupBalance (read back with GET like a completed one).
    """
    try:
        answer = redemption.redeem(rt, actor, request_of(body))
        transaction_id, status = answer["transaction_id"], 201
    except ResultError as refusal:
        transaction_id = refusal.extra.get("transaction_id")
        status = refusal.http_status
        if transaction_id is None:  # (every refusal is recorded; this is a backstop)
            raise
    return status, read(rt, actor, transaction_id)


_tx, _vt = t.transactions, t.voucher_types


def read(rt: Runtime, actor: Principal, topup_id: str) -> dict[str, Any]:
    """The TopupBalance ``topup_id`` (404 when it is none the caller may see: another
    provider's, or, for a channel key, another key's)."""
    actor.require(Permission.REDEEM)
    if len(topup_id) > 36:
        raise NotFound(f"topupBalance {topup_id[:40]} not found")
    with UnitOfWork(rt, read_only=True) as uow:
        row = uow.conn.execute(
            select(_tx, _vt.c.code.label("voucher_type_code"))
            .outerjoin(_vt, _vt.c.id == _tx.c.voucher_type_id)
            .where(_tx.c.id == topup_id, _tx.c.kind == "redemption")
        ).first()
    if row is None or not _visible(actor, row):
        raise NotFound(f"topupBalance {topup_id} not found")
    return resource(rt, row)


def _visible(actor: Principal, row: Any) -> bool:
    """A key sees its own top-ups; care and admin keys also those of their provider (all,
    unscoped); a channel key only its own."""
    if actor.api_key_id is not None and row.api_key_id == actor.api_key_id:
        return True
    if actor.role is Role.CHANNEL:
        return False
    return actor.service_provider_id in (None, row.service_provider_id)


def resource(rt: Runtime, row: Any) -> dict[str, Any]:
    """The TopupBalance of one redemption transaction."""
    result = Result.from_code(row.result_code)
    completed = result is Result.SUCCESS
    at = row.at.isoformat()
    credits = list(row.credits or [])
    topup: dict[str, Any] = {
        "id": row.id,
        "href": f"{BASE_PATH}/{RESOURCE}/{row.id}",
        "@type": "TopupBalance",
        "status": "completed" if completed else "failed",
        "description": result.text,
        "requestedDate": at,
        "channel": {"id": row.channel, "name": row.channel, "@type": "ChannelRef"},
        "relatedParty": _parties(row),
        "characteristic": [
            {"name": "resultCode", "value": result.code, "valueType": "integer"},
            {"name": "resultText", "value": result.text, "valueType": "string"},
        ],
    }
    if completed:
        topup["confirmationDate"] = at
    if row.serial is not None:
        topup["voucher"] = format_serial(row.serial, rt.settings.serial_width)
    if credits:
        first = credits[0]
        topup["amount"] = {"amount": first["amount"], "units": first["balance_type"]}
        topup["characteristic"].append({"name": "credits", "value": credits, "valueType": "array"})
    if row.voucher_type_code is not None:
        topup["characteristic"].append(
            {"name": "voucherType", "value": row.voucher_type_code, "valueType": "string"}
        )
    return topup


def _parties(row: Any) -> list[dict[str, Any]]:
    parties = []
    customer = row.recipient_msisdn or row.msisdn
    if customer is not None:
        parties.append({"id": customer, "role": CUSTOMER, "@referredType": "Individual"})
    if row.msisdn is not None and row.msisdn != customer:
        parties.append({"id": row.msisdn, "role": "requestor", "@referredType": "Individual"})
    return parties
