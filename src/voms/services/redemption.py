"""Redemption: the one service every channel calls to consume a voucher.

Redeem, reserve → commit/revoke, and voucher-type recharges. Each call is one database
transaction; the conditional ``UPDATE vouchers … WHERE state = 'available' RETURNING``
decides the winner among concurrent attempts on one PIN. Every attempt, successful or
not, is recorded in ``transactions``; a failed attempt is rolled back whole and then
recorded in a short transaction of its own, so it changes no balance.

Checks, in order (the first that applies answers):
channel or request id malformed (4008) · request id replay, or reuse (5006) · msisdn,
recipient (4006) · service provider (4000) · blacklist (5003) · PIN missing (4007), length (4001),
check digit (2002) · PIN unknown (2004) · serial (2003) · voucher and batch state
(2009, 2010, 2013, 2011, 2001, 2012, 2014) · subscriber (5001, 5002) · product type
(2007) · scenario (4005, 2008) · balance limit (5004).
"""

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Self, Union

from sqlalchemy import (
    bindparam,
    delete,
    insert,
    select,
    update,
)

from voms.billing.engine import Account, Change, Credit
from voms.db import tables as t
from voms.db.types import utcnow
from voms.db.upsert import insert_if_absent
from voms.domain.errors import RequestIdReused, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.pins import check_pin, normalize_pin
from voms.domain.results import Result
from voms.domain.roles import Permission, Role
from voms.domain.scenarios import choose_scenario
from voms.domain.serials import format_serial
from voms.domain.states import BatchState, VoucherState, is_expired, redemption_blocker
from voms.runtime import Runtime
from voms.services import catalog_cache, idempotency
from voms.services.auth import Principal
from voms.services.catalog import public_scenario
from voms.services.uow import AnsweredBefore, FirstAnswer, Later, UnitOfWork

CHANNELS = frozenset({"rest", "soap", "ussd", "sms", "ivr", "web", "care"})
SYSTEM_CHANNEL = "system"  # housekeeping acting on its own
HOUSEKEEPING = Principal(name="housekeeping", role=Role.ADMIN)

Response = dict[str, Any]
AnyRequest = Union["RedemptionRequest", "RechargeRequest", "ReservationAction"]


# --- requests as channels receive them ------------------------------------------------


class _FromJson:
    @classmethod
    def from_json(cls, body: object) -> Self:
        """From a decoded JSON body; anything but an object is an empty request."""
        if not isinstance(body, dict):
            return cls()
        return cls(**{f.name: body.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class RedemptionRequest(_FromJson):
    """A redemption or reservation as received: raw values, checked by the service."""

    msisdn: object = None
    pin: object = None
    recipient_msisdn: object = None
    scenario: object = None
    serial: object = None
    channel: object = None
    request_id: object = None
    service_provider: object = None


@dataclass(frozen=True)
class RechargeRequest(_FromJson):
    """A voucher-type recharge: credit a wallet as a voucher of that type would."""

    msisdn: object = None
    voucher_type: object = None
    recipient_msisdn: object = None
    scenario: object = None
    channel: object = None
    request_id: object = None
    service_provider: object = None


@dataclass(frozen=True)
class ReservationAction(_FromJson):
    """Commit or revoke of a reservation (the body is optional)."""

    channel: object = None
    request_id: object = None


# --- what an attempt has revealed so far (recorded whatever the outcome) ---------------


@dataclass
class _Attempt:
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
    bad_pin: bool = False
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


_INSERT_TRANSACTION = insert(t.transactions)


def _record(uow: UnitOfWork, attempt: _Attempt, result: Result, credits: list[Any]) -> None:
    uow.write(
        _INSERT_TRANSACTION,
        {
            "id": attempt.id,
            "at": uow.started_at,
            "kind": attempt.kind,
            "channel": attempt.channel,
            "msisdn": attempt.msisdn,
            "recipient_msisdn": attempt.recipient,
            "serial": attempt.serial,
            "voucher_type_id": attempt.voucher_type_id,
            "scenario": attempt.scenario,
            "result_code": result.code,
            "credits": credits,
            "reservation_id": attempt.reservation_id,
            "service_provider_id": attempt.service_provider_id,
            "api_key_id": attempt.actor.api_key_id,
            "actor": attempt.actor.name,
        },
    )


# --- parsing of raw values --------------------------------------------------------------


def _channel(raw: object) -> str:
    if raw is None:
        return "rest"
    if isinstance(raw, str) and raw in CHANNELS:
        return raw
    raise ResultError(Result.INVALID_PARAMETER, detail=f"channel must be one of {sorted(CHANNELS)}")


def _request_id(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str) and 0 < len(raw) <= idempotency.MAX_REQUEST_ID_LENGTH:
        return raw
    raise ResultError(
        Result.INVALID_PARAMETER,
        detail=f"request_id must be a string of 1 to {idempotency.MAX_REQUEST_ID_LENGTH} chars",
    )


def _digits(raw: object) -> str | None:
    """A JSON string, or an integer sent as a number; None for anything else."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return None


def _msisdn(raw: object) -> str:
    return normalize_msisdn(_digits(raw))


def _pin(rt: Runtime, uow: UnitOfWork, raw: object) -> str:
    """The PIN without spaces or dashes, checked for format, length and check digit."""
    if raw is not None and _digits(raw) is None:
        raise ResultError(Result.INVALID_VOUCHER_NUMBER)
    pin = normalize_pin(_digits(raw))
    known = catalog_cache.snapshot_knowing(rt, uow.conn, lambda s: len(pin) in s.pin_lengths)
    return check_pin(pin, known.pin_lengths)


def _serial(raw: object) -> int | None:
    if raw is None:
        return None
    text = _digits(raw)
    if text is None or not text.isascii() or not text.strip().isdigit():
        raise ResultError(Result.INVALID_SERIAL_NUMBER)
    return int(text)


def _scenario_number(raw: object) -> int | None:
    if raw is None:
        return None
    text = _digits(raw)
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 4:
        raise ResultError(Result.INVALID_SCENARIO_NUMBER)
    return int(text)


def _service_provider(rt: Runtime, uow: UnitOfWork, actor: Principal, raw: object) -> int | None:
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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _success(**extra: Any) -> Response:
    return {"result_code": Result.SUCCESS.code, "result_text": Result.SUCCESS.text, **extra}


# --- the frame shared by every call: one unit of work, the record of the attempt -------


def _run(
    rt: Runtime,
    attempt: _Attempt,
    request: "AnyRequest",
    work: Callable[[UnitOfWork], Response],
) -> Response:
    """Run ``work`` in one unit of work, recording the attempt whatever its outcome.

    The request id is not looked up first (``look_now=False``): storing it fails if it
    was used before, and so does a repeated call's work (its voucher is taken); either
    way the refusal's own unit of work then finds the first answer and gives it again.
    """
    key: tuple[str, str | None, str] = (idempotency.scope_of(attempt.actor), None, "")
    try:
        attempt.channel = _channel(request.channel)
        key = _request_key(rt, attempt, request)
        with UnitOfWork(rt) as uow:
            uow.idempotent(*key, look_now=False)
            response = work(uow)
            _record(uow, attempt, Result.SUCCESS, response.get("credits", []))
            response["transaction_id"] = attempt.id
            uow.answer(response)
            uow.commit()
        return response
    except AnsweredBefore as again:
        return _replay(again.first)
    except (ResultError, RequestIdReused) as refusal:
        return _refused(rt, attempt, refusal, key)


def _request_key(
    rt: Runtime, attempt: _Attempt, request: "AnyRequest"
) -> tuple[str, str | None, str]:
    """Scope, request id and fingerprint of the call's body (the PIN only as a keyed hash)."""
    scope = idempotency.scope_of(attempt.actor)
    request_id = _request_id(request.request_id)
    if request_id is None:
        return scope, None, ""
    # vars(), not asdict(): the fields are JSON values, asdict() deep-copies them.
    params = {k: v for k, v in vars(request).items() if k != "request_id"}
    if attempt.kind in ("commit", "revoke"):
        params["reservation_id"] = attempt.reservation_id
    return scope, request_id, idempotency.fingerprint(rt.keyring, attempt.kind, params)


def _refused(
    rt: Runtime,
    attempt: _Attempt,
    refusal: ResultError | RequestIdReused,
    key: tuple[str, str | None, str],
) -> Response:
    """Record a refused call in a unit of work of its own (the call's was rolled back).

    A request id answered before gets its first answer again, or 5006 when it came with
    another body. Otherwise the refusal (and a bad PIN) is recorded and stored under
    the request id, and raised.
    """
    error = refusal if isinstance(refusal, ResultError) else ResultError(Result.REQUEST_ID_REUSED)
    try:
        with UnitOfWork(rt) as uow:
            if isinstance(refusal, ResultError):
                uow.idempotent(*key)
                if attempt.bad_pin and attempt.msisdn is not None:
                    count_bad_pin(rt, uow, attempt.msisdn)
            _record(uow, attempt, error.result, [])
            uow.answer(
                _body(error.result, {**error.extra, "transaction_id": attempt.id}),
                error.http_status,
            )
            uow.commit()
    except AnsweredBefore as again:
        return _replay(again.first)
    except RequestIdReused as reused:
        return _refused(rt, attempt, reused, key)
    raise ResultError(error.result, **{**error.extra, "transaction_id": attempt.id})


def _body(result: Result, extra: dict[str, Any]) -> Response:
    return {"result_code": result.code, "result_text": result.text, **extra}


def _replay(first: FirstAnswer) -> Response:
    """The first answer again: returned when it was a success, raised when it was not."""
    response = dict(first.body)
    code = response.pop("result_code", 0)
    response.pop("result_text", None)
    if code == 0:
        return first.body
    raise ResultError(Result.from_code(code), **response)


# --- bad-PIN blacklist ------------------------------------------------------------------

_pa = t.pin_attempts
_BLACKLIST = select(_pa.c.failures, _pa.c.blacklisted_until).where(
    _pa.c.msisdn == bindparam("msisdn")
)


def _check_blacklist(uow: UnitOfWork, msisdn: str) -> bool:
    """Raise 5003 while ``msisdn`` is blacklisted; True when it has failures to reset."""
    row = uow.conn.execute(_BLACKLIST, {"msisdn": msisdn}).first()
    return _blacklist_verdict(row, uow.started_at)


def _blacklist_verdict(row: Any, now: datetime) -> bool:
    """From a row with the requester's ``failures`` and ``blacklisted_until`` (or None)."""
    if row is None or row.failures is None:
        return False
    if row.blacklisted_until is not None and row.blacklisted_until > now:
        raise ResultError(Result.SUBSCRIBER_BLACKLISTED)
    return True


def count_bad_pin(rt: Runtime, uow: UnitOfWork, msisdn: str) -> None:
    """One more consecutive bad PIN; the last one allowed starts a blacklist."""
    settings, conn, now = rt.settings, uow.conn, uow.started_at
    fresh = {"msisdn": msisdn, "failures": 1, "blacklisted_until": None, "updated_at": now}
    if settings.max_bad_pin_attempts <= 1:
        fresh["blacklisted_until"] = now + timedelta(minutes=settings.blacklist_minutes)
    if insert_if_absent(conn, _pa, fresh):
        return
    row = conn.execute(_BLACKLIST.with_for_update(), {"msisdn": msisdn}).one()
    ended = row.blacklisted_until is not None and row.blacklisted_until <= now
    failures = 1 if ended else row.failures + 1
    until = None
    if failures >= settings.max_bad_pin_attempts:
        until = now + timedelta(minutes=settings.blacklist_minutes)
    conn.execute(
        update(_pa)
        .where(_pa.c.msisdn == msisdn)
        .values(failures=failures, blacklisted_until=until, updated_at=now)
    )


# --- vouchers -----------------------------------------------------------------------------

_v, _bt = t.vouchers, t.batches
_FIND_VOUCHERS = select(
    _v.c.serial,
    _v.c.state,
    _bt.c.state.label("batch_state"),
    _bt.c.expires_at,
    _bt.c.voucher_type_id,
    _bt.c.service_provider_id,
    # The requester's bad-PIN record, in the same round trip.
    _BLACKLIST.with_only_columns(_pa.c.failures).scalar_subquery().label("failures"),
    _BLACKLIST.with_only_columns(_pa.c.blacklisted_until)
    .scalar_subquery()
    .label("blacklisted_until"),
).join(_bt, _bt.c.id == _v.c.batch_id)


@functools.cache
def _find_voucher_by(hashes: int) -> Any:
    """The voucher lookup for a PIN's ``hashes`` lookup hashes (one per lookup key, see
    Keyring.lookup_hashes), each its own parameter.

    Not ``= ANY(array)``: PostgreSQL then planned the prepared statement anew on every
    call, its generic plan for an array of unknown length looking dearer.
    """
    return _FIND_VOUCHERS.where(_v.c.pin_hash.in_([bindparam(f"hash{i}") for i in range(hashes)]))


_VOUCHER_BY_SERIAL = (
    select(_v.c.state, _bt.c.state.label("batch_state"), _bt.c.expires_at)
    .join(_bt, _bt.c.id == _v.c.batch_id)
    .where(_v.c.serial == bindparam("serial"))
)


def _move_statement(to_state: VoucherState) -> Any:
    values: dict[str, Any] = {
        "state": to_state.value,
        "state_changed_at": bindparam("now"),
    }
    if to_state is VoucherState.REDEEMED:
        values.update(redeemed_at=bindparam("now"), redeemed_by=bindparam("redeemed_by"))
    return (
        update(_v)
        .where(_v.c.serial == bindparam("move_serial"), _v.c.state == bindparam("from_state"))
        .values(**values)
        .returning(_v.c.serial)
    )


# Built once: the hot path then skips building and cache-keying a statement per call.
_MOVES = {state: _move_statement(state) for state in VoucherState}


def _move_voucher(
    uow: UnitOfWork,
    serial: int,
    from_state: VoucherState,
    to_state: VoucherState,
    redeemed_by: str | None = None,
) -> Later:
    """The conditional update that decides who wins a voucher, sent with the next round
    trip (or when its rows are asked for); a row for the winner."""
    params: dict[str, Any] = {
        "move_serial": serial,
        "from_state": from_state.value,
        "now": uow.started_at,
    }
    if to_state is VoucherState.REDEEMED:
        params["redeemed_by"] = redeemed_by
    return uow.ahead(_MOVES[to_state], params)


def _blocker(uow: UnitOfWork, serial: int) -> Result:
    """Why the voucher could not be taken (read again after losing the race)."""
    row = uow.conn.execute(_VOUCHER_BY_SERIAL, {"serial": serial}).one()
    expired = is_expired(row.expires_at, uow.started_at)
    result = redemption_blocker(BatchState(row.batch_state), VoucherState(row.state), expired)
    return result or Result.ALREADY_REDEEMED


def _find_voucher(
    rt: Runtime,
    uow: UnitOfWork,
    attempt: _Attempt,
    request: RedemptionRequest,
    msisdn: str,
) -> tuple[Any, dict[str, Any], bool]:
    """The voucher of the request's PIN, checked up to its state; and its voucher type.

    The requester's blacklist is checked first (5003 comes before any PIN check); the
    third value says whether the requester has bad PINs to forget after a success.
    """
    now = uow.started_at
    try:
        pin = _pin(rt, uow, request.pin)
    except ResultError as error:
        _check_blacklist(uow, msisdn)
        attempt.bad_pin = error.result is Result.INVALID_VOUCHER_NUMBER
        raise
    hashes = rt.keyring.lookup_hashes(pin)
    params = {f"hash{i}": each for i, each in enumerate(hashes)}
    found = uow.fetch(_find_voucher_by(len(hashes)), {**params, "msisdn": msisdn})
    row = found[0] if found else None
    if row is None:
        _check_blacklist(uow, msisdn)
        _refuse_archived(uow, attempt, hashes)
    had_failures = _blacklist_verdict(row, now)
    if row is None or (
        attempt.service_provider_id is not None
        and row.service_provider_id != attempt.service_provider_id
    ):
        attempt.bad_pin = row is None
        raise ResultError(Result.VOUCHER_NOT_FOUND)
    attempt.serial = row.serial
    attempt.voucher_type_id = row.voucher_type_id
    attempt.service_provider_id = row.service_provider_id
    serial = _serial(request.serial)
    if serial is not None and serial != row.serial:
        raise ResultError(Result.INVALID_SERIAL_NUMBER)
    blocker = redemption_blocker(
        BatchState(row.batch_state), VoucherState(row.state), is_expired(row.expires_at, now)
    )
    if blocker is not None:
        raise ResultError(blocker)
    voucher_type = catalog_cache.voucher_type(rt, uow.conn, voucher_type_id=row.voucher_type_id)
    if voucher_type is None:  # deleted from the catalog under a live batch
        raise ResultError(Result.VOUCHER_TYPE_NOT_FOUND)
    return row, voucher_type, had_failures


_ARCHIVED_RESULT = {
    "redeemed": Result.ALREADY_REDEEMED,
    "deleted": Result.DELETED,
    "expired": Result.EXPIRED,
}


def _refuse_archived(uow: UnitOfWork, attempt: _Attempt, hashes: list[bytes]) -> None:
    """An archived voucher's PIN is a real PIN: answer its final state, not 'not found'.

    Otherwise a subscriber typing an old, used voucher would count towards a blacklist.
    """
    archive, batches = t.voucher_archive, t.batches
    row = uow.conn.execute(
        select(archive.c.serial, archive.c.state, batches.c.service_provider_id)
        .join(batches, batches.c.id == archive.c.batch_id)
        .where(archive.c.pin_hash.in_(hashes))
    ).first()
    if row is None:
        return
    if (
        attempt.service_provider_id is not None
        and row.service_provider_id != attempt.service_provider_id
    ):
        raise ResultError(Result.VOUCHER_NOT_FOUND)
    attempt.serial = row.serial
    attempt.service_provider_id = row.service_provider_id
    raise ResultError(_ARCHIVED_RESULT[row.state])


# --- subscriber, product type, scenario -------------------------------------------------


def _check_account(
    account: Account | None, voucher_type: dict[str, Any], *, required: bool = True
) -> None:
    if account is None or account.service_provider_id != voucher_type["service_provider_id"]:
        if required:
            raise ResultError(Result.SUBSCRIBER_NOT_FOUND)
        return
    if not account.is_active:
        raise ResultError(Result.SUBSCRIBER_NOT_ACTIVE)
    allowed = voucher_type["allowed_product_type_ids"]
    if allowed and account.product_type_id not in allowed:
        raise ResultError(Result.NOT_VALID_FOR_PRODUCT_TYPE)


def _scenario(attempt: _Attempt, voucher_type: dict[str, Any], raw: object) -> dict[str, Any]:
    number = _scenario_number(raw)
    attempt.scenario = number
    try:
        scenario = choose_scenario(voucher_type["scenarios"], number)
    except ResultError as error:
        if error.result is Result.SCENARIO_REQUIRED:
            raise ResultError(
                error.result,
                scenarios=[public_scenario(s) for s in voucher_type["scenarios"]],
            ) from None
        raise
    attempt.scenario = scenario["number"]
    return scenario


def _change(
    rt: Runtime,
    uow: UnitOfWork,
    attempt: _Attempt,
    scenario: dict[str, Any],
    cause: str,
) -> Change:
    wanted = {c["balance_type_id"] for c in scenario["credits"]}
    balance_types = catalog_cache.snapshot_knowing(
        rt, uow.conn, lambda s: wanted <= s.balance_types.keys()
    ).balance_types
    return Change(
        credits=tuple(
            Credit(
                balance_type_id=c["balance_type_id"],
                balance_type=c["balance_type"],
                amount=c["amount"],
                balance_expiry_extension_days=c["balance_expiry_extension_days"],
                max_balance=balance_types[c["balance_type_id"]].max_balance,
            )
            for c in scenario["credits"]
        ),
        cause=cause,
        actor=attempt.actor.name,
        at=uow.started_at,
        account_expiry_extension_days=scenario["account_expiry_extension_days"],
        new_product_type_id=scenario["new_product_type_id"],
        transaction_id=attempt.id,
        serial=attempt.serial,
    )


def _credit(rt: Runtime, uow: UnitOfWork, account: Account, change: Change) -> dict[str, Any]:
    """Apply ``change`` through the billing engine (its writes wait for the COMMIT)."""
    product_type_id = change.new_product_type_id or account.product_type_id
    product_types = catalog_cache.snapshot_knowing(
        rt, uow.conn, lambda s: product_type_id in s.product_types
    ).product_types
    applied = rt.billing.apply(uow, account, change)
    return {
        "credits": [
            {
                "balance_type": c.balance_type,
                "amount": c.amount,
                "balance": c.balance,
                "expires_at": _iso(c.expires_at),
            }
            for c in applied.credits
        ],
        "account_expires_at": _iso(applied.account_expires_at),
        "product_type": product_types.get(applied.product_type_id),
        "rewards": [],
    }


def _parties(attempt: _Attempt, request: RedemptionRequest | RechargeRequest) -> tuple[str, str]:
    """Requester and recipient (the requester unless one is named), noted on the attempt."""
    msisdn = attempt.msisdn = _msisdn(request.msisdn)
    recipient = attempt.recipient = (
        msisdn if request.recipient_msisdn is None else _msisdn(request.recipient_msisdn)
    )
    return msisdn, recipient


def _start(
    rt: Runtime, uow: UnitOfWork, attempt: _Attempt, request: RedemptionRequest
) -> tuple[str, str]:
    """Requester and recipient; the provider the call is limited to."""
    msisdn, recipient = _parties(attempt, request)
    attempt.service_provider_id = _service_provider(
        rt, uow, attempt.actor, request.service_provider
    )
    return msisdn, recipient


_RESET_BAD_PINS = delete(_pa).where(_pa.c.msisdn == bindparam("msisdn"))


def _reset_bad_pins(uow: UnitOfWork, msisdn: str) -> None:
    uow.write(_RESET_BAD_PINS, {"msisdn": msisdn})


# --- the calls ----------------------------------------------------------------------------


def redeem(rt: Runtime, actor: Principal, request: RedemptionRequest) -> Response:
    """Consume the voucher of a PIN and credit the recipient's wallet, atomically."""
    actor.require(Permission.REDEEM)
    attempt = _Attempt(kind="redemption", actor=actor)

    def work(uow: UnitOfWork) -> Response:
        msisdn, recipient = _start(rt, uow, attempt, request)
        voucher, voucher_type, had_failures = _find_voucher(rt, uow, attempt, request, msisdn)
        # The voucher is taken in the round trip that locks the account. So a redemption
        # locks the voucher, then the subscriber: no other transaction locks both.
        taken = _move_voucher(
            uow, voucher.serial, VoucherState.AVAILABLE, VoucherState.REDEEMED, recipient
        )
        account = rt.billing.load_account(uow, recipient, lock=True)
        _check_account(account, voucher_type)
        assert account is not None
        scenario = _scenario(attempt, voucher_type, request.scenario)
        if not taken.rows():
            raise ResultError(_blocker(uow, voucher.serial))
        change = _change(rt, uow, attempt, scenario, "redemption")
        rt.billing.check(account, change)
        credited = _credit(rt, uow, account, change)
        if had_failures:
            _reset_bad_pins(uow, msisdn)
        return _success(
            serial=format_serial(voucher.serial, rt.settings.serial_width),
            voucher_type=voucher_type["code"],
            scenario=scenario["number"],
            msisdn=attempt.msisdn,
            recipient_msisdn=attempt.recipient,
            **credited,
        )

    return _run(rt, attempt, request, work)


def reserve(rt: Runtime, actor: Principal, request: RedemptionRequest) -> Response:
    """Hold a voucher for an external charging system, which applies the credits itself.

    The recipient need not have a wallet here; when it has one, its state and product
    type are checked as for a redemption.
    """
    actor.require(Permission.REDEEM)
    attempt = _Attempt(kind="reservation", actor=actor)
    attempt.reservation_id = str(uuid.uuid4())

    def work(uow: UnitOfWork) -> Response:
        msisdn, recipient = _start(rt, uow, attempt, request)
        voucher, voucher_type, had_failures = _find_voucher(rt, uow, attempt, request, msisdn)
        taken = _move_voucher(uow, voucher.serial, VoucherState.AVAILABLE, VoucherState.RESERVED)
        account = rt.billing.load_account(uow, recipient, lock=False)  # (sends it)
        _check_account(account, voucher_type, required=False)
        scenario = _scenario(attempt, voucher_type, request.scenario)
        if not taken.rows():
            raise ResultError(_blocker(uow, voucher.serial))
        credits = [
            {
                "balance_type": c["balance_type"],
                "amount": c["amount"],
                "balance_expiry_extension_days": c["balance_expiry_extension_days"],
                "balance": None,
            }
            for c in scenario["credits"]
        ]
        expires_at = uow.started_at + timedelta(seconds=voucher_type["reservation_timeout_s"])
        uow.write(
            _INSERT_RESERVATION,
            {
                "id": attempt.reservation_id,
                "serial": voucher.serial,
                "voucher_type_id": voucher_type["id"],
                "channel": attempt.channel,
                "msisdn": msisdn,
                "recipient_msisdn": recipient,
                "scenario": scenario["number"],
                "state": "open",
                "credits": credits,
                "created_at": uow.started_at,
                "expires_at": expires_at,
                "api_key_id": actor.api_key_id,
            },
        )
        if had_failures:
            _reset_bad_pins(uow, msisdn)
        return _success(
            reservation_id=attempt.reservation_id,
            serial=format_serial(voucher.serial, rt.settings.serial_width),
            voucher_type=voucher_type["code"],
            scenario=scenario["number"],
            msisdn=attempt.msisdn,
            recipient_msisdn=attempt.recipient,
            credits=credits,
            account_expiry_extension_days=scenario["account_expiry_extension_days"],
            new_product_type=scenario["new_product_type"],
            expires_at=_iso(expires_at),
        )

    return _run(rt, attempt, request, work)


_INSERT_RESERVATION = insert(t.reservations)


def recharge(rt: Runtime, actor: Principal, request: RechargeRequest) -> Response:
    """Credit a wallet as a redemption of a voucher type would, with no voucher."""
    actor.require(Permission.REDEEM)
    attempt = _Attempt(kind="recharge", actor=actor)

    def work(uow: UnitOfWork) -> Response:
        _, recipient = _parties(attempt, request)
        sp_id = _service_provider(rt, uow, actor, request.service_provider)
        code = request.voucher_type
        voucher_type = (
            catalog_cache.voucher_type(rt, uow.conn, code=code) if isinstance(code, str) else None
        )
        if voucher_type is None or sp_id not in (None, voucher_type["service_provider_id"]):
            raise ResultError(Result.VOUCHER_TYPE_NOT_FOUND)
        attempt.voucher_type_id = voucher_type["id"]
        attempt.service_provider_id = voucher_type["service_provider_id"]
        account = rt.billing.load_account(uow, recipient, lock=True)
        _check_account(account, voucher_type)
        assert account is not None
        scenario = _scenario(attempt, voucher_type, request.scenario)
        change = _change(rt, uow, attempt, scenario, "recharge")
        rt.billing.check(account, change)
        return _success(
            voucher_type=voucher_type["code"],
            scenario=scenario["number"],
            msisdn=attempt.msisdn,
            recipient_msisdn=attempt.recipient,
            **_credit(rt, uow, account, change),
        )

    return _run(rt, attempt, request, work)


# --- reservations: commit, revoke, timeout -------------------------------------------------

_r = t.reservations
_FINISHABLE = ("open", "held")


def _finish_reservation(
    uow: UnitOfWork,
    reservation_id: str,
    new_state: str,
    now: datetime,
    *,
    timed_out: bool,
) -> Any:
    """The conditional update that decides who finishes a reservation; its row or None."""
    condition = (
        (_r.c.state == "open") & (_r.c.expires_at <= now)
        if timed_out
        else _r.c.state.in_(_FINISHABLE) & ((_r.c.state == "held") | (_r.c.expires_at > now))
    )
    return uow.conn.execute(
        update(_r)
        .where(_r.c.id == reservation_id, condition)
        .values(state=new_state, finished_at=None if new_state == "held" else now)
        .returning(
            _r.c.serial,
            _r.c.voucher_type_id,
            _r.c.scenario,
            _r.c.msisdn,
            _r.c.recipient_msisdn,
            _r.c.credits,
        )
    ).first()


def _settle_voucher(
    rt: Runtime, uow: UnitOfWork, attempt: _Attempt, row: Any, action: str
) -> Response:
    """Apply a commit or revoke to the reserved voucher and describe it."""
    attempt.serial = row.serial
    if action == "commit":
        to_state, redeemed_by = VoucherState.REDEEMED, row.recipient_msisdn
    else:
        to_state, redeemed_by = VoucherState.AVAILABLE, None
    moved = _move_voucher(uow, row.serial, VoucherState.RESERVED, to_state, redeemed_by)
    if not moved.rows():
        raise RuntimeError(f"voucher {row.serial} of an open reservation is not reserved")
    return _success(
        reservation_id=attempt.reservation_id,
        serial=format_serial(row.serial, rt.settings.serial_width),
        scenario=row.scenario,
        msisdn=row.msisdn,
        recipient_msisdn=row.recipient_msisdn,
        credits=row.credits if action == "commit" else [],
    )


def _finish(
    rt: Runtime, actor: Principal, reservation_id: str, action: str, request: ReservationAction
) -> Response:
    actor.require(Permission.REDEEM)
    attempt = _Attempt(kind=action, actor=actor, reservation_id=reservation_id[:36])

    def work(uow: UnitOfWork) -> Response:
        row = _finish_reservation(
            uow,
            reservation_id,
            "committed" if action == "commit" else "revoked",
            uow.started_at,
            timed_out=False,
        )
        if row is None:
            raise ResultError(Result.RESERVATION_NOT_FOUND)
        voucher_type = catalog_cache.voucher_type(rt, uow.conn, voucher_type_id=row.voucher_type_id)
        attempt.voucher_type_id = row.voucher_type_id
        attempt.scenario = row.scenario
        attempt.msisdn, attempt.recipient = row.msisdn, row.recipient_msisdn
        sp_id = voucher_type["service_provider_id"] if voucher_type else None
        attempt.service_provider_id = sp_id
        if actor.service_provider_id is not None and sp_id != actor.service_provider_id:
            raise ResultError(Result.RESERVATION_NOT_FOUND)
        response = _settle_voucher(rt, uow, attempt, row, action)
        response["voucher_type"] = voucher_type["code"] if voucher_type else None
        return response

    _time_out_if_due(rt, reservation_id)
    return _run(rt, attempt, request, work)


def commit(
    rt: Runtime, actor: Principal, reservation_id: str, request: ReservationAction | None = None
) -> Response:
    """The reserved voucher becomes redeemed; no wallet changes (the charging system's)."""
    return _finish(rt, actor, reservation_id, "commit", request or ReservationAction())


def revoke(
    rt: Runtime, actor: Principal, reservation_id: str, request: ReservationAction | None = None
) -> Response:
    """The reserved voucher becomes available again."""
    return _finish(rt, actor, reservation_id, "revoke", request or ReservationAction())


_TIMEOUT_STATE = {"hold": "held", "commit": "committed", "revoke": "revoked"}


def _time_out(rt: Runtime, reservation_id: str, now: datetime) -> str | None:
    """Apply the voucher type's timeout action to one expired open reservation."""
    with UnitOfWork(rt) as uow:
        pending = uow.conn.execute(
            select(_r.c.voucher_type_id).where(
                _r.c.id == reservation_id, _r.c.state == "open", _r.c.expires_at <= now
            )
        ).first()
        if pending is None:
            return None
        voucher_type = catalog_cache.voucher_type(
            rt, uow.conn, voucher_type_id=pending.voucher_type_id
        )
        action = voucher_type["timeout_action"] if voucher_type else "hold"
        row = _finish_reservation(uow, reservation_id, _TIMEOUT_STATE[action], now, timed_out=True)
        if row is None:
            return None
        attempt = _Attempt(
            kind=action,
            actor=HOUSEKEEPING,
            channel=SYSTEM_CHANNEL,
            msisdn=row.msisdn,
            recipient=row.recipient_msisdn,
            serial=row.serial,
            voucher_type_id=row.voucher_type_id,
            scenario=row.scenario,
            service_provider_id=voucher_type["service_provider_id"] if voucher_type else None,
            reservation_id=reservation_id,
        )
        credits: list[Any] = []
        if action != "hold":
            credits = _settle_voucher(rt, uow, attempt, row, action)["credits"]
        _record(uow, attempt, Result.SUCCESS, credits)
        uow.commit()
        return action


def _time_out_if_due(rt: Runtime, reservation_id: str) -> None:
    """A reservation past its time is first handled as the timeout job would."""
    _time_out(rt, reservation_id[:36], utcnow())


def expire_reservations(
    rt: Runtime, now: datetime | None = None, limit: int = 10_000
) -> dict[str, int]:
    """Apply the timeout action (hold, commit, revoke) to every expired open reservation."""
    now = now or utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        due = (
            uow.conn.execute(
                select(_r.c.id)
                .where(_r.c.state == "open", _r.c.expires_at <= now)
                .order_by(_r.c.expires_at)
                .limit(limit)
            )
            .scalars()
            .all()
        )
    done = {"hold": 0, "commit": 0, "revoke": 0}
    for reservation_id in due:
        action = _time_out(rt, reservation_id, now)
        if action is not None:
            done[action] += 1
    return done
