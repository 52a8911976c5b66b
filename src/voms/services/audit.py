"""Append-only audit log of state-changing administrative calls."""

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.roles import Permission
from voms.services.uow import UnitOfWork

if TYPE_CHECKING:
    from voms.runtime import Runtime
    from voms.services.auth import Principal


def record(
    conn: Connection,
    actor: "Principal",
    action: str,
    object_type: str,
    object_id: str | int,
    service_provider_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit row inside the caller's transaction (never a PIN in ``detail``)."""
    conn.execute(
        insert(t.audit_log).values(
            at=utcnow(),
            actor=actor.name,
            action=action,
            object_type=object_type,
            object_id=str(object_id),
            service_provider_id=service_provider_id,
            detail=detail or {},
        )
    )


def list_entries(
    conn: Connection,
    *,
    object_type: str | None = None,
    object_id: str | None = None,
    service_provider_id: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest audit entries first, optionally for one object, provider, actor or action;
    ``before_id`` pages on (entries older than that id)."""
    query = select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
    if actor:
        query = query.where(t.audit_log.c.actor == actor)
    if action:
        query = query.where(t.audit_log.c.action == action)
    if before_id is not None:
        query = query.where(t.audit_log.c.id < before_id)
    if service_provider_id is not None:
        query = query.where(t.audit_log.c.service_provider_id == service_provider_id)
    if object_type:
        query = query.where(t.audit_log.c.object_type == object_type)
    if object_id:
        query = query.where(t.audit_log.c.object_id == object_id)
    return [dict(row._mapping) for row in conn.execute(query)]


MAX_AUDIT_PAGE = 1000


def read_audit_log(
    rt: "Runtime",
    actor: "Principal",
    *,
    object_type: str | None = None,
    object_id: str | None = None,
    by: str | None = None,
    action: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """The audit log as ``actor`` may see it: a scoped key sees its provider's entries.

    Filters: object, who acted (``by``), action; ``before_id`` pages on.
    """
    actor.require(Permission.AUDIT_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return list_entries(
            conn,
            object_type=object_type,
            object_id=object_id,
            service_provider_id=actor.service_provider_id,
            actor=by,
            action=action,
            before_id=before_id,
            limit=max(1, min(limit, MAX_AUDIT_PAGE)),
        )
