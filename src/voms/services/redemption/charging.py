"""A redemption whose service provider keeps its balances in an external charging system.

The built-in wallet credits in the redemption's own transaction; a charging system (UCIP,
HTTP) cannot take part in it, so such a redemption runs in three steps:

1. **reserve** (:func:`hand_over`, in the redemption's unit of work): once the voucher
   is found, the voucher is reserved and a *charge* is written under a new
   originTransactionID, then committed. Nothing is asked of the charging system while a
   transaction is open.
2. **call** (:func:`settle`): the refill is sent, with that id.
3. **finish** (:func:`finish`, its own unit of work): on a definite success the voucher
   becomes redeemed; on a definite refusal (5001, 3000) or a call that never left
   (circuit open, no connection: 5009) it is available again; with no definite answer
   (a timeout, a reply dropped) it stays reserved, the answer is 5009, and the
   ``charging_settlement`` job (:func:`settle_due`) sends the same refill, with the same
   id, until the charging system answers definitely.

Every finish is a conditional update of the charge (pending or unknown → credited or
refused): whoever finishes a charge first decides, so the job and a late reply never
both move the voucher. A voucher is thus credited at most once, by the charging
system's own rule that a repeated id is the same refill, and never lost: it ends
redeemed or available.
"""

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, or_, select, update

from voms.billing.external import (
    Answer,
    ExternalCredit,
    ExternalEngine,
    Refill,
    Status,
    new_origin_id,
)
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError, VomsError
from voms.domain.msisdn import mask_msisdn
from voms.domain.results import Result
from voms.domain.roles import Role
from voms.domain.serials import format_serial
from voms.domain.states import VoucherAction
from voms.runtime import Runtime
from voms.services import catalog_cache
from voms.services.auth import Principal
from voms.services.billing import engine_for, external_ids
from voms.services.events import outbox as events
from voms.services.redemption import accounts, attempts, blacklist, requests, vouchers
from voms.services.redemption.requests import Attempt, RedemptionRequest, Response
from voms.services.redemption.vouchers import Found
from voms.services.uow import AnsweredBefore, UnitOfWork

log = logging.getLogger("voms.charging")

# How long the job leaves a charge whose call may still be waiting for its reply
# before it retries it itself (beyond the engine's own timeout).
GRACE = timedelta(seconds=30)
MAX_BACKOFF = timedelta(minutes=10)
UNSETTLED = ("pending", "unknown")
_c = t.charges


# --- 1. reserve ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Charge:
    """A credit asked of a charging system, as the charges table keeps it."""

    id: str
    transaction_id: str
    serial: int
    service_provider_id: int
    channel: str
    msisdn: str
    recipient_msisdn: str
    voucher_type_id: int
    scenario: int
    refill: Refill
    actor: str
    api_key_id: int | None
    tries: int = 1


class Reserved(VomsError):
    """Raised out of the redemption's unit of work once it committed a charge: the
    redemption goes on outside any transaction (:func:`settle`)."""

    def __init__(self, charge: Charge, engine: ExternalEngine) -> None:
        super().__init__("voucher reserved for a charging system")
        self.charge = charge
        self.system = engine


_INSERT_CHARGE = insert(_c)


def hand_over(
    rt: Runtime,
    uow: UnitOfWork,
    attempt: Attempt,
    request: RedemptionRequest,
    found: Found,
    msisdn: str,
    recipient: str,
) -> None:
    """Nothing, for a provider with the built-in wallet. Otherwise reserve the voucher
    and commit its charge, then raise :class:`Reserved`."""
    engine = engine_for(rt, uow.conn, found.voucher_type.service_provider_id)
    if engine is None:
        return
    # The answer is stored only once the charging system has given it, so a repeated
    # request id is looked up now, before the voucher is reserved again.
    uow.idempotent(*requests.request_key(rt, attempt, request))
    if engine.refusing():  # a dead charging system: refuse before taking anything
        raise ResultError(Result.CHARGING_UNAVAILABLE)
    taken = vouchers.move(uow, found.serial, VoucherAction.RESERVE)
    account = rt.billing.load_account(uow, recipient, lock=False)  # (sends the move too)
    accounts.check_account(account, found.voucher_type, required=False)
    scenario = accounts.scenario(attempt, found.voucher_type, request.scenario)
    vouchers.ensure_taken(uow, taken, found.serial)
    external = external_ids(rt, uow.conn, {c.balance_type_id for c in scenario.credits})
    credits = []
    for credit in scenario.credits:
        external_id, currency = external.get(credit.balance_type_id, (None, None))
        if external_id is None:
            log.error("balance type %s has no external_id", credit.balance_type)
            raise ResultError(Result.SYSTEM_ERROR)
        credits.append(
            ExternalCredit(
                credit.balance_type,
                external_id,
                credit.amount,
                currency,
                credit.balance_expiry_extension_days,
            )
        )
    origin_id = new_origin_id()
    charge = Charge(
        id=origin_id,
        transaction_id=attempt.id,
        serial=found.serial,
        service_provider_id=found.voucher_type.service_provider_id,
        channel=attempt.channel,
        msisdn=msisdn,
        recipient_msisdn=recipient,
        voucher_type_id=found.voucher_type.id,
        scenario=scenario.number,
        refill=Refill(
            origin_id=origin_id,
            msisdn=recipient,
            credits=tuple(credits),
            account_expiry_extension_days=scenario.account_expiry_extension_days,
            serial=found.serial,
        ),
        actor=attempt.actor.name,
        api_key_id=attempt.actor.api_key_id,
    )
    timeout = timedelta(milliseconds=engine.timeout_ms)
    uow.write(
        _INSERT_CHARGE,
        {
            "id": charge.id,
            "transaction_id": charge.transaction_id,
            "serial": charge.serial,
            "service_provider_id": charge.service_provider_id,
            "engine": engine.kind,
            "channel": charge.channel,
            "msisdn": charge.msisdn,
            "recipient_msisdn": charge.recipient_msisdn,
            "voucher_type_id": charge.voucher_type_id,
            "scenario": charge.scenario,
            "refill": charge.refill.as_json(),
            "state": "pending",
            "tries": 1,
            "next_try_at": uow.started_at + 2 * timeout + GRACE,
            "actor": charge.actor,
            "api_key_id": charge.api_key_id,
            "created_at": uow.started_at,
        },
    )
    if found.had_failures:
        blacklist.forget_bad_pins(uow, msisdn)
    uow.commit()
    raise Reserved(charge, engine)


# --- 2. call, 3. finish --------------------------------------------------------------------


def settle(
    rt: Runtime, attempt: Attempt, request: RedemptionRequest, reserved: Reserved
) -> Response:
    """Send the reserved charge's refill and answer the redemption with its outcome."""
    answer = reserved.system.credit(reserved.charge.refill)
    result, response = finish(rt, reserved.charge, answer, attempt=attempt)
    key = requests.request_key(rt, attempt, request)
    body = response if result is Result.SUCCESS else result.body(**response)
    _store_answer(rt, key, body, result.http_status)
    if result is not Result.SUCCESS:
        raise ResultError(result, **response)
    return response


def finish(
    rt: Runtime, charge: Charge, answer: Answer, *, attempt: Attempt | None = None
) -> tuple[Result, dict[str, Any]]:
    """Record what the charging system answered for ``charge``: the voucher redeemed
    (credited), available again (refused, unsent) or still reserved (unknown).

    ``attempt``: the redemption that is answered now (None: the settlement job, which
    records the outcome as a transaction of its own). The result and the answer's fields.
    """
    outcome = _Outcome.of(answer)
    with UnitOfWork(rt) as uow:
        now = uow.started_at
        if outcome.state == "unknown":
            rows = uow.fetch(
                _MARK_UNKNOWN,
                {
                    "b_id": charge.id,
                    "b_tries": charge.tries,
                    "b_next_try_at": now + _backoff(rt, charge.tries),
                    "b_last_error": answer.detail[:200],
                },
            )
        else:
            rows = uow.fetch(
                _MARK_SETTLED,
                {
                    "b_id": charge.id,
                    "b_state": outcome.state,
                    "b_tries": charge.tries,
                    "b_result_code": answer.result.code,
                    "b_settled_at": now,
                    "b_settled_transaction_id": attempt.id if attempt else _new_transaction_id(),
                    "b_last_error": answer.detail[:200] or None,
                },
            )
        if not rows:  # finished by another (the job, or a late reply): say what it decided
            uow.commit()
            return _decided(rt, charge)
        own = attempt or _settlement_attempt(charge, rows[0].settled_transaction_id)
        response: dict[str, Any] = {"transaction_id": own.id}
        if outcome.state == "credited":
            moved = vouchers.move(uow, charge.serial, VoucherAction.COMMIT, charge.recipient_msisdn)
            if not moved.rows():
                raise RuntimeError(f"voucher {charge.serial} of a charge is not reserved")
            response = _success(rt, uow.conn, charge, answer, own)
            # voucher.redeemed, in the transaction that redeems it (now or at settlement)
            events.attempt_succeeded(
                uow, "redemption", charge.channel, charge.service_provider_id, response
            )
        elif outcome.state == "refused":
            moved = vouchers.move(uow, charge.serial, VoucherAction.REVOKE)
            if not moved.rows():
                raise RuntimeError(f"voucher {charge.serial} of a charge is not reserved")
            if answer.result is Result.SUBSCRIBER_NOT_FOUND:
                _forget_number(uow, charge, own)
        if attempt is not None or outcome.state != "unknown":
            attempts.record(uow, own, answer.result, response.get("credits", []))
        hook = rt.after_recharge
        if hook is not None and outcome.state == "credited":
            channel = charge.channel
            uow.after_commit(lambda: hook(channel, response))
        uow.commit()
    return answer.result, response


@dataclass(frozen=True)
class _Outcome:
    state: str  # what the charge becomes

    @classmethod
    def of(cls, answer: Answer) -> "_Outcome":
        if answer.status is Status.CREDITED:
            return cls("credited")
        if answer.status in (Status.REFUSED, Status.UNSENT):
            return cls("refused")
        return cls("unknown")


# (Not state IN (…): the hot path's statements take no expanding parameters.)
_UNSETTLED = or_(_c.c.state == "pending", _c.c.state == "unknown")
_MARK_UNKNOWN = (
    update(_c)
    .where(_c.c.id == bindparam("b_id"), _UNSETTLED)
    .values(
        state="unknown",
        tries=bindparam("b_tries"),
        next_try_at=bindparam("b_next_try_at"),
        last_error=bindparam("b_last_error"),
    )
    .returning(_c.c.id, _c.c.transaction_id.label("settled_transaction_id"))
)
_MARK_SETTLED = (
    update(_c)
    .where(_c.c.id == bindparam("b_id"), _UNSETTLED)
    .values(
        state=bindparam("b_state"),
        tries=bindparam("b_tries"),
        result_code=bindparam("b_result_code"),
        settled_at=bindparam("b_settled_at"),
        settled_transaction_id=bindparam("b_settled_transaction_id"),
        last_error=bindparam("b_last_error"),
    )
    .returning(_c.c.id, _c.c.settled_transaction_id)
)


_MASK_CHARGE = (
    update(_c)
    .where(_c.c.id == bindparam("b_id"))
    .values(
        msisdn=bindparam("b_msisdn"),
        recipient_msisdn=bindparam("b_recipient"),
        refill=bindparam("b_refill"),
    )
)


def _forget_number(uow: UnitOfWork, charge: Charge, own: Attempt) -> None:
    """A number the charging system does not know may be a PIN typed into the wrong
    field: like every failed attempt to an unknown number, it is kept masked."""
    masked = mask_msisdn(charge.recipient_msisdn)
    requester = masked if charge.msisdn == charge.recipient_msisdn else charge.msisdn
    if own.msisdn == charge.recipient_msisdn:
        own.msisdn = masked
    own.recipient = masked
    uow.write(
        _MASK_CHARGE,
        {"b_id": charge.id, "b_msisdn": requester, "b_recipient": masked, "b_refill": {}},
    )


def _backoff(rt: Runtime, tries: int) -> timedelta:
    first = timedelta(seconds=rt.settings.charging_settle_after_s)
    return min(first * int(2 ** min(tries - 1, 20)), MAX_BACKOFF)


def _new_transaction_id() -> str:
    return str(uuid.uuid4())


def _settlement_attempt(charge: Charge, transaction_id: str) -> Attempt:
    """The settlement's own transaction: the redemption's parties, channel and caller."""
    return Attempt(
        kind="redemption",
        actor=Principal(name=charge.actor, role=Role.CHANNEL, api_key_id=charge.api_key_id),
        channel=charge.channel,
        msisdn=charge.msisdn,
        recipient=charge.recipient_msisdn,
        serial=charge.serial,
        voucher_type_id=charge.voucher_type_id,
        scenario=charge.scenario,
        service_provider_id=charge.service_provider_id,
        id=transaction_id,
    )


def _success(
    rt: Runtime, conn: Connection, charge: Charge, answer: Answer, own: Attempt
) -> dict[str, Any]:
    """The redemption's answer, with the balances the charging system reported (null
    where it reported none)."""
    reported = {b.external_id: b for b in answer.balances}
    credits = []
    for credit in charge.refill.credits:
        balance = reported.get(credit.external_id)
        credits.append(
            {
                "balance_type": credit.balance_type,
                "amount": credit.amount,
                "balance": balance.amount if balance else None,
                "expires_at": attempts.iso(balance.expires_at) if balance else None,
            }
        )
    return attempts.success(
        transaction_id=own.id,
        serial=format_serial(charge.serial, rt.settings.serial_width),
        voucher_type=_voucher_type_code(rt, conn, charge),
        scenario=charge.scenario,
        msisdn=charge.msisdn,
        recipient_msisdn=charge.recipient_msisdn,
        credits=credits,
        account_expires_at=attempts.iso(answer.account_expires_at),
        product_type=None,
        rewards=[],
    )


def _voucher_type_code(rt: Runtime, conn: Connection, charge: Charge) -> str | None:
    found = catalog_cache.voucher_type(rt, conn, voucher_type_id=charge.voucher_type_id)
    return found.code if found else None


def _decided(rt: Runtime, charge: Charge) -> tuple[Result, dict[str, Any]]:
    with UnitOfWork(rt, read_only=True) as uow:
        row = uow.conn.execute(
            select(_c.c.state, _c.c.result_code, _c.c.settled_transaction_id).where(
                _c.c.id == charge.id
            )
        ).one()
        if row.state == "credited":
            own = _settlement_attempt(charge, row.settled_transaction_id)
            return Result.SUCCESS, _success(rt, uow.conn, charge, Answer(Status.CREDITED), own)
    if row.state == "refused":
        return Result.from_code(row.result_code), {"transaction_id": charge.transaction_id}
    return Result.CHARGING_UNAVAILABLE, {"transaction_id": charge.transaction_id}


def _store_answer(
    rt: Runtime, key: tuple[str, str | None, str], body: dict[str, Any], status: int
) -> None:
    """The answer under the request id, unless a retry stored one meanwhile."""
    scope, request_id, fingerprint = key
    if request_id is None:
        return
    try:
        with UnitOfWork(rt) as uow:
            uow.idempotent(scope, request_id, fingerprint)
            uow.answer(body, status)
            uow.commit()
    except (AnsweredBefore, VomsError):
        pass


# --- the settlement job ----------------------------------------------------------------------


def _charge_of(row: Any) -> Charge:
    return Charge(
        id=row.id,
        transaction_id=row.transaction_id,
        serial=row.serial,
        service_provider_id=row.service_provider_id,
        channel=row.channel,
        msisdn=row.msisdn,
        recipient_msisdn=row.recipient_msisdn,
        voucher_type_id=row.voucher_type_id,
        scenario=row.scenario,
        refill=Refill.from_json(row.refill),
        actor=row.actor,
        api_key_id=row.api_key_id,
        tries=row.tries,
    )


def settle_due(rt: Runtime, now: datetime | None = None, limit: int = 1000) -> dict[str, int]:
    """Send again, with the same id, every charge whose outcome is unknown and due, and
    record the definite answers; counts by what became of them."""
    now = now or utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        due = uow.conn.execute(
            select(_c)
            .where(and_(_c.c.state.in_(UNSETTLED), _c.c.next_try_at <= now))
            .order_by(_c.c.next_try_at)
            .limit(limit)
        ).all()
        engines = {
            row.service_provider_id: _engine_or_none(rt, uow.conn, row.service_provider_id)
            for row in due
        }
    done = {"credited": 0, "refused": 0, "unknown": 0}
    for row in due:
        engine = engines[row.service_provider_id]
        charge = _charge_of(row)
        if engine is None:  # the provider no longer names a usable charging system
            answer = Answer(Status.UNKNOWN, Result.CHARGING_UNAVAILABLE, detail="no engine")
        else:
            answer = engine.credit(charge.refill)
        if answer.status is Status.UNSENT:  # nothing left: try again later, as unknown
            answer = Answer(Status.UNKNOWN, Result.CHARGING_UNAVAILABLE, detail=answer.detail)
        charge = replace(charge, tries=charge.tries + 1)
        finish(rt, charge, answer)
        done[_Outcome.of(answer).state] += 1
    return done


def _engine_or_none(rt: Runtime, conn: Connection, sp_id: int) -> ExternalEngine | None:
    """The provider's engine now (None when it names no usable one: retried later)."""
    try:
        return engine_for(rt, conn, sp_id)
    except ResultError:
        return None
