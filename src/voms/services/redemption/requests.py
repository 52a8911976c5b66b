"""Requests as channels hand them over, and the parsing of their raw values.

Values arrive as the channel received them (JSON values, form fields): each is checked
here, in the order of the result codes' precedence, and the first bad one answers.
"""

import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Self

from voms.domain.errors import ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.pins import check_pin, normalize_pin
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import catalog_cache, idempotency
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork

CHANNELS = frozenset({"rest", "soap", "ussd", "sms", "ivr", "web", "care"})
SYSTEM_CHANNEL = "system"  # housekeeping acting on its own

Response = dict[str, Any]


class _FromJson:
    @classmethod
    def from_json(cls, body: object) -> Self:
        """From a decoded JSON body; anything but an object is an empty request."""
        if not isinstance(body, dict):
            return cls()
        return cls(*map(body.get, _field_names(cls)))  # (the fields in their order)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A request class's fields (dataclasses.fields() walks them anew on every call)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


@dataclass(frozen=True)
class _CreditRequest(_FromJson):
    """What a redemption and a recharge both carry."""

    msisdn: object = None
    recipient_msisdn: object = None
    scenario: object = None
    channel: object = None
    request_id: object = None
    service_provider: object = None


@dataclass(frozen=True)
class RedemptionRequest(_CreditRequest):
    """A redemption or reservation as received: raw values, checked by the service."""

    pin: object = None
    serial: object = None


@dataclass(frozen=True)
class RechargeRequest(_CreditRequest):
    """A voucher-type recharge: credit a wallet as a voucher of that type would."""

    voucher_type: object = None


@dataclass(frozen=True)
class SettlementRequest(_FromJson):
    """Commit or revoke of a reservation (the body is optional)."""

    channel: object = None
    request_id: object = None


AnyRequest = RedemptionRequest | RechargeRequest | SettlementRequest


@dataclass
class Attempt:
    """What a call has revealed so far: recorded in ``transactions`` whatever its outcome."""

    kind: str
    actor: Principal
    channel: str = "rest"
    msisdn: str | None = None
    recipient: str | None = None
    serial: int | None = None
    voucher_type_id: int | None = None
    scenario: int | None = None
    service_provider_id: int | None = None
    reservation_id: str | None = None
    bad_pin: bool = False  # a failed PIN lookup: counts towards the requester's blacklist
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


# --- raw values -------------------------------------------------------------------------


def channel(raw: object) -> str:
    if raw is None:
        return "rest"
    if isinstance(raw, str) and raw in CHANNELS:
        return raw
    raise ResultError(Result.INVALID_PARAMETER, detail=f"channel must be one of {sorted(CHANNELS)}")


def request_id(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str) and 0 < len(raw) <= idempotency.MAX_REQUEST_ID_LENGTH:
        return raw
    raise ResultError(
        Result.INVALID_PARAMETER,
        detail=f"request_id must be a string of 1 to {idempotency.MAX_REQUEST_ID_LENGTH} chars",
    )


def request_key(rt: Runtime, attempt: Attempt, request: AnyRequest) -> tuple[str, str | None, str]:
    """Scope, request id and fingerprint of the body (the PIN only as a keyed hash)."""
    scope = idempotency.scope_of(attempt.actor)
    rid = request_id(request.request_id)
    if rid is None:
        return scope, None, ""
    # vars(), not asdict(): the fields are JSON values, asdict() deep-copies them. (Copied
    # and the id deleted: the fields keep their order, so the fingerprint stays the same.)
    params = dict(vars(request))
    del params["request_id"]
    if attempt.reservation_id is not None and attempt.kind in ("commit", "revoke"):
        params["reservation_id"] = attempt.reservation_id
    return scope, rid, idempotency.fingerprint(rt.keyring, attempt.kind, params)


def _digits(raw: object) -> str | None:
    """A JSON string, or an integer sent as a number; None for anything else."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


def msisdn(raw: object) -> str:
    return normalize_msisdn(_digits(raw))


def parties(attempt: Attempt, request: RedemptionRequest | RechargeRequest) -> tuple[str, str]:
    """Requester and recipient (the requester unless one is named), noted on the attempt."""
    requester = attempt.msisdn = msisdn(request.msisdn)
    recipient = attempt.recipient = (
        requester if request.recipient_msisdn is None else msisdn(request.recipient_msisdn)
    )
    return requester, recipient


def pin(rt: Runtime, uow: UnitOfWork, raw: object) -> str:
    """The PIN without spaces or dashes, checked for format, length and check digit."""
    if raw is not None and _digits(raw) is None:
        raise ResultError(Result.INVALID_VOUCHER_NUMBER)
    typed = normalize_pin(_digits(raw))
    known = catalog_cache.snapshot_knowing(rt, uow.conn, lambda s: len(typed) in s.pin_lengths)
    return check_pin(typed, known.pin_lengths)


def serial(raw: object) -> int | None:
    if raw is None:
        return None
    text = _digits(raw)
    if text is None or not text.isascii() or not text.strip().isdigit():
        raise ResultError(Result.INVALID_SERIAL_NUMBER)
    return int(text)


def scenario_number(raw: object) -> int | None:
    if raw is None:
        return None
    text = _digits(raw)
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 4:
        raise ResultError(Result.INVALID_SCENARIO_NUMBER)
    return int(text)


def service_provider(rt: Runtime, uow: UnitOfWork, actor: Principal, raw: object) -> int | None:
    """The provider a call is limited to: the one named, or the key's own."""
    if raw is None:
        return actor.service_provider_id
    if not isinstance(raw, str):
        raise ResultError(Result.SERVICE_PROVIDER_NOT_FOUND)
    known = catalog_cache.snapshot_knowing(rt, uow.conn, lambda s: raw in s.service_providers)
    sp_id = known.service_providers.get(raw)
    if sp_id is None or (
        actor.service_provider_id is not None and sp_id != actor.service_provider_id
    ):
        raise ResultError(Result.SERVICE_PROVIDER_NOT_FOUND)
    return sp_id
