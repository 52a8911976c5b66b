"""Where events go, and what became of each delivery (docs/events.md; admins only).

Webhooks are added by admins (API, CLI); a key scoped to a service provider adds
webhooks that receive that provider's events only. NATS and RabbitMQ are destinations
too, one each, made from ``VOMS_NATS_URL`` and ``VOMS_AMQP_URL`` by the relay (their
credentials stay in the environment; the row shows the URL without them). Every
destination has its queue of deliveries: pending, delivered, or dead (failed for a day);
a replay puts a delivery back in its queue, in its place by the event's order.
"""

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import and_, insert, select, update

from voms.crypto import Keyring
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Invalid, NotFound
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.events.outbox import EVENT_TYPES, forget_listeners
from voms.services.uow import UnitOfWork

MAX_LIMIT = 1000
_d, _q, _o = t.event_destinations, t.event_deliveries, t.event_outbox
_sp = t.service_providers

Secret = Annotated[str, StringConstraints(min_length=16, max_length=200, pattern=r"^[\x21-\x7e]+$")]


class WebhookIn(BaseModel):
    """POST /api/v1/webhooks: where to POST, the shared secret, the event types wanted."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    secret: Secret = Field(description="16 to 200 printable ASCII characters; never shown again")
    events: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES))
    service_provider: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL")
        return url

    @field_validator("events")
    @classmethod
    def _known_types(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types: {', '.join(unknown)}")
        return sorted(set(events), key=EVENT_TYPES.index)


def _public_url(url: str) -> str:
    """The URL without user and password (what an env destination's row shows)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _view(row: Any, provider_code: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "url": row.url,
        "events": row.events,
        "service_provider": provider_code,
        "state": row.state,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }


_WITH_PROVIDER = select(_d, _sp.c.code.label("provider_code")).outerjoin(
    _sp, _sp.c.id == _d.c.service_provider_id
)


def add_webhook(rt: Runtime, actor: Principal, body: WebhookIn) -> dict[str, Any]:
    """Add a webhook; a scoped key's webhook hears its provider's events only."""
    actor.require(Permission.EVENTS_ADMIN)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = actor.service_provider_id
        if body.service_provider is not None:
            sp_id = service_provider_id_by_code(conn, body.service_provider)
            actor.require_scope(sp_id)
        key_id, secret = rt.keyring.encrypt(body.secret)
        new_id = conn.execute(
            insert(_d)
            .values(
                kind="webhook",
                url=body.url,
                secret=secret,
                secret_key_id=key_id,
                events=body.events,
                service_provider_id=sp_id,
                state="active",
                created_by=actor.name,
                created_at=utcnow(),
            )
            .returning(_d.c.id)
        ).scalar_one()
        audit.record(
            conn,
            actor,
            "webhook.add",
            "webhook",
            new_id,
            sp_id,
            {"url": _public_url(body.url), "events": body.events},
        )
        row = conn.execute(_WITH_PROVIDER.where(_d.c.id == new_id)).one()
        uow.after_commit(lambda: forget_listeners(rt))
        uow.commit()
    return _view(row, row.provider_code)


def _scoped(actor: Principal) -> list[Any]:
    if actor.service_provider_id is None:
        return []
    return [_d.c.service_provider_id == actor.service_provider_id]


def list_destinations(
    rt: Runtime,
    actor: Principal,
    *,
    kind: Literal["webhook", "nats", "amqp"] | None = "webhook",
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Destinations, newest first (webhooks by default; ``kind=None``: every kind)."""
    actor.require(Permission.EVENTS_ADMIN)
    conditions = [*_scoped(actor), *_page(_d.c.id, limit, cursor)]
    if kind is not None:
        conditions.append(_d.c.kind == kind)
    with UnitOfWork(rt, read_only=True) as uow:
        rows = uow.conn.execute(
            _WITH_PROVIDER.where(*conditions).order_by(_d.c.id.desc()).limit(limit + 1)
        ).all()
    return _paged([_view(row, row.provider_code) for row in rows], limit)


def get_destination(rt: Runtime, actor: Principal, destination_id: int) -> dict[str, Any]:
    """One destination (404 outside the caller's scope)."""
    actor.require(Permission.EVENTS_ADMIN)
    with UnitOfWork(rt, read_only=True) as uow:
        row = _destination(uow, actor, destination_id)
    return _view(row, row.provider_code)


def _destination(uow: UnitOfWork, actor: Principal, destination_id: int) -> Any:
    row = uow.conn.execute(_WITH_PROVIDER.where(_d.c.id == destination_id, *_scoped(actor))).first()
    if row is None:
        raise NotFound(f"webhook {destination_id} not found")
    return row


def remove_webhook(rt: Runtime, actor: Principal, destination_id: int) -> dict[str, Any]:
    """Stop a webhook: it gets no new events; its deliveries stay to be looked at."""
    actor.require(Permission.EVENTS_ADMIN)
    with UnitOfWork(rt) as uow:
        row = _destination(uow, actor, destination_id)
        if row.kind != "webhook":
            raise Conflict(f"destination {destination_id} comes from the environment ({row.kind})")
        uow.conn.execute(update(_d).where(_d.c.id == destination_id).values(state="disabled"))
        audit.record(
            uow.conn, actor, "webhook.remove", "webhook", destination_id, row.service_provider_id
        )
        row = _destination(uow, actor, destination_id)
        uow.after_commit(lambda: forget_listeners(rt))
        uow.commit()
    return _view(row, row.provider_code)


# --- deliveries ------------------------------------------------------------------------------

DeliveryState = Literal["pending", "delivered", "dead"]

_DELIVERIES = select(
    _q,
    _o.c.id.label("event_id"),
    _o.c.type.label("event_type"),
    _o.c.subject,
    _o.c.at.label("event_time"),
    _d.c.kind,
    _d.c.url,
).select_from(_q.join(_o, _o.c.seq == _q.c.event_seq).join(_d, _d.c.id == _q.c.destination_id))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _delivery(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "type": row.event_type,
        "subject": row.subject,
        "time": row.event_time.isoformat(),
        "destination": {"id": row.destination_id, "kind": row.kind, "url": row.url},
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at) if row.state == "pending" else None,
        "first_failed_at": _iso(row.first_failed_at),
        "delivered_at": _iso(row.delivered_at),
        "last_error": row.last_error,
    }


def list_deliveries(
    rt: Runtime,
    actor: Principal,
    *,
    destination_id: int | None = None,
    state: DeliveryState | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Deliveries, newest first; ``state=dead`` lists the dead letters."""
    actor.require(Permission.EVENTS_ADMIN)
    conditions = [*_scoped(actor), *_page(_q.c.id, limit, cursor)]
    if destination_id is not None:
        conditions.append(_q.c.destination_id == destination_id)
    if state is not None:
        conditions.append(_q.c.state == state)
    with UnitOfWork(rt, read_only=True) as uow:
        rows = uow.conn.execute(
            _DELIVERIES.where(*conditions).order_by(_q.c.id.desc()).limit(limit + 1)
        ).all()
    return _paged([_delivery(row) for row in rows], limit)


def replay(
    rt: Runtime,
    actor: Principal,
    *,
    delivery_id: int | None = None,
    destination_id: int | None = None,
) -> dict[str, Any]:
    """Deliver again: one delivery (dead or delivered), or every dead letter of a
    destination. The event keeps its id; it goes in its place in the destination's order."""
    actor.require(Permission.EVENTS_ADMIN)
    if (delivery_id is None) == (destination_id is None):
        raise Invalid("name one delivery, or one destination whose dead letters to replay")
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        if delivery_id is not None:
            found = conn.execute(_DELIVERIES.where(_q.c.id == delivery_id, *_scoped(actor))).first()
            if found is None:
                raise NotFound(f"delivery {delivery_id} not found")
            chosen = and_(_q.c.id == delivery_id, _q.c.state != "pending")
            sp_id = None
        else:
            assert destination_id is not None
            sp_id = _destination(uow, actor, destination_id).service_provider_id
            chosen = and_(_q.c.destination_id == destination_id, _q.c.state == "dead")
        replayed = conn.execute(
            update(_q)
            .where(chosen)
            .values(
                state="pending",
                attempts=0,
                next_attempt_at=now,
                first_failed_at=None,
                delivered_at=None,
                last_error=None,
            )
        ).rowcount
        audit.record(
            conn,
            actor,
            "event.replay",
            "delivery" if delivery_id is not None else "webhook",
            delivery_id or destination_id or 0,
            sp_id,
            {"replayed": replayed},
        )
        answer: dict[str, Any] = {"replayed": replayed}
        if delivery_id is not None:
            answer["delivery"] = _delivery(
                conn.execute(_DELIVERIES.where(_q.c.id == delivery_id)).one()
            )
        uow.commit()
    return answer


def _page(column: Any, limit: int, cursor: str | None) -> list[Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}")
    if cursor is None:
        return []
    if not cursor.isascii() or not cursor.isdigit() or int(cursor) > 2**63 - 1:
        raise Invalid("malformed cursor")
    return [column < int(cursor)]


def _paged(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    page = items[:limit]
    more = len(items) > limit
    return {"items": page, "next_cursor": str(page[-1]["id"]) if more else None}


# --- destinations from the environment -----------------------------------------------------------


def environment_urls(rt: Runtime) -> dict[str, str | None]:
    """The NATS and RabbitMQ URLs the settings name (None: not configured)."""
    nats_url, amqp_url = rt.settings.nats_url, rt.settings.amqp_url
    return {
        "nats": nats_url.get_secret_value() if nats_url else None,
        "amqp": amqp_url.get_secret_value() if amqp_url else None,
    }


def sync_environment(rt: Runtime) -> None:
    """One active destination per configured broker, disabled when no longer configured
    (its undelivered events wait for it to come back)."""
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        for kind, url in environment_urls(rt).items():
            existing = conn.execute(
                select(_d.c.id).where(_d.c.kind == kind).order_by(_d.c.id)
            ).first()
            if url is None:
                if existing is not None:
                    conn.execute(update(_d).where(_d.c.kind == kind).values(state="disabled"))
                continue
            shown = _public_url(url)
            if existing is None:
                conn.execute(
                    insert(_d).values(
                        kind=kind,
                        url=shown,
                        events=None,
                        state="active",
                        created_by="environment",
                        created_at=now,
                    )
                )
            else:
                conn.execute(
                    update(_d).where(_d.c.id == existing.id).values(url=shown, state="active")
                )
        uow.after_commit(lambda: forget_listeners(rt))
        uow.commit()


def reencrypt_secrets(rt: Runtime, keyring: Keyring) -> int:
    """Webhook secrets under the active encryption key (the key_reencryption job, after
    `voms keys rotate`), so an old key is no longer needed for them. How many changed."""
    target = keyring.active_encryption_key_id
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        rows = conn.execute(
            select(_d.c.id, _d.c.secret, _d.c.secret_key_id).where(
                _d.c.secret.is_not(None), _d.c.secret_key_id != target
            )
        ).all()
        for row in rows:
            key_id, secret = keyring.encrypt(keyring.decrypt(row.secret_key_id, row.secret), target)
            conn.execute(
                update(_d).where(_d.c.id == row.id).values(secret=secret, secret_key_id=key_id)
            )
        uow.commit()
    return len(rows)
