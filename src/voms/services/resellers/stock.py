"""Stock: serial ranges of inactive vouchers held by resellers, and what leaves them.

A range is one row with a cursor (``next_serial``): serials below it are taken. Handing
a range over, however large, writes one row; passing part of it down the tree splits the
row; selling or activating N vouchers reads and changes those N vouchers only. Stock
operations on one batch take its row lock first, so two of them never overlap.

Vouchers sold or activated from a batch that is still inactive move into an active part
of it, as an operator's range activation does (:func:`voms.services.ranges.activate_serials`),
so they are active at once while the rest of the batch stays inactive.
"""

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints
from sqlalchemy import (
    Connection,
    Row,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)

from voms.db import tables as t
from voms.db.types import UTCDateTime, utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import Permission
from voms.domain.serials import format_serial, parse_serial_range
from voms.domain.states import BatchState
from voms.runtime import Runtime
from voms.services import audit, ranges
from voms.services.auth import Principal
from voms.services.lifecycle import record_event
from voms.services.resellers import accounts
from voms.services.uow import UnitOfWork

_s, _b, _v, _vt = t.reseller_stock, t.batches, t.vouchers, t.voucher_types
Serial = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
# Batches whose vouchers may be sold: inactive ones (the sale activates what it takes)
# and active ones (an operator activated the whole batch meanwhile).
SELLABLE_BATCH_STATES = (BatchState.GENERATED.value, BatchState.ACTIVE.value)
# Voucher states a reseller pays for when it activates a range of cards.
_GOOD_STATES = ("available", "reserved", "redeemed")


class SerialRangeIn(BaseModel):
    """POST /api/v1/resellers/{code}/stock and …/activations: an inclusive range."""

    model_config = ConfigDict(extra="forbid")

    serial_from: Serial
    serial_to: Serial


def serial_range(rt: Runtime, body: object) -> tuple[int, int]:
    data = accounts.parse(SerialRangeIn, body)
    return parse_serial_range(data.serial_from, data.serial_to, rt.settings.serial_width)


def stock_view(row: Row[Any], holder: str, voucher_type: str, width: int) -> dict[str, Any]:
    return {
        "id": row.id,
        "reseller": holder,
        "voucher_type": voucher_type,
        "batch_id": row.batch_id,
        "kind": row.kind,
        "serial_from": format_serial(row.serial_from, width),
        "serial_to": format_serial(row.serial_to, width),
        "on_hand": row.serial_to - row.next_serial + 1,
        "next_serial": (
            format_serial(row.next_serial, width) if row.next_serial <= row.serial_to else None
        ),
        "created_by": row.created_by,
        "created_at": row.created_at,
    }


def _source_batch(conn: Connection, first: int, last: int) -> Row[Any]:
    """The generated batch whose range holds ``first``..``last``, locked."""
    row = conn.execute(
        select(_b)
        .where(
            _b.c.serial_first <= first,
            _b.c.serial_last >= last,
            _b.c.parent_batch_id.is_(None),  # the batch, not a part split off it
        )
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound("no single batch holds these serials")
    return row


def _overlapping(conn: Connection, first: int, last: int) -> list[Row[Any]]:
    return list(
        conn.execute(
            select(_s)
            .where(_s.c.serial_from <= last, _s.c.serial_to >= first)
            .order_by(_s.c.id)
            .with_for_update()
        )
    )


def _split(
    conn: Connection,
    row: Row[Any],
    first: int,
    last: int,
    holder_id: int,
    *,
    taken: bool,
    actor: Principal,
    now: datetime,
) -> int:
    """Cut ``first``..``last`` (not yet taken) out of ``row`` into a row of its own for
    ``holder_id``, fully taken when ``taken``; the new row's id."""
    if first > row.serial_from:
        conn.execute(
            update(_s)
            .where(_s.c.id == row.id)
            .values(serial_to=first - 1, next_serial=min(row.next_serial, first))
        )
    else:
        conn.execute(delete(_s).where(_s.c.id == row.id))
    common = {
        "voucher_type_id": row.voucher_type_id,
        "batch_id": row.batch_id,
        "kind": row.kind,
        "created_by": actor.name,
        "created_at": now,
    }
    if last < row.serial_to:
        conn.execute(
            insert(_s).values(
                reseller_id=row.reseller_id,
                serial_from=last + 1,
                serial_to=row.serial_to,
                next_serial=last + 1,
                **common,
            )
        )
    return int(
        conn.execute(
            insert(_s)
            .values(
                reseller_id=holder_id,
                serial_from=first,
                serial_to=last,
                next_serial=last + 1 if taken else first,
                **common,
            )
            .returning(_s.c.id)
        ).scalar_one()
    )


def hand_over(rt: Runtime, actor: Principal, code: str, body: object) -> dict[str, Any]:
    """Give reseller ``code`` a range of inactive vouchers: new stock from the operator,
    or part of a range held above it in its tree (moved down)."""
    actor.require(Permission.RESELLER_WRITE)
    width = rt.settings.serial_width
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        target = accounts.visible(conn, actor, code)
        first, last = serial_range(rt, body)
        batch = _source_batch(conn, first, last)
        if batch.service_provider_id != target.service_provider_id:
            raise Conflict(f"batch {batch.id} belongs to another service provider")
        now = utcnow()
        held = _overlapping(conn, first, last)
        if not held:
            new_id = _new_stock(conn, actor, target, batch, first, last, now)
            action = "stock.hand_over"
        else:
            new_id = _move_down(conn, actor, target, held, first, last, now)
            action = "stock.move"
        row = conn.execute(select(_s).where(_s.c.id == new_id)).one()
        voucher_type = conn.execute(
            select(_vt.c.code).where(_vt.c.id == row.voucher_type_id)
        ).scalar_one()
        detail = {"serial_from": first, "serial_to": last, "batch_id": batch.id}
        audit.record(conn, actor, action, "reseller", code, target.service_provider_id, detail)
        record_event(
            conn,
            actor,
            action,
            batch_id=batch.id,
            serial_from=first,
            serial_to=last,
            affected=0,
            detail={"reseller": code},
            now=now,
        )
        uow.commit()
        return stock_view(row, code, voucher_type, width)


def _new_stock(
    conn: Connection,
    actor: Principal,
    target: Row[Any],
    batch: Row[Any],
    first: int,
    last: int,
    now: datetime,
) -> int:
    if actor.reseller_id is not None:
        raise Forbidden("a reseller's key passes on only the stock its resellers hold")
    if batch.state != BatchState.GENERATED.value:
        raise Conflict(f"stock is inactive vouchers; batch {batch.id} is {batch.state}")
    e = t.voucher_exports
    printed = conn.execute(select(exists().where(e.c.serial.between(first, last)))).scalar_one()
    return int(
        conn.execute(
            insert(_s)
            .values(
                reseller_id=target.id,
                voucher_type_id=batch.voucher_type_id,
                batch_id=batch.id,
                kind="printed" if printed else "electronic",
                serial_from=first,
                serial_to=last,
                next_serial=first,
                created_by=actor.name,
                created_at=now,
            )
            .returning(_s.c.id)
        ).scalar_one()
    )


def _move_down(
    conn: Connection,
    actor: Principal,
    target: Row[Any],
    held: list[Row[Any]],
    first: int,
    last: int,
    now: datetime,
) -> int:
    row = held[0]
    if len(held) > 1 or not row.serial_from <= first <= last <= row.serial_to:
        raise Conflict("the range overlaps stock held by resellers; pass on one held range")
    holder = conn.execute(select(t.resellers).where(t.resellers.c.id == row.reseller_id)).one()
    if actor.reseller_id is not None and not accounts.in_subtree(
        holder.path, accounts.path_of(conn, actor.reseller_id)
    ):
        raise Forbidden("outside this key's resellers")
    if holder.id == target.id or not accounts.in_subtree(target.path, holder.path):
        raise Conflict(
            f"stock moves down the tree only: '{target.code}' is not below '{holder.code}'"
        )
    if first < row.next_serial:
        raise Conflict("part of the range is already sold or activated")
    return _split(conn, row, first, last, target.id, taken=False, actor=actor, now=now)


def list_stock(
    rt: Runtime, actor: Principal, code: str, *, limit: int = 50, cursor: str | None = None
) -> dict[str, Any]:
    """The ranges reseller ``code`` holds (emptied ones too), newest first."""
    actor.require(Permission.RESELLER_READ)
    if not 1 <= limit <= accounts.MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {accounts.MAX_PAGE}")
    if cursor is not None and not cursor.isdigit():
        raise Invalid("malformed cursor")
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        reseller = accounts.visible(conn, actor, code)
        query = (
            select(_s, _vt.c.code.label("voucher_type"))
            .join(_vt, _vt.c.id == _s.c.voucher_type_id)
            .where(_s.c.reseller_id == reseller.id)
            .order_by(_s.c.id.desc())
            .limit(limit + 1)
        )
        if cursor is not None:
            query = query.where(_s.c.id < int(cursor))
        rows = conn.execute(query).all()
    width = rt.settings.serial_width
    return {
        "items": [stock_view(row, code, row.voucher_type, width) for row in rows[:limit]],
        "next_cursor": str(rows[limit - 1].id) if len(rows) > limit else None,
    }


# --- taking vouchers out of stock ---------------------------------------------------------


def _in_batch(batch_id: int) -> Any:
    """Vouchers of ``batch_id``, as a check on rows found by serial. "+ 0": given the
    batch index, both databases would otherwise scan the whole batch (millions of rows)
    to find a few serials."""
    return _v.c.batch_id + 0 == batch_id


def take_electronic(
    conn: Connection, holders: list[int], voucher_type_id: int, count: int, now: datetime
) -> list[Row[Any]]:
    """``count`` sellable vouchers from the electronic stock of ``holders``, in that order
    (the seller, then the resellers above it); their serials, ciphertexts, batch, expiry.

    Each range's cursor advances past what it hands out and past any voucher that cannot
    be sold (frozen, deleted, exported since): the work is the sale's count, not the
    range's size.
    """
    found: list[Any] = []
    for holder in holders:
        found += conn.execute(
            select(_s.c.id, _s.c.batch_id, _b.c.expires_at)
            .join(_b, _b.c.id == _s.c.batch_id)
            .where(
                _s.c.reseller_id == holder,
                _s.c.voucher_type_id == voucher_type_id,
                _s.c.kind == "electronic",
                _s.c.next_serial <= _s.c.serial_to,
                _b.c.state.in_(SELLABLE_BATCH_STATES),
                _b.c.expires_at > now,
            )
            .order_by(_s.c.id)
        ).all()
    # The batches first, in one order: activating what is sold changes their rows, and
    # hand-overs and range operations lock a batch before its stock and vouchers.
    batch_ids = sorted({held.batch_id for held in found})
    conn.execute(
        select(_b.c.id).where(_b.c.id.in_(batch_ids)).order_by(_b.c.id).with_for_update()
    ).all()
    taken: list[Row[Any]] = []
    for held in found:
        taken += _take_from_range(conn, held, count - len(taken))
        if len(taken) == count:
            return taken
    return taken


def _take_from_range(conn: Connection, held: Any, wanted: int) -> list[Row[Any]]:
    e, sold = t.voucher_exports, t.sale_vouchers
    found: list[Any] = []
    while len(found) < wanted:
        row = conn.execute(
            select(_s.c.next_serial, _s.c.serial_to).where(_s.c.id == held.id).with_for_update()
        ).one()
        if row.next_serial > row.serial_to:
            break
        end = min(row.next_serial + wanted - len(found) - 1, row.serial_to)
        conn.execute(update(_s).where(_s.c.id == held.id).values(next_serial=end + 1))
        query = (
            select(
                _v.c.serial,
                _v.c.encryption_key_id,
                _v.c.pin_ciphertext,
                _v.c.batch_id,
                literal(held.expires_at, UTCDateTime()).label("expires_at"),
            )
            .where(
                _v.c.serial.between(row.next_serial, end),
                _in_batch(held.batch_id),
                _v.c.state == "available",
                ~exists().where(e.c.serial == _v.c.serial),
                ~exists().where(sold.c.serial == _v.c.serial),
            )
            .order_by(_v.c.serial)
        )
        if conn.dialect.name == "postgresql":  # no redemption or freeze may take them meanwhile
            query = query.with_for_update()
        found += conn.execute(query).all()
    return found


# --- activating printed stock -------------------------------------------------------------


def held_range(conn: Connection, reseller: Row[Any], first: int, last: int) -> Row[Any]:
    """The printed range of ``reseller`` holding ``first``..``last``, not yet taken."""
    rows = conn.execute(
        select(_s).where(
            _s.c.reseller_id == reseller.id,
            _s.c.serial_from <= last,
            _s.c.serial_to >= first,
        )
    ).all()
    if not rows:
        raise Conflict(f"these serials are not in the stock of reseller '{reseller.code}'")
    if any(row.kind == "electronic" for row in rows):
        raise Conflict("electronic stock is activated by selling it (POST /api/v1/sales)")
    if any(row.next_serial > max(first, row.serial_from) for row in rows):
        raise Conflict("part of the range is already activated")
    row = rows[0]
    if len(rows) > 1 or not row.serial_from <= first <= last <= row.serial_to:
        raise Conflict("the range is not within one range of the reseller's stock")
    return row


def count_payable(conn: Connection, batch_id: int, first: int, last: int) -> int:
    """Vouchers of the range a reseller pays for: not frozen, not deleted."""
    return int(
        conn.execute(
            select(func.count()).where(
                _v.c.serial.between(first, last),
                _in_batch(batch_id),
                _v.c.state.in_(_GOOD_STATES),
            )
        ).scalar_one()
    )


def take_range(
    conn: Connection,
    row: Row[Any],
    first: int,
    last: int,
    actor: Principal,
    now: datetime,
) -> None:
    """Mark ``first``..``last`` of ``row`` taken and make its vouchers active."""
    _source_batch(conn, first, last)  # its lock: stock operations on the batch queue here
    locked = conn.execute(select(_s).where(_s.c.id == row.id).with_for_update()).first()
    if locked is None or locked.next_serial > first or locked.serial_to < last:
        raise Conflict("the range changed meanwhile; try again")
    _split(conn, locked, first, last, locked.reseller_id, taken=True, actor=actor, now=now)
    ranges.activate_serials(conn, actor.name, row.batch_id, (first, last), now)


def on_hand(conn: Connection, reseller_ids: list[int]) -> dict[tuple[int, int], int]:
    """Serials not yet taken per (reseller, voucher type)."""
    rows = conn.execute(
        select(
            _s.c.reseller_id,
            _s.c.voucher_type_id,
            func.sum(_s.c.serial_to - _s.c.next_serial + 1).label("on_hand"),
        )
        .where(_s.c.reseller_id.in_(reseller_ids), and_(_s.c.next_serial <= _s.c.serial_to))
        .group_by(_s.c.reseller_id, _s.c.voucher_type_id)
    )
    return {(row.reseller_id, row.voucher_type_id): int(row.on_hand) for row in rows}
