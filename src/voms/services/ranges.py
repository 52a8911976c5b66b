"""Range operations that live on the batch: activate a serial range, change its expiry.

A voucher's effective state is its batch's state with its own, and its expiry is its
batch's: the redemption reads both from the batch row, so activating a 10-million
voucher batch is one row update. A range that is only part of a batch therefore moves
into a **part** of that batch: a batch of its own (``parent_batch_id`` names the batch it
came from) with the new state or expiry, its vouchers moved by one set-based UPDATE.
A range covering a whole batch (or a whole part) changes that row alone. A range that
continues an earlier part with the same state and expiry joins it, so activating what a
reseller sells, range after range, keeps one part.

So activating a range of an inactive batch makes exactly that range redeemable: the
rest of the batch stays inactive. Resellers activate what they sell the same way
(:func:`activate_serials`, inside their own transaction). The per-batch voucher counts
of the reports move with the vouchers, in the same transaction. Operations on the batch
itself (activate, freeze, unfreeze, delete, amend) apply to its parts too (see
:mod:`voms.services.lifecycle`).
"""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints
from sqlalchemy import Connection, Row, func, insert, or_, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Permission
from voms.domain.serials import format_serial, parse_serial_range
from voms.domain.states import BatchAction, BatchState, next_batch_state
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal
from voms.services.lifecycle import Reason, record_event
from voms.services.reports import rollups
from voms.services.uow import UnitOfWork

Serial = Annotated[str, StringConstraints(strip_whitespace=True, max_length=32)]


class RangeActivationIn(BaseModel):
    """POST /api/v1/vouchers/activate: one voucher or an inclusive serial range."""

    model_config = ConfigDict(extra="forbid")

    serial_from: Serial
    serial_to: Serial | None = None
    reason: Reason | None = None


class RangeExpiryIn(BaseModel):
    """POST /api/v1/vouchers/amend: a new expiry for one voucher or a serial range."""

    model_config = ConfigDict(extra="forbid")

    serial_from: Serial
    serial_to: Serial | None = None
    expires_at: AwareDatetime
    reason: Reason | None = None


_b, _v = t.batches, t.vouchers
_AMENDABLE = (BatchState.GENERATED, BatchState.ACTIVE, BatchState.FROZEN)
# What a batch's part becomes: (state, expiry), or None when the operation leaves it.
Target = Callable[[Row[Any]], tuple[str, datetime] | None]


def activate_range(
    rt: Runtime,
    actor: Principal,
    serial_from: str | int,
    serial_to: str | int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Activate the vouchers of a serial range whose batch is inactive (generated)."""

    def target(batch: Row[Any]) -> tuple[str, datetime] | None:
        if batch.state != BatchState.GENERATED:
            return None  # active already, or frozen/deleted: unfreeze is another call
        if rt.settings.require_approval and batch.created_by == actor.name:
            raise Forbidden(  # as for the whole batch (lifecycle.change_batch)
                "four-eyes approval: vouchers must be activated by someone other than "
                f"'{actor.name}', who generated batch {batch.id}"
            )
        new = next_batch_state(BatchState(batch.state), BatchAction.ACTIVATE)
        return new.value, batch.expires_at

    return _change_range(rt, actor, "activate", serial_from, serial_to, reason, target)


def amend_range(
    rt: Runtime,
    actor: Principal,
    serial_from: str | int,
    serial_to: str | int | None,
    expires_at: datetime,
    reason: str | None = None,
) -> dict[str, Any]:
    """Give the vouchers of a serial range another expiry (in generated, active or frozen
    batches)."""
    if expires_at.tzinfo is None:
        raise Invalid("expires_at needs a UTC offset")

    def target(batch: Row[Any]) -> tuple[str, datetime] | None:
        if batch.state not in _AMENDABLE:  # a generating batch is still being written
            return None
        if batch.expires_at == expires_at:
            return None
        return batch.state, expires_at

    return _change_range(rt, actor, "amend_expiry", serial_from, serial_to, reason, target)


def _change_range(
    rt: Runtime,
    actor: Principal,
    action: str,
    serial_from: str | int,
    serial_to: str | int | None,
    reason: str | None,
    target: Target,
) -> dict[str, Any]:
    actor.require(Permission.BATCH_WRITE)
    width = rt.settings.serial_width
    first, last = parse_serial_range(
        serial_from, serial_from if serial_to is None else serial_to, width
    )
    label = format_serial(first, width) + (
        "" if first == last else "-" + format_serial(last, width)
    )
    now = utcnow()
    overlapping = [_b.c.serial_first <= last, _b.c.serial_last >= first]
    if actor.service_provider_id is not None:
        overlapping.append(_b.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        # Concurrent range operations on these batches wait here; read again after the
        # wait, so that parts made meanwhile are seen.
        conn.execute(select(_b.c.id).where(*overlapping).with_for_update()).all()
        batches = conn.execute(select(_b).where(*overlapping).order_by(_b.c.serial_first)).all()
        matched = affected = 0
        changed: list[dict[str, Any]] = []
        for batch in batches:
            low, high = max(first, batch.serial_first), min(last, batch.serial_last)
            # A batch's vouchers all lie in its serial range: covered whole, it needs no count.
            whole = (low, high) == (batch.serial_first, batch.serial_last)
            count = _size(batch) if whole else _count(conn, batch.id, low, high)
            matched += count
            wanted = target(batch) if count else None
            if wanted is None:
                continue
            which = _in_batch(batch.id, low, high)
            into = _move(conn, actor.name, batch, which, low, high, count, wanted, now)
            affected += count
            record_event(
                conn,
                actor,
                f"voucher_{action}",
                batch_id=into,
                serial_from=low,
                serial_to=high,
                affected=count,
                reason=reason,
                detail={
                    "from_batch": batch.id,
                    "to_batch": into,
                    "from": _describe(batch.state, batch.expires_at),
                    "to": _describe(*wanted),
                },
                now=now,
            )
            changed.append(
                {
                    "from_batch": batch.id,
                    "to_batch": into,
                    "serial_from": format_serial(low, width),
                    "serial_to": format_serial(high, width),
                    "count": count,
                    "state": wanted[0],
                    "expires_at": wanted[1].isoformat(),
                }
            )
        if not matched:
            raise NotFound(f"no voucher with serial {label}")
        if not affected:
            raise Conflict(f"none of the {matched} vouchers in {label} can be {_done(action)}")
        detail = {"matched": matched, "unchanged": matched - affected, "batches": changed}
        audit.record(
            conn,
            actor,
            f"voucher.{action}",
            "serial_range",
            label,
            actor.service_provider_id,
            {**detail, "reason": reason},
        )
        uow.commit()
    return {
        "action": action,
        "serial_from": format_serial(first, width),
        "serial_to": format_serial(last, width),
        "matched": matched,
        "affected": affected,
        "unchanged": matched - affected,
        "batches": changed,
    }


def _done(action: str) -> str:
    return {"activate": "activated", "amend_expiry": "given this expiry"}[action]


def _describe(state: str, expires_at: datetime) -> dict[str, str]:
    return {"state": state, "expires_at": expires_at.isoformat()}


def _in_batch(batch_id: int, low: int, high: int) -> list[Any]:
    # "+ 0": the serial range (primary key) is the way in, the batch a check (as exports do).
    return [_v.c.serial.between(low, high), _v.c.batch_id + 0 == batch_id]


def _count(conn: Connection, batch_id: int, low: int, high: int) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(_v).where(*_in_batch(batch_id, low, high))
        ).scalar_one()
    )


def activate_serials(
    conn: Connection,
    actor: str,
    batch_id: int,
    serials: list[int] | tuple[int, int],
    now: datetime,
) -> int:
    """Inside the caller's transaction: activate ``serials`` (a list, or an inclusive
    range) of batch ``batch_id`` while it is inactive, moving them into an active part of
    it; how many were activated (none once the batch is active)."""
    batch = conn.execute(select(_b).where(_b.c.id == batch_id).with_for_update()).one()
    if batch.state != BatchState.GENERATED:
        return 0
    if isinstance(serials, tuple):
        low, high = serials
        which = _in_batch(batch.id, low, high)
        count = _count(conn, batch.id, low, high)
    else:
        if not serials:
            return 0
        low, high = min(serials), max(serials)
        which = [_v.c.serial.in_(serials), _v.c.batch_id + 0 == batch.id]
        count = len(serials)
    if count:
        new = next_batch_state(BatchState.GENERATED, BatchAction.ACTIVATE)
        _move(conn, actor, batch, which, low, high, count, (new.value, batch.expires_at), now)
    return count


def _move(
    conn: Connection,
    actor: str,
    batch: Row[Any],
    which: list[Any],
    low: int,
    high: int,
    count: int,
    wanted: tuple[str, datetime],
    now: datetime,
) -> int:
    """Give the ``count`` vouchers of ``batch`` matching ``which`` (between ``low`` and
    ``high``) the wanted state and expiry; the id of the batch (or part) that holds them
    then. Their per-state counts (voms.services.reports) move with them."""
    state, expires_at = wanted
    if count == _size(batch):  # the whole batch, or the whole part: one row
        conn.execute(
            update(_b)
            .where(_b.c.id == batch.id)
            .values(state=state, expires_at=expires_at, updated_at=now)
        )
        return int(batch.id)
    root = batch.parent_batch_id or batch.id
    into = _neighbour(conn, root, batch.id, low, high, state, expires_at)
    if into is None:
        into = conn.execute(
            insert(_b)
            .values(
                service_provider_id=batch.service_provider_id,
                voucher_type_id=batch.voucher_type_id,
                state=state,
                count=count,
                generated_count=count,
                serial_first=low,
                serial_last=high,
                expires_at=expires_at,
                created_by=actor,
                created_at=now,
                updated_at=now,
                parent_batch_id=root,
            )
            .returning(_b.c.id)
        ).scalar_one()
    else:
        sqlite = conn.dialect.name == "sqlite"
        conn.execute(
            update(_b)
            .where(_b.c.id == into)
            .values(
                count=_b.c.count + count,
                generated_count=_b.c.generated_count + count,
                serial_first=(func.min if sqlite else func.least)(_b.c.serial_first, low),
                serial_last=(func.max if sqlite else func.greatest)(_b.c.serial_last, high),
                updated_at=now,
            )
        )
    moved = rollups.rebatch_vouchers(conn, which, low, high, batch.id, int(into))
    if moved != count:  # counted in this transaction under the batch's lock
        raise Conflict("vouchers of this range changed meanwhile; try again")
    conn.execute(
        update(_b)
        .where(_b.c.id == batch.id)
        .values(
            count=_b.c.count - count,
            generated_count=_b.c.generated_count - count,
            updated_at=now,
        )
    )
    return int(into)


def _size(batch: Row[Any]) -> int:
    return int(batch._mapping["count"])


def _neighbour(
    conn: Connection,
    root: int,
    source: int,
    low: int,
    high: int,
    state: str,
    expires_at: datetime,
) -> int | None:
    """A part of the same batch, right before or after the range, already as wanted."""
    found = conn.execute(
        select(_b.c.id)
        .where(
            _b.c.parent_batch_id == root,
            _b.c.id != source,
            _b.c.state == state,
            _b.c.expires_at == expires_at,
            or_(_b.c.serial_last == low - 1, _b.c.serial_first == high + 1),
        )
        .limit(1)
        .with_for_update()
    ).scalar()
    return None if found is None else int(found)
