"""Writing events into the outbox, in the transaction that causes them.

:func:`emit` is the one way in. With a unit of work the INSERT is one of its deferred
writes: on PostgreSQL it travels with the COMMIT, so the redemption's hot path gets no
extra round trip; with a plain connection (set-based services) it runs at once. Either
way the event exists exactly when the change that caused it is committed.

An event nobody listens to is not written: only while an active destination wants its
type and may see its provider (or a broker is configured, whose destination the relay
makes). Through a unit of work the destinations are read from a per-process cache
(``LISTENERS_TTL_S``), dropped at once in the process that adds or removes a webhook;
another process hears of a new webhook within that time.

The hooks below are what the services call: each turns one kind of change into its
event, so the services' own code changes by a line.
"""

import functools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from voms.config import get_settings
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services.uow import UnitOfWork

# docs/api.md "Events", and the additions docs/events.md lists after them.
EVENT_TYPES = (
    "voucher.redeemed",
    "voucher.reserved",
    "voucher.committed",
    "voucher.revoked",
    "voucher.reversed",
    "voucher.frozen",
    "voucher.unfrozen",
    "voucher.deleted",
    "batch.generated",
    "batch.activated",
    "batch.frozen",
    "batch.unfrozen",
    "batch.deleted",
    "subscriber.blacklisted",
    "subscriber.low_balance",
    "promotion.rewarded",
    "job.failed",
    "alert.voucher_stock_low",
    "alert.batch_expiring",
    "alert.blacklist_burst",
)
_KNOWN = frozenset(EVENT_TYPES)
_PIN_WORDS = frozenset({"pin", "pins", "hrn"})
_INSERT = insert(t.event_outbox)
LISTENERS_TTL_S = 5.0


@dataclass(frozen=True)
class Listener:
    """What an active destination wants: event types (None: all) and a provider (None:
    all providers)."""

    events: frozenset[str] | None
    service_provider_id: int | None

    def wants(self, type: str, service_provider_id: int | None) -> bool:
        if self.events is not None and type not in self.events:
            return False
        return self.service_provider_id is None or self.service_provider_id == service_provider_id


_EVERYTHING = (Listener(None, None),)
_d = t.event_destinations
_ACTIVE = select(_d.c.events, _d.c.service_provider_id).where(_d.c.state == "active")


def _listeners(rt: Runtime | None, conn: Connection) -> tuple[Listener, ...]:
    if rt is not None and (rt.settings.nats_url or rt.settings.amqp_url):
        return _EVERYTHING  # (the relay makes the broker's destination, if not yet made)
    return tuple(
        Listener(frozenset(row.events) if row.events is not None else None, row.service_provider_id)
        for row in conn.execute(_ACTIVE)
    )


def forget_listeners(rt: Runtime) -> None:
    """Destinations changed: this process reads them again for its next event."""
    rt.read_cache("event_listeners", LISTENERS_TTL_S).clear()


def _wanted(uow_or_conn: UnitOfWork | Connection, type: str, sp_id: int | None) -> bool:
    if isinstance(uow_or_conn, Connection):
        listeners = _listeners(None, uow_or_conn)
    else:
        uow = uow_or_conn
        cache = uow.rt.read_cache("event_listeners", LISTENERS_TTL_S)
        listeners = cache.get("all", lambda: _listeners(uow.rt, uow.conn))
    return any(each.wants(type, sp_id) for each in listeners)


def emit(
    uow_or_conn: UnitOfWork | Connection,
    type: str,
    subject: str | None,
    data: Mapping[str, Any],
    *,
    service_provider_id: int | None = None,
    at: datetime | None = None,
) -> str | None:
    """Write one event into the outbox in the caller's transaction; its id (None: no
    destination wants it, so nothing is written).

    ``subject`` names the object (a serial, a batch id, an MSISDN); ``data`` holds
    identifiers and figures, never a PIN (refused here, whatever the caller).
    ``service_provider_id`` decides which provider's webhooks receive it.
    """
    if type not in _KNOWN:
        raise ValueError(f"unknown event type {type!r}")
    _refuse_pins(data)
    if not _wanted(uow_or_conn, type, service_provider_id):
        return None
    event_id = str(uuid.uuid4())
    row = {
        "id": event_id,
        "type": type,
        "subject": subject,
        "service_provider_id": service_provider_id,
        "data": dict(data),
        "at": at or utcnow(),
        "dispatched": False,
    }
    if isinstance(uow_or_conn, Connection):
        uow_or_conn.execute(_INSERT, row)
    else:
        uow_or_conn.write(_INSERT, row)
    return event_id


def _refuse_pins(data: Mapping[str, Any]) -> None:
    """A PIN never leaves in an event: no key may name one, at any depth."""
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, Mapping):
            for key, inner in value.items():
                if _names_pin(str(key)):
                    raise ValueError("an event may not carry a PIN")
                pending.append(inner)
        elif isinstance(value, list | tuple):
            pending.extend(value)


@functools.lru_cache(maxsize=1024)
def _names_pin(key: str) -> bool:
    return bool(_PIN_WORDS & set(re.split(r"[^a-z0-9]+", key.lower())))


# --- hooks the services call ---------------------------------------------------------------

# A successful attempt of the redemption family, by the attempt's kind.
_ATTEMPT_EVENTS = {
    "redemption": "voucher.redeemed",
    "reservation": "voucher.reserved",
    "commit": "voucher.committed",
    "revoke": "voucher.revoked",
}
_ATTEMPT_FIELDS = (
    "transaction_id",
    "reservation_id",
    "serial",
    "voucher_type",
    "scenario",
    "msisdn",
    "recipient_msisdn",
)


def attempt_succeeded(
    uow: UnitOfWork,
    kind: str,
    channel: str,
    service_provider_id: int | None,
    answer: Mapping[str, Any],
) -> None:
    """The event of a successful redemption, reservation, commit or revoke (from its
    answer, which never holds the PIN); a voucher-type recharge has none."""
    type = _ATTEMPT_EVENTS.get(kind)
    if type is None or not _wanted(uow, type, service_provider_id):
        return  # (nobody listens: the event is not even built)
    data: dict[str, Any] = {key: answer[key] for key in _ATTEMPT_FIELDS if key in answer}
    data["channel"] = channel
    data["credits"] = [
        {"balance_type": c.get("balance_type"), "amount": c.get("amount")}
        for c in answer.get("credits", [])
    ]
    emit(
        uow,
        type,
        answer.get("serial"),
        data,
        service_provider_id=service_provider_id,
        at=uow.started_at,
    )


# voucher_events actions (voms.services.lifecycle.record_event) and their events: a whole
# batch, or a serial range moved into a part of one (voms.services.ranges), is a batch
# event; a range of vouchers changed one by one (lifecycle.change_vouchers) a voucher event.
_HISTORY_EVENTS = {
    "generated": "batch.generated",
    "activate": "batch.activated",
    "freeze": "batch.frozen",
    "unfreeze": "batch.unfrozen",
    "delete": "batch.deleted",
    "voucher_activate": "batch.activated",
    "voucher_freeze": "batch.frozen",
    "voucher_unfreeze": "batch.unfrozen",
    "voucher_delete": "batch.deleted",
}
_RANGE_EVENTS = {
    "voucher_freeze": "voucher.frozen",
    "voucher_unfreeze": "voucher.unfrozen",
    "voucher_delete": "voucher.deleted",
}


def history_recorded(
    conn: Connection,
    action: str,
    batch_id: int | None,
    serial_from: int,
    serial_to: int,
    affected: int,
    reason: str | None,
    at: datetime,
) -> None:
    """The event of one lifecycle operation recorded in the voucher history."""
    type = (_RANGE_EVENTS if batch_id is None else _HISTORY_EVENTS).get(action)
    if type is None:
        return
    b, v = t.batches, t.vouchers
    if batch_id is not None:
        owner = select(b.c.service_provider_id).where(b.c.id == batch_id)
    else:
        owner = (
            select(b.c.service_provider_id)
            .join(v, v.c.batch_id == b.c.id)
            .where(v.c.serial == serial_from)
        )
    service_provider_id = conn.execute(owner).scalar()
    data: dict[str, Any] = {
        "batch_id": batch_id,
        "serial_from": _serial(serial_from),
        "serial_to": _serial(serial_to),
        "count": affected,
    }
    if reason is not None:
        data["reason"] = reason
    subject = str(batch_id) if batch_id is not None else data["serial_from"]
    emit(conn, type, subject, data, service_provider_id=service_provider_id, at=at)


def reversed_(
    conn: Connection,
    transaction_id: str,
    reversal_id: str,
    serial: str | None,
    msisdn: str | None,
    reactivated: bool,
    service_provider_id: int | None,
    at: datetime,
) -> None:
    """The event of a reversed redemption."""
    emit(
        conn,
        "voucher.reversed",
        serial,
        {
            "transaction_id": transaction_id,
            "reversal_id": reversal_id,
            "serial": serial,
            "msisdn": msisdn,
            "voucher_reactivated": reactivated,
        },
        service_provider_id=service_provider_id,
        at=at,
    )


def blacklisted(conn: Connection, msisdn: str, reason: str, until: datetime | None) -> None:
    """The event of an MSISDN blocked (after bad PINs, or by hand); ``until`` None or far
    away: until released."""
    s = t.subscribers
    sp_id = conn.execute(select(s.c.service_provider_id).where(s.c.msisdn == msisdn)).scalar()
    emit(
        conn,
        "subscriber.blacklisted",
        msisdn,
        {"msisdn": msisdn, "reason": reason, "until": until.isoformat() if until else None},
        service_provider_id=sp_id,
    )


def job_failed(conn: Connection, job: str, run_id: int, error: str | None) -> None:
    """The event of a housekeeping job that failed."""
    emit(conn, "job.failed", job, {"job": job, "run_id": run_id, "error": error})


def _serial(serial: int) -> str:
    """A serial as the API writes it (zero-padded to the configured width)."""
    return str(serial).zfill(get_settings().serial_width)
