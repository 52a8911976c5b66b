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
    Connection,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from voms.billing.engine import Account, Change, Credit
from voms.db import hot
from voms.db import tables as t
from voms.db.engine import transaction
from voms.db.pipeline import commit_together
from voms.db.types import utcnow
from voms.db.upsert import insert_if_absent
from voms.domain.errors import ResultError
from voms.domain.msisdn import msisdn_is_authenticated, normalize_msisdn
from voms.domain.pins import check_pin, normalize_pin
from voms.domain.results import Result
from voms.domain.roles import Permission, Role
from voms.domain.scenarios import choose_scenario
from voms.domain.serials import format_serial
from voms.domain.states import BatchState, VoucherState, is_expired, redemption_blocker
from voms.runtime import Runtime
from voms.services import catalog_cache, guessing, idempotency
from voms.services.auth import Principal
from voms.services.catalog import public_scenario

CHANNELS = frozenset({"rest", "soap", "ussd", "sms", "ivr", "web", "care"})
SYSTEM_CHANNEL = "system"  # housekeeping acting on its own
HOUSEKEEPING = Principal(name="housekeeping", role=Role.ADMIN)

Response = dict[str, Any]
# What a call's checks hand back: its writes, run with the COMMIT (statements returning
# nothing only; see voms.db.pipeline), and the answer they make.
Writes = Callable[[], Response]
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


def _record(
    conn: Connection, attempt: _Attempt, result: Result, credits: list[Any], at: datetime
) -> None:
    hot.run(
        conn,
        _INSERT_TRANSACTION,
        {
            "id": attempt.id,
            "at": at,
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


def _pin(rt: Runtime, conn: Connection, raw: object) -> str:
    """The PIN without spaces or dashes, checked for format, length and check digit."""
    if raw is not None and _digits(raw) is None:
        raise ResultError(Result.INVALID_VOUCHER_NUMBER)
    pin = normalize_pin(_digits(raw))
    known = catalog_cache.snapshot_knowing(rt, conn, lambda s: len(pin) in s.pin_lengths)
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


def _service_provider(rt: Runtime, conn: Connection, actor: Principal, raw: object) -> int | None:
    """The provider a call is limited to: the one named, or the key's own."""
    if raw is None:
        return actor.service_provider_id
    if not isinstance(raw, str):
        raise ResultError(Result.SERVICE_PROVIDER_NOT_FOUND)
    known = catalog_cache.snapshot_knowing(rt, conn, lambda s: raw in s.service_providers)
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


# --- the transaction frame shared by every call ----------------------------------------


def _execute(
    rt: Runtime,
    attempt: _Attempt,
    request: "AnyRequest",
    work: Callable[[Connection, datetime], Writes],
) -> Response:
    """Run ``work`` in one transaction, with idempotency and the record of the attempt.

    ``work`` reads and checks; the writes it returns, the record of the attempt and the
    stored answer then go out with the COMMIT, in one round trip on PostgreSQL. A request
    id is not looked up first: storing it fails if it was used before, and so does a
    repeated call's work (its voucher is taken); either way the first answer is then
    looked up and given again.
    """
    now = utcnow()
    request_id: str | None = None
    scope = idempotency.scope_of(attempt.actor)
    request_hash = ""
    try:
        attempt.channel = _channel(request.channel)
        request_id = _request_id(request.request_id)
        if request_id is not None:
            # vars(), not asdict(): the fields are JSON values, asdict() deep-copies them.
            params = {k: v for k, v in vars(request).items() if k != "request_id"}
            if attempt.kind in ("commit", "revoke"):
                params["reservation_id"] = attempt.reservation_id
            request_hash = idempotency.fingerprint(rt.keyring, attempt.kind, params)
        with transaction(rt.engine) as conn:
            writes = work(conn, now)
            with commit_together(conn):
                response = writes()
                _record(conn, attempt, Result.SUCCESS, response.get("credits", []), now)
                response["transaction_id"] = attempt.id
                if request_id is not None:
                    idempotency.remember(
                        conn, scope, request_id, request_hash, response, 200, now, plain=True
                    )
        return response
    except IntegrityError:
        if request_id is None:
            raise
        return _fail(rt, attempt, None, now, scope, request_id, request_hash)
    except ResultError as error:
        return _fail(rt, attempt, error, now, scope, request_id, request_hash)


def _replay_after_race(
    rt: Runtime, scope: str, request_id: str | None, request_hash: str
) -> Response:
    assert request_id is not None
    with rt.engine.connect() as conn:
        stored = idempotency.find(conn, scope, request_id)
    if stored is None:
        raise ResultError(Result.SYSTEM_ERROR)
    if stored.request_hash != request_hash:
        raise ResultError(Result.REQUEST_ID_REUSED)
    return idempotency.replay(stored)


def _fail(
    rt: Runtime,
    attempt: _Attempt,
    error: ResultError | None,
    now: datetime,
    scope: str,
    request_id: str | None,
    request_hash: str,
) -> Response:
    """Answer a call that failed (``error``), or whose request id was taken (None).

    A request id used before gets its first answer again, or 5006 when it came with
    another body. Otherwise the failed attempt (and a bad PIN) is recorded in a
    transaction of its own, and the error raised.
    """
    remembered = True
    with transaction(rt.engine) as conn:
        stored = idempotency.find(conn, scope, request_id) if request_id is not None else None
        again = stored is not None and stored.request_hash == request_hash
        if stored is not None and not again:
            error = ResultError(Result.REQUEST_ID_REUSED)
            _record(conn, attempt, error.result, [], now)
        elif stored is None:
            if error is None:
                raise RuntimeError("a write failed on a unique key other than the request id")
            # Issue 14: a bad PIN counts against the number only where the network gives
            # it; budgets, subscriber-first answer and masking: voms.services.guessing.
            if (
                attempt.bad_pin
                and attempt.msisdn is not None
                and msisdn_is_authenticated(attempt.channel)
            ):
                _count_bad_pin(rt, conn, attempt.msisdn, now)
            error = guessing.after_failure(rt, conn, attempt, error, now)
            _record(conn, attempt, error.result, [], now)
            if request_id is not None:
                body = {
                    "result_code": error.result.code,
                    "result_text": error.result.text,
                    **{**error.extra, "transaction_id": attempt.id},
                }
                remembered = idempotency.remember(
                    conn, scope, request_id, request_hash, body, error.result.http_status, now
                )
    if again:
        # The first answer again, success or failure; it was recorded when it happened.
        assert stored is not None
        return idempotency.replay(stored)
    if not remembered:  # a concurrent call with this request id answered first
        return _replay_after_race(rt, scope, request_id, request_hash)
    assert error is not None
    raise ResultError(error.result, **{**error.extra, "transaction_id": attempt.id})


# --- bad-PIN blacklist ------------------------------------------------------------------

_pa = t.pin_attempts
_BLACKLIST = select(_pa.c.failures, _pa.c.blacklisted_until).where(
    _pa.c.msisdn == bindparam("msisdn")
)


def _check_blacklist(conn: Connection, msisdn: str, now: datetime) -> bool:
    """Raise 5003 while ``msisdn`` is blacklisted; True when it has failures to reset."""
    row = conn.execute(_BLACKLIST, {"msisdn": msisdn}).first()
    return _blacklist_verdict(row, now)


def _blacklist_verdict(row: Any, now: datetime) -> bool:
    """From a row with the requester's ``failures`` and ``blacklisted_until`` (or None)."""
    if row is None or row.failures is None:
        return False
    if row.blacklisted_until is not None and row.blacklisted_until > now:
        raise ResultError(Result.SUBSCRIBER_BLACKLISTED)
    return True


def _count_bad_pin(rt: Runtime, conn: Connection, msisdn: str, now: datetime) -> None:
    """One more consecutive bad PIN; the last one allowed starts a blacklist."""
    settings = rt.settings
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
    conn: Connection,
    serial: int,
    from_state: VoucherState,
    to_state: VoucherState,
    now: datetime,
    redeemed_by: str | None = None,
) -> hot.Later:
    """The conditional update that decides who wins a voucher, sent with the next round
    trip (or when its rows are asked for); a row for the winner."""
    params: dict[str, Any] = {"move_serial": serial, "from_state": from_state.value, "now": now}
    if to_state is VoucherState.REDEEMED:
        params["redeemed_by"] = redeemed_by
    return hot.ahead(conn, _MOVES[to_state], params)


def _blocker(conn: Connection, serial: int, now: datetime) -> Result:
    """Why the voucher could not be taken (read again after losing the race)."""
    row = conn.execute(_VOUCHER_BY_SERIAL, {"serial": serial}).one()
    result = redemption_blocker(
        BatchState(row.batch_state), VoucherState(row.state), is_expired(row.expires_at, now)
    )
    return result or Result.ALREADY_REDEEMED


def _find_voucher(
    rt: Runtime,
    conn: Connection,
    attempt: _Attempt,
    request: RedemptionRequest,
    msisdn: str,
    now: datetime,
) -> tuple[Any, dict[str, Any], bool]:
    """The voucher of the request's PIN, checked up to its state; and its voucher type.

    The requester's blacklist is checked first (5003 comes before any PIN check); the
    third value says whether the requester has bad PINs to forget after a success.
    """
    # Issue 14: a caller over its failed-lookup budget is refused before any lookup.
    guessing.refuse_if_throttled(rt, attempt.actor, attempt.channel, attempt.service_provider_id)
    try:
        pin = _pin(rt, conn, request.pin)
    except ResultError as error:
        _check_blacklist(conn, msisdn, now)
        attempt.bad_pin = error.result is Result.INVALID_VOUCHER_NUMBER
        raise
    hashes = rt.keyring.lookup_hashes(pin)
    params = {f"hash{i}": each for i, each in enumerate(hashes)}
    found = hot.fetch(conn, _find_voucher_by(len(hashes)), {**params, "msisdn": msisdn})
    row = found[0] if found else None
    if row is None:
        _check_blacklist(conn, msisdn, now)
        _refuse_archived(conn, attempt, hashes)
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
    voucher_type = catalog_cache.voucher_type(rt, conn, voucher_type_id=row.voucher_type_id)
    if voucher_type is None:  # deleted from the catalog under a live batch
        raise ResultError(Result.VOUCHER_TYPE_NOT_FOUND)
    return row, voucher_type, had_failures


_ARCHIVED_RESULT = {
    "redeemed": Result.ALREADY_REDEEMED,
    "deleted": Result.DELETED,
    "expired": Result.EXPIRED,
}


def _refuse_archived(conn: Connection, attempt: _Attempt, hashes: list[bytes]) -> None:
    """An archived voucher's PIN is a real PIN: answer its final state, not 'not found'.

    Otherwise a subscriber typing an old, used voucher would count towards a blacklist.
    """
    archive, batches = t.voucher_archive, t.batches
    row = conn.execute(
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
    conn: Connection,
    attempt: _Attempt,
    scenario: dict[str, Any],
    cause: str,
    now: datetime,
) -> Change:
    wanted = {c["balance_type_id"] for c in scenario["credits"]}
    balance_types = catalog_cache.snapshot_knowing(
        rt, conn, lambda s: wanted <= s.balance_types.keys()
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
        at=now,
        account_expiry_extension_days=scenario["account_expiry_extension_days"],
        new_product_type_id=scenario["new_product_type_id"],
        transaction_id=attempt.id,
        serial=attempt.serial,
    )


def _crediting(
    rt: Runtime,
    conn: Connection,
    attempt: _Attempt,
    account: Account,
    scenario: dict[str, Any],
    cause: str,
    now: datetime,
) -> Callable[[], dict[str, Any]]:
    """Read all a credit needs now; the call returned applies it (writes only)."""
    change = _change(rt, conn, attempt, scenario, cause, now)
    product_type_id = change.new_product_type_id or account.product_type_id
    product_types = catalog_cache.snapshot_knowing(
        rt, conn, lambda s: product_type_id in s.product_types
    ).product_types

    def apply() -> dict[str, Any]:
        applied = rt.billing.apply(conn, account, change)
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

    return apply


def _parties(attempt: _Attempt, request: RedemptionRequest | RechargeRequest) -> tuple[str, str]:
    """Requester and recipient (the requester unless one is named), noted on the attempt."""
    msisdn = attempt.msisdn = _msisdn(request.msisdn)
    recipient = attempt.recipient = (
        msisdn if request.recipient_msisdn is None else _msisdn(request.recipient_msisdn)
    )
    return msisdn, recipient


def _start(
    rt: Runtime, conn: Connection, attempt: _Attempt, request: RedemptionRequest
) -> tuple[str, str]:
    """Requester and recipient; the provider the call is limited to."""
    msisdn, recipient = _parties(attempt, request)
    attempt.service_provider_id = _service_provider(
        rt, conn, attempt.actor, request.service_provider
    )
    return msisdn, recipient


_RESET_BAD_PINS = delete(_pa).where(_pa.c.msisdn == bindparam("msisdn"))


def _reset_bad_pins(conn: Connection, msisdn: str) -> None:
    hot.run(conn, _RESET_BAD_PINS, {"msisdn": msisdn})


# --- the calls ----------------------------------------------------------------------------


def redeem(rt: Runtime, actor: Principal, request: RedemptionRequest) -> Response:
    """Consume the voucher of a PIN and credit the recipient's wallet, atomically."""
    actor.require(Permission.REDEEM)
    attempt = _Attempt(kind="redemption", actor=actor)

    def work(conn: Connection, now: datetime) -> Writes:
        msisdn, recipient = _start(rt, conn, attempt, request)
        voucher, voucher_type, had_failures = _find_voucher(rt, conn, attempt, request, msisdn, now)
        # The voucher is taken in the round trip that locks the account. So a redemption
        # locks the voucher, then the subscriber: no other transaction locks both.
        taken = _move_voucher(
            conn, voucher.serial, VoucherState.AVAILABLE, VoucherState.REDEEMED, now, recipient
        )
        account = rt.billing.load_account(conn, recipient, lock=True)
        _check_account(account, voucher_type)
        assert account is not None
        scenario = _scenario(attempt, voucher_type, request.scenario)
        if not taken.rows():
            raise ResultError(_blocker(conn, voucher.serial, now))
        credit = _crediting(rt, conn, attempt, account, scenario, "redemption", now)

        def writes() -> Response:
            credited = credit()
            if had_failures:
                _reset_bad_pins(conn, msisdn)
            return _success(
                serial=format_serial(voucher.serial, rt.settings.serial_width),
                voucher_type=voucher_type["code"],
                scenario=scenario["number"],
                msisdn=attempt.msisdn,
                recipient_msisdn=attempt.recipient,
                **credited,
            )

        return writes

    return _execute(rt, attempt, request, work)


def reserve(rt: Runtime, actor: Principal, request: RedemptionRequest) -> Response:
    """Hold a voucher for an external charging system, which applies the credits itself.

    The recipient need not have a wallet here; when it has one, its state and product
    type are checked as for a redemption.
    """
    actor.require(Permission.REDEEM)
    attempt = _Attempt(kind="reservation", actor=actor)
    attempt.reservation_id = str(uuid.uuid4())

    def work(conn: Connection, now: datetime) -> Writes:
        msisdn, recipient = _start(rt, conn, attempt, request)
        voucher, voucher_type, had_failures = _find_voucher(rt, conn, attempt, request, msisdn, now)
        taken = _move_voucher(
            conn, voucher.serial, VoucherState.AVAILABLE, VoucherState.RESERVED, now
        )
        account = rt.billing.load_account(conn, recipient, lock=False)  # (sends it)
        _check_account(account, voucher_type, required=False)
        scenario = _scenario(attempt, voucher_type, request.scenario)
        if not taken.rows():
            raise ResultError(_blocker(conn, voucher.serial, now))
        credits = [
            {
                "balance_type": c["balance_type"],
                "amount": c["amount"],
                "balance_expiry_extension_days": c["balance_expiry_extension_days"],
                "balance": None,
            }
            for c in scenario["credits"]
        ]
        expires_at = now + timedelta(seconds=voucher_type["reservation_timeout_s"])

        def writes() -> Response:
            conn.execute(
                insert(t.reservations).values(
                    id=attempt.reservation_id,
                    serial=voucher.serial,
                    voucher_type_id=voucher_type["id"],
                    channel=attempt.channel,
                    msisdn=msisdn,
                    recipient_msisdn=recipient,
                    scenario=scenario["number"],
                    state="open",
                    credits=credits,
                    created_at=now,
                    expires_at=expires_at,
                    api_key_id=actor.api_key_id,
                )
            )
            if had_failures:
                _reset_bad_pins(conn, msisdn)
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

        return writes

    return _execute(rt, attempt, request, work)


def recharge(rt: Runtime, actor: Principal, request: RechargeRequest) -> Response:
    """Credit a wallet as a redemption of a voucher type would, with no voucher."""
    actor.require(Permission.VOUCHER_TYPE_RECHARGE)
    attempt = _Attempt(kind="recharge", actor=actor)

    def work(conn: Connection, now: datetime) -> Writes:
        _, recipient = _parties(attempt, request)
        sp_id = _service_provider(rt, conn, actor, request.service_provider)
        code = request.voucher_type
        voucher_type = (
            catalog_cache.voucher_type(rt, conn, code=code) if isinstance(code, str) else None
        )
        if voucher_type is None or sp_id not in (None, voucher_type["service_provider_id"]):
            raise ResultError(Result.VOUCHER_TYPE_NOT_FOUND)
        attempt.voucher_type_id = voucher_type["id"]
        attempt.service_provider_id = voucher_type["service_provider_id"]
        account = rt.billing.load_account(conn, recipient, lock=True)
        _check_account(account, voucher_type)
        assert account is not None
        scenario = _scenario(attempt, voucher_type, request.scenario)
        credit = _crediting(rt, conn, attempt, account, scenario, "recharge", now)

        def writes() -> Response:
            return _success(
                voucher_type=voucher_type["code"],
                scenario=scenario["number"],
                msisdn=attempt.msisdn,
                recipient_msisdn=attempt.recipient,
                **credit(),
            )

        return writes

    return _execute(rt, attempt, request, work)


# --- reservations: commit, revoke, timeout -------------------------------------------------

_r = t.reservations
_FINISHABLE = ("open", "held")


def _finish_reservation(
    conn: Connection,
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
    return conn.execute(
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
    rt: Runtime, conn: Connection, attempt: _Attempt, row: Any, action: str, now: datetime
) -> Response:
    """Apply a commit or revoke to the reserved voucher and describe it."""
    attempt.serial = row.serial
    if action == "commit":
        to_state, redeemed_by = VoucherState.REDEEMED, row.recipient_msisdn
    else:
        to_state, redeemed_by = VoucherState.AVAILABLE, None
    moved = _move_voucher(conn, row.serial, VoucherState.RESERVED, to_state, now, redeemed_by)
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

    def work(conn: Connection, now: datetime) -> Writes:
        row = _finish_reservation(
            conn,
            reservation_id,
            "committed" if action == "commit" else "revoked",
            now,
            timed_out=False,
        )
        if row is None:
            raise ResultError(Result.RESERVATION_NOT_FOUND)
        voucher_type = catalog_cache.voucher_type(rt, conn, voucher_type_id=row.voucher_type_id)
        attempt.voucher_type_id = row.voucher_type_id
        attempt.scenario = row.scenario
        attempt.msisdn, attempt.recipient = row.msisdn, row.recipient_msisdn
        sp_id = voucher_type["service_provider_id"] if voucher_type else None
        attempt.service_provider_id = sp_id
        if actor.service_provider_id is not None and sp_id != actor.service_provider_id:
            raise ResultError(Result.RESERVATION_NOT_FOUND)
        response = _settle_voucher(rt, conn, attempt, row, action, now)
        response["voucher_type"] = voucher_type["code"] if voucher_type else None
        return lambda: response

    _time_out_if_due(rt, reservation_id)
    return _execute(rt, attempt, request, work)


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
    with rt.engine.begin() as conn:
        pending = conn.execute(
            select(_r.c.voucher_type_id).where(
                _r.c.id == reservation_id, _r.c.state == "open", _r.c.expires_at <= now
            )
        ).first()
        if pending is None:
            return None
        voucher_type = catalog_cache.voucher_type(rt, conn, voucher_type_id=pending.voucher_type_id)
        action = voucher_type["timeout_action"] if voucher_type else "hold"
        row = _finish_reservation(conn, reservation_id, _TIMEOUT_STATE[action], now, timed_out=True)
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
            credits = _settle_voucher(rt, conn, attempt, row, action, now)["credits"]
        _record(conn, attempt, Result.SUCCESS, credits, now)
        return action


def _time_out_if_due(rt: Runtime, reservation_id: str) -> None:
    """A reservation past its time is first handled as the timeout job would."""
    _time_out(rt, reservation_id[:36], utcnow())


def expire_reservations(
    rt: Runtime, now: datetime | None = None, limit: int = 10_000
) -> dict[str, int]:
    """Apply the timeout action (hold, commit, revoke) to every expired open reservation."""
    now = now or utcnow()
    with rt.engine.connect() as conn:
        due = (
            conn.execute(
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
