"""Reservations: commit or revoke, and the timeout action when neither came in time.

A reservation moves through its transition table (open → committed, revoked or held;
held → committed or revoked); the conditional update of its row decides who finishes
it, and its voucher moves through the voucher table (reserved → redeemed or available).
No wallet changes here: the external charging system credits the subscriber.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.domain.roles import Permission, Role
from voms.domain.serials import format_serial
from voms.domain.states import (
    RESERVATION_VOUCHER_ACTION,
    ReservationAction,
    ReservationState,
    next_reservation_state,
    reservation_states_allowing,
)
from voms.runtime import Runtime
from voms.services import catalog_cache
from voms.services.auth import Principal
from voms.services.events import outbox as events
from voms.services.redemption import attempts, vouchers
from voms.services.redemption.attempts import success
from voms.services.redemption.requests import (
    SYSTEM_CHANNEL,
    Attempt,
    Response,
    SettlementRequest,
)
from voms.services.uow import UnitOfWork

HOUSEKEEPING = Principal(name="housekeeping", role=Role.ADMIN)

_r = t.reservations


def _finish_reservation(
    uow: UnitOfWork,
    reservation_id: str,
    action: ReservationAction,
    now: datetime,
    *,
    timed_out: bool,
) -> Any:
    """The conditional update that decides who finishes a reservation; its row or None.

    A timeout finishes an open reservation past its time; a commit or revoke, a held
    one or an open one still in time.
    """
    if timed_out:
        condition = (_r.c.state == ReservationState.OPEN.value) & (_r.c.expires_at <= now)
    else:
        states = sorted(s.value for s in reservation_states_allowing(action))
        condition = _r.c.state.in_(states) & (
            (_r.c.state != ReservationState.OPEN.value) | (_r.c.expires_at > now)
        )
    # (From a held reservation a commit or revoke leads to the same state as from an open one.)
    new_state = next_reservation_state(ReservationState.OPEN, action)
    return uow.conn.execute(
        update(_r)
        .where(_r.c.id == reservation_id, condition)
        .values(
            state=new_state.value,
            finished_at=None if new_state is ReservationState.HELD else now,
        )
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
    rt: Runtime, uow: UnitOfWork, attempt: Attempt, row: Any, action: ReservationAction
) -> Response:
    """Move the reserved voucher as the commit or revoke says, and describe it."""
    attempt.serial = row.serial
    committed = action is ReservationAction.COMMIT
    redeemed_by = row.recipient_msisdn if committed else None
    moved = vouchers.move(uow, row.serial, RESERVATION_VOUCHER_ACTION[action], redeemed_by)
    if not moved.rows():
        raise RuntimeError(f"voucher {row.serial} of an open reservation is not reserved")
    return success(
        reservation_id=attempt.reservation_id,
        serial=format_serial(row.serial, rt.settings.serial_width),
        scenario=row.scenario,
        msisdn=row.msisdn,
        recipient_msisdn=row.recipient_msisdn,
        credits=row.credits if committed else [],
    )


def _finish(
    rt: Runtime,
    actor: Principal,
    reservation_id: str,
    action: ReservationAction,
    request: SettlementRequest,
) -> Response:
    actor.require(Permission.REDEEM)
    attempt = Attempt(kind=action.value, actor=actor, reservation_id=reservation_id[:36])

    def work(uow: UnitOfWork) -> Response:
        row = _finish_reservation(uow, reservation_id, action, uow.started_at, timed_out=False)
        if row is None:
            raise ResultError(Result.RESERVATION_NOT_FOUND)
        voucher_type = catalog_cache.voucher_type(rt, uow.conn, voucher_type_id=row.voucher_type_id)
        attempt.voucher_type_id = row.voucher_type_id
        attempt.scenario = row.scenario
        attempt.msisdn, attempt.recipient = row.msisdn, row.recipient_msisdn
        sp_id = voucher_type.service_provider_id if voucher_type else None
        attempt.service_provider_id = sp_id
        if actor.service_provider_id is not None and sp_id != actor.service_provider_id:
            raise ResultError(Result.RESERVATION_NOT_FOUND)
        response = _settle_voucher(rt, uow, attempt, row, action)
        response["voucher_type"] = voucher_type.code if voucher_type else None
        return response

    _time_out(rt, reservation_id[:36], utcnow())  # one past its time is first timed out
    return attempts.run(rt, attempt, request, work)


def commit(
    rt: Runtime, actor: Principal, reservation_id: str, request: SettlementRequest | None = None
) -> Response:
    """The reserved voucher becomes redeemed; no wallet changes (the charging system's)."""
    settlement = request or SettlementRequest()
    return _finish(rt, actor, reservation_id, ReservationAction.COMMIT, settlement)


def revoke(
    rt: Runtime, actor: Principal, reservation_id: str, request: SettlementRequest | None = None
) -> Response:
    """The reserved voucher becomes available again."""
    settlement = request or SettlementRequest()
    return _finish(rt, actor, reservation_id, ReservationAction.REVOKE, settlement)


def _time_out(rt: Runtime, reservation_id: str, now: datetime) -> ReservationAction | None:
    """Apply the voucher type's timeout action to one expired open reservation."""
    with UnitOfWork(rt) as uow:
        pending = uow.conn.execute(
            select(_r.c.voucher_type_id).where(
                _r.c.id == reservation_id,
                _r.c.state == ReservationState.OPEN.value,
                _r.c.expires_at <= now,
            )
        ).first()
        if pending is None:
            return None
        voucher_type = catalog_cache.voucher_type(
            rt, uow.conn, voucher_type_id=pending.voucher_type_id
        )
        action = ReservationAction(voucher_type.timeout_action if voucher_type else "hold")
        row = _finish_reservation(uow, reservation_id, action, now, timed_out=True)
        if row is None:
            return None
        attempt = Attempt(
            kind=action.value,
            actor=HOUSEKEEPING,
            channel=SYSTEM_CHANNEL,
            msisdn=row.msisdn,
            recipient=row.recipient_msisdn,
            serial=row.serial,
            voucher_type_id=row.voucher_type_id,
            scenario=row.scenario,
            service_provider_id=voucher_type.service_provider_id if voucher_type else None,
            reservation_id=reservation_id,
        )
        credits: list[Any] = []
        if action is not ReservationAction.HOLD:
            settled = _settle_voucher(rt, uow, attempt, row, action)
            credits = settled["credits"]
            settled["transaction_id"] = attempt.id
            sp_id = attempt.service_provider_id
            events.attempt_succeeded(uow, action.value, SYSTEM_CHANNEL, sp_id, settled)
        attempts.record(uow, attempt, Result.SUCCESS, credits, at=now)
        uow.commit()
        return action


def expire_reservations(
    rt: Runtime, now: datetime | None = None, limit: int = 10_000
) -> dict[str, int]:
    """Apply the timeout action (hold, commit, revoke) to every expired open reservation."""
    now = now or utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        due = (
            uow.conn.execute(
                select(_r.c.id)
                .where(_r.c.state == ReservationState.OPEN.value, _r.c.expires_at <= now)
                .order_by(_r.c.expires_at)
                .limit(limit)
            )
            .scalars()
            .all()
        )
    done = {action.value: 0 for action in ReservationAction}
    for reservation_id in due:
        action = _time_out(rt, reservation_id, now)
        if action is not None:
            done[action.value] += 1
    return done
