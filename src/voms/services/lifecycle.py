"""Batch and voucher lifecycle: activate, freeze, unfreeze, delete, amend expiry.

A batch operation is one row update on ``batches`` (the effective voucher state combines
it with the voucher's own); a serial-range operation is one set-based conditional
UPDATE on ``vouchers``. Every operation is one row in ``voucher_events`` (who, when,
what, which serials) and one in the audit log.
"""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints
from sqlalchemy import Connection, Row, func, insert, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Permission
from voms.domain.serials import format_serial, parse_serial_range
from voms.domain.states import (
    BATCH_TRANSITIONS,
    BatchAction,
    BatchState,
    VoucherAction,
    next_batch_state,
    next_voucher_state,
    voucher_states_allowing,
)
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal
from voms.services.events import outbox as events
from voms.services.reports import rollups
from voms.services.uow import UnitOfWork

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# What operators may ask of a batch; complete/fail belong to generation.
OPERATOR_BATCH_ACTIONS = (
    BatchAction.ACTIVATE,
    BatchAction.FREEZE,
    BatchAction.UNFREEZE,
    BatchAction.DELETE,
)
RANGE_ACTIONS = (VoucherAction.FREEZE, VoucherAction.UNFREEZE, VoucherAction.DELETE)
MAX_PAGE = 1000


class BatchUpdate(BaseModel):
    """PATCH /api/v1/batches/{id}."""

    model_config = ConfigDict(extra="forbid")

    expires_at: AwareDatetime


class BatchActionIn(BaseModel):
    """Body (optional) of POST /api/v1/batches/{id}/activate|freeze|unfreeze|delete."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason | None = None


class SerialRangeIn(BaseModel):
    """POST /api/v1/vouchers/freeze|unfreeze|delete: one voucher or an inclusive range."""

    model_config = ConfigDict(extra="forbid")

    serial_from: Annotated[str, StringConstraints(strip_whitespace=True, max_length=32)]
    serial_to: Annotated[str, StringConstraints(strip_whitespace=True, max_length=32)] | None = None
    reason: Reason | None = None


# --- reading batches ----------------------------------------------------------------------

_b, _vt, _sp = t.batches, t.voucher_types, t.service_providers
_BATCHES = select(
    _b, _vt.c.code.label("voucher_type"), _sp.c.code.label("service_provider")
).select_from(
    _b.join(_vt, _vt.c.id == _b.c.voucher_type_id).join(_sp, _sp.c.id == _b.c.service_provider_id)
)


def load_batch(conn: Connection, batch_id: int) -> Row[Any]:
    """The batch row (with voucher type and provider codes), or NotFound."""
    row = conn.execute(_BATCHES.where(_b.c.id == batch_id)).first()
    if row is None:
        raise NotFound(f"batch {batch_id} not found")
    return row


def batch_size(row: Row[Any]) -> int:
    """The batch's voucher count (``Row.count`` is the tuple method)."""
    return int(row._mapping["count"])


def _view(row: Row[Any], width: int) -> dict[str, Any]:
    return {
        "batch_id": row.id,
        "state": row.state,
        "count": batch_size(row),
        "generated_count": row.generated_count,
        "serial_first": format_serial(row.serial_first, width),
        "serial_last": format_serial(row.serial_last, width),
        "voucher_type": row.voucher_type,
        "service_provider": row.service_provider,
        "expires_at": row.expires_at,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "error": row.error,
        "request_id": row.request_id,
        "parent_batch_id": row.parent_batch_id,
    }


def batch_view(conn: Connection, batch_id: int, width: int) -> dict[str, Any]:
    """A batch as the API shows it: state, progress, serial range, expiry."""
    return _view(load_batch(conn, batch_id), width)


def get_batch(rt: Runtime, actor: Principal, batch_id: int) -> dict[str, Any]:
    """One batch with its generation progress."""
    actor.require(Permission.BATCH_READ)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        row = load_batch(conn, batch_id)
    actor.require_scope(row.service_provider_id)
    return _view(row, rt.settings.serial_width)


def list_batches(
    rt: Runtime,
    actor: Principal,
    *,
    state: str | None = None,
    voucher_type: str | None = None,
    service_provider: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Batches newest first, filtered; ``next_cursor`` fetches the following page."""
    actor.require(Permission.BATCH_READ)
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}")
    query = _BATCHES.order_by(_b.c.id.desc()).limit(limit + 1)
    if state is not None:
        try:
            query = query.where(_b.c.state == BatchState(state).value)
        except ValueError:
            raise Invalid(
                f"unknown batch state '{state}'; one of: {', '.join(BatchState)}"
            ) from None
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
            raise Invalid("malformed cursor")
        query = query.where(_b.c.id < int(cursor))
    for moment in (since, until):
        if moment is not None and moment.tzinfo is None:
            raise Invalid("since and until need a UTC offset")
    if since is not None:
        query = query.where(_b.c.created_at >= since)
    if until is not None:
        query = query.where(_b.c.created_at < until)
    if actor.service_provider_id is not None:
        query = query.where(_b.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        if voucher_type is not None:
            if conn.execute(select(_vt.c.id).where(_vt.c.code == voucher_type)).first() is None:
                raise NotFound(f"voucher type '{voucher_type}' not found")
            query = query.where(_vt.c.code == voucher_type)
        if service_provider is not None:
            if conn.execute(select(_sp.c.id).where(_sp.c.code == service_provider)).first() is None:
                raise NotFound(f"service provider '{service_provider}' not found")
            query = query.where(_sp.c.code == service_provider)
        rows = conn.execute(query).all()
    width = rt.settings.serial_width
    page = [_view(row, width) for row in rows[:limit]]
    return {
        "items": page,
        "next_cursor": str(rows[limit - 1].id) if len(rows) > limit else None,
    }


# --- history ------------------------------------------------------------------------------


def record_event(
    conn: Connection,
    actor: Principal,
    action: str,
    *,
    batch_id: int | None,
    serial_from: int,
    serial_to: int,
    affected: int,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """One history row for one operation on a batch or a serial range."""
    conn.execute(
        insert(t.voucher_events).values(
            at=now or utcnow(),
            actor=actor.name,
            action=action,
            batch_id=batch_id,
            serial_from=serial_from,
            serial_to=serial_to,
            affected=affected,
            reason=reason,
            detail=detail or {},
        )
    )
    events.history_recorded(
        conn, action, batch_id, serial_from, serial_to, affected, reason, now or utcnow()
    )


def history(conn: Connection, serial: int, width: int) -> list[dict[str, Any]]:
    """Every recorded operation that covered ``serial``, oldest first."""
    e = t.voucher_events
    rows = conn.execute(
        select(e).where(e.c.serial_from <= serial, e.c.serial_to >= serial).order_by(e.c.at, e.c.id)
    )
    return [
        {
            "at": row.at,
            "actor": row.actor,
            "action": row.action,
            "batch_id": row.batch_id,
            "serial_from": format_serial(row.serial_from, width),
            "serial_to": format_serial(row.serial_to, width),
            "reason": row.reason,
        }
        for row in rows
    ]


# --- batch operations -------------------------------------------------------------------------


def _batch_action(action: BatchAction | str) -> BatchAction:
    try:
        value = BatchAction(action)
    except ValueError:
        value = None
    if value not in OPERATOR_BATCH_ACTIONS:
        raise Invalid(
            f"unknown batch action '{action}'; one of: activate, freeze, unfreeze, delete"
        )
    assert value is not None
    return value


def change_batch(
    rt: Runtime,
    actor: Principal,
    batch_id: int,
    action: BatchAction | str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Activate, freeze, unfreeze or delete a whole batch: one row update; illegal → 409."""
    act = _batch_action(action)
    if reason is not None and len(reason) > 200:
        raise Invalid("reason is at most 200 characters")
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        batch = load_batch(conn, batch_id)
        actor.require(Permission.BATCH_WRITE, batch.service_provider_id)
        old = BatchState(batch.state)
        new = next_batch_state(old, act)
        if (
            act is BatchAction.ACTIVATE
            and rt.settings.require_approval
            and batch.created_by == actor.name
        ):
            raise Forbidden(
                "four-eyes approval: a batch must be activated by someone other than "
                f"'{actor.name}', who generated it"
            )
        changed = conn.execute(
            update(_b)
            .where(_b.c.id == batch_id, _b.c.state == old.value)
            .values(state=new.value, updated_at=now)
        ).rowcount
        if not changed:
            raise Conflict(f"batch {batch_id} changed meanwhile; try again")
        parts = _change_parts(conn, batch_id, act, now)
        record_event(
            conn,
            actor,
            act.value,
            batch_id=batch_id,
            serial_from=batch.serial_first,
            serial_to=batch.serial_last,
            affected=batch_size(batch),
            reason=reason,
            detail={"from": old.value, "to": new.value, "parts": parts},
            now=now,
        )
        audit.record(
            conn,
            actor,
            f"batch.{act.value}",
            "batch",
            batch_id,
            batch.service_provider_id,
            {"from": old.value, "to": new.value, "reason": reason, "parts": parts},
        )
        result = batch_view(conn, batch_id, rt.settings.serial_width)
        uow.commit()
        return result


def _change_parts(conn: Connection, batch_id: int, action: BatchAction, now: datetime) -> int:
    """Apply a batch operation to the batch's parts (split off by range operations, see
    voms.services.ranges), each by the transition table; parts where it is illegal (an
    active part when the batch is activated) stay as they are. How many changed."""
    changed = 0
    for (old, act), new in BATCH_TRANSITIONS.items():
        if act is action:
            changed += conn.execute(
                update(_b)
                .where(_b.c.parent_batch_id == batch_id, _b.c.state == old.value)
                .values(state=new.value, updated_at=now)
            ).rowcount
    return changed


def amend_batch(
    rt: Runtime, actor: Principal, batch_id: int, expires_at: datetime
) -> dict[str, Any]:
    """Change a batch's expiry: one row update, its vouchers follow at once."""
    if expires_at.tzinfo is None:
        raise Invalid("expires_at needs a UTC offset")
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        batch = load_batch(conn, batch_id)
        actor.require(Permission.BATCH_WRITE, batch.service_provider_id)
        if batch.state in (BatchState.DELETED, BatchState.FAILED):
            raise Conflict(f"cannot amend the expiry of a batch that is {batch.state}")
        # Its parts too (voms.services.ranges): the batch's expiry is all its vouchers'.
        conn.execute(
            update(_b)
            .where(
                (_b.c.id == batch_id)
                | (
                    (_b.c.parent_batch_id == batch_id)
                    & _b.c.state.not_in([BatchState.DELETED.value, BatchState.FAILED.value])
                )
            )
            .values(expires_at=expires_at, updated_at=now)
        )
        detail = {"from": batch.expires_at.isoformat(), "to": expires_at.isoformat()}
        record_event(
            conn,
            actor,
            "amend_expiry",
            batch_id=batch_id,
            serial_from=batch.serial_first,
            serial_to=batch.serial_last,
            affected=batch_size(batch),
            detail=detail,
            now=now,
        )
        audit.record(
            conn, actor, "batch.amend_expiry", "batch", batch_id, batch.service_provider_id, detail
        )
        result = batch_view(conn, batch_id, rt.settings.serial_width)
        uow.commit()
        return result


# --- voucher and serial-range operations ------------------------------------------------------


def _range_action(action: VoucherAction | str) -> VoucherAction:
    try:
        value = VoucherAction(action)
    except ValueError:
        value = None
    if value not in RANGE_ACTIONS:
        raise Invalid(f"unknown voucher action '{action}'; one of: freeze, unfreeze, delete")
    assert value is not None
    return value


def change_vouchers(
    rt: Runtime,
    actor: Principal,
    action: VoucherAction | str,
    serial_from: str | int,
    serial_to: str | int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Freeze, unfreeze or delete one voucher or a serial range: one conditional UPDATE.

    Vouchers whose own state does not allow the action (say, already redeemed) are left
    alone and counted; if none in the range could change, the answer is 409.
    """
    act = _range_action(action)
    width = rt.settings.serial_width
    first, last = parse_serial_range(
        serial_from, serial_from if serial_to is None else serial_to, width
    )
    if reason is not None and len(reason) > 200:
        raise Invalid("reason is at most 200 characters")
    actor.require(Permission.BATCH_WRITE)
    v = t.vouchers
    in_range = [v.c.serial >= first, v.c.serial <= last]
    if actor.service_provider_id is not None:
        in_range.append(
            v.c.batch_id.in_(
                select(_b.c.id).where(_b.c.service_provider_id == actor.service_provider_id)
            )
        )
    allowed = sorted(state.value for state in voucher_states_allowing(act))
    now = utcnow()
    label = format_serial(first, width) + (
        "" if first == last else "-" + format_serial(last, width)
    )
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        matched = conn.execute(select(func.count()).select_from(v).where(*in_range)).scalar_one()
        if not matched:
            raise NotFound(f"no voucher with serial {label}")
        (new_state,) = {next_voucher_state(state, act) for state in voucher_states_allowing(act)}
        # Counted per batch as they move, for reports (voucher_state_moves).
        affected = rollups.move_vouchers(conn, in_range, allowed, new_state.value, now)
        if not affected:
            if matched == 1:
                state = conn.execute(select(v.c.state).where(*in_range)).scalar_one()
                raise Conflict(f"cannot {act.value} voucher {label}: it is {state}")
            raise Conflict(f"none of the {matched} vouchers in {label} can be {_done(act)}")
        detail = {"matched": matched, "unchanged": matched - affected, "to": new_state.value}
        record_event(
            conn,
            actor,
            f"voucher_{act.value}",
            batch_id=None,
            serial_from=first,
            serial_to=last,
            affected=affected,
            reason=reason,
            detail=detail,
            now=now,
        )
        audit.record(
            conn,
            actor,
            f"voucher.{act.value}",
            "serial_range",
            label,
            actor.service_provider_id,
            {**detail, "reason": reason},
        )
        uow.commit()
    return {
        "action": act.value,
        "serial_from": format_serial(first, width),
        "serial_to": format_serial(last, width),
        "matched": matched,
        "affected": affected,
        "unchanged": matched - affected,
    }


def _done(action: VoucherAction) -> str:
    return {"freeze": "frozen", "unfreeze": "unfrozen", "delete": "deleted"}[action.value]
