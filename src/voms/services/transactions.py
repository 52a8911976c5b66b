"""The record of redemption-family attempts: newest first, filtered, keyset-paged.

Paging is by ``(at, id)``: each page is one index range scan however deep it is, so
the query stays fast on tens of millions of rows.
"""

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, tuple_

from voms.db import tables as t
from voms.domain.errors import Invalid, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.results import Result
from voms.domain.roles import Permission
from voms.domain.serials import format_serial
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork

MAX_LIMIT = 1000


def encode_cursor(at: datetime, transaction_id: str) -> str:
    """The keyset cursor after the transaction at ``at`` with ``transaction_id``."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{transaction_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """A cursor made by :func:`encode_cursor`; 422 when it is not one."""
    try:
        at_text, transaction_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        at = datetime.fromisoformat(at_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("malformed cursor") from None
    if at.tzinfo is None:
        raise Invalid("malformed cursor")
    return at, transaction_id


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise Invalid(f"{name} needs a UTC offset, e.g. 2027-01-01T00:00:00+00:00")
    return value


def result_text(code: int) -> str:
    """The text of a result code ('' for a code this version does not know)."""
    try:
        return Result.from_code(code).text
    except ValueError:
        return ""


def list_transactions(
    rt: Runtime,
    actor: Principal,
    *,
    msisdn: str | None = None,
    serial: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Attempts newest first; ``msisdn`` matches the requester or the recipient.

    Returns ``transactions`` and ``next_cursor`` (None on the last page).
    """
    actor.require(Permission.LOOKUP)
    tx, vt, rv = t.transactions, t.voucher_types, t.reversals
    limit = max(1, min(limit, MAX_LIMIT))
    conditions: list[ColumnElement[bool]] = []
    if msisdn is not None:
        try:
            number = normalize_msisdn(msisdn)
        except ResultError:
            raise Invalid("msisdn is not a subscriber number") from None
        conditions.append(or_(tx.c.msisdn == number, tx.c.recipient_msisdn == number))
    if serial is not None:
        conditions.append(tx.c.serial == serial)
    if (start := _aware(since, "since")) is not None:
        conditions.append(tx.c.at >= start)
    if (end := _aware(until, "until")) is not None:
        conditions.append(tx.c.at < end)
    if cursor is not None:
        at, transaction_id = decode_cursor(cursor)
        conditions.append(tuple_(tx.c.at, tx.c.id) < tuple_(at, transaction_id))
    if actor.service_provider_id is not None:
        conditions.append(tx.c.service_provider_id == actor.service_provider_id)
    query = (
        select(tx, vt.c.code.label("voucher_type"), rv.c.transaction_id.label("reverses"))
        .outerjoin(vt, vt.c.id == tx.c.voucher_type_id)
        .outerjoin(rv, rv.c.reversal_id == tx.c.id)
        .where(and_(True, *conditions))
        .order_by(tx.c.at.desc(), tx.c.id.desc())
        .limit(limit + 1)
    )
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        rows = conn.execute(query).all()
    page = rows[:limit]
    width = rt.settings.serial_width
    return {
        "transactions": [
            {
                "id": row.id,
                "at": row.at,
                "kind": row.kind,
                "result_code": row.result_code,
                "result_text": result_text(row.result_code),
                "channel": row.channel,
                "serial": format_serial(row.serial, width) if row.serial is not None else None,
                "msisdn": row.msisdn,
                "recipient_msisdn": row.recipient_msisdn,
                "voucher_type": row.voucher_type,
                "scenario": row.scenario,
                "credits": row.credits,
                "reservation_id": row.reservation_id,
                "actor": row.actor,
                "reversed_by": row.reversed_by,
                "reverses": row.reverses,
            }
            for row in page
        ],
        "next_cursor": encode_cursor(page[-1].at, page[-1].id) if len(rows) > limit else None,
    }
