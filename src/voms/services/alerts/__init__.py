"""Alerts (docs/alerts.md): subscribers by SMS, operators by e-mail and as events.

- Subscribers (SMS through Kannel's sendsms, in their language): a balance below its
  type's threshold, a balance or the account expiring within the provider's notice
  days, a reward granted (:func:`reward_granted`, written by the promotions in the
  redemption's own transaction).
- Operators (e-mail over SMTP, and events through ``detection._emit_event``): a voucher
  type's stock below its threshold, batches about to expire, a burst of blacklistings,
  a failed or abandoned job.

Two housekeeping jobs do the work: ``alert_detection`` (:func:`detection.detect`,
set-based) records each occurrence once under a unique key, ``alert_delivery``
(:func:`delivery.deliver`) sends what is due, holding subscriber alerts during their
provider's quiet hours. Settings and thresholds: :mod:`.settings`.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite

from voms.db import tables as t
from voms.domain.errors import Invalid
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.alerts.delivery import deliver
from voms.services.alerts.detection import OPERATOR_KINDS, SUBSCRIBER_KINDS, detect
from voms.services.alerts.settings import AlertSettingsIn, get_settings, update_settings
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.uow import UnitOfWork

__all__ = [
    "AlertSettingsIn",
    "deliver",
    "detect",
    "get_settings",
    "list_alerts",
    "reward_granted",
    "update_settings",
]

_a = t.alerts
MAX_LIMIT = 1000
KINDS = SUBSCRIBER_KINDS + OPERATOR_KINDS
STATES = ("pending", "sent", "failed", "skipped", "dropped")
_REWARD: dict[str, Insert] = {}


def _reward_statement(dialect_name: str) -> Insert:
    statement = _REWARD.get(dialect_name)
    if statement is None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        statement = dialect.insert(_a).on_conflict_do_nothing()
        _REWARD[dialect_name] = statement
    return statement


def reward_granted(
    uow: UnitOfWork,
    *,
    transaction_id: str,
    promotion: str,
    service_provider_id: int,
    subscriber_id: int,
    msisdn: str,
    credits: list[dict[str, Any]],
) -> None:
    """Record the "reward granted" SMS of one reward, in the caller's transaction.

    Call it before ``uow.commit()`` of the redemption that granted the reward: the row
    goes out with the COMMIT (no extra round trip) and exists only if the reward does;
    the ``alert_delivery`` job sends it (after the provider's quiet hours). ``credits``
    as in the redemption's answer: ``[{"balance_type", "amount", "balance"?}]`` in minor
    units. The same transaction and promotion recorded twice is one alert.
    """
    uow.write(
        _reward_statement(uow.conn.dialect.name),
        {
            "occurrence_key": f"reward:{transaction_id}:{promotion}"[:200],
            "kind": "reward",
            "audience": "subscriber",
            "service_provider_id": service_provider_id,
            "subscriber_id": subscriber_id,
            "msisdn": msisdn,
            "data": {
                "promotion": promotion,
                "credits": [
                    {k: c[k] for k in ("balance_type", "amount", "balance") if k in c}
                    for c in credits
                ],
            },
            "created_at": uow.started_at,
            "state": "pending",
            "attempts": 0,
        },
    )


def _view(row: Any, sp_codes: dict[int, str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "audience": row.audience,
        "service_provider": sp_codes.get(row.service_provider_id),
        "msisdn": row.msisdn,
        "subject_id": row.subject_id,
        "subject_at": row.subject_at,
        "amount": row.amount,
        "threshold": row.threshold,
        "state": row.state,
        "attempts": row.attempts,
        "created_at": row.created_at,
        "sent_at": row.sent_at,
        "resolved_at": row.resolved_at,
        "error": row.error,
    }


def list_alerts(
    rt: Runtime,
    actor: Principal,
    *,
    service_provider: str | None = None,
    kind: str | None = None,
    state: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Alerts newest first (a scoped key sees its provider's); ``next_cursor`` pages."""
    actor.require(Permission.HOUSEKEEPING)
    if kind is not None and kind not in KINDS:
        raise Invalid(f"kind must be one of {', '.join(KINDS)}")
    if state is not None and state not in STATES:
        raise Invalid(f"state must be one of {', '.join(STATES)}")
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
        raise Invalid("cursor must be the next_cursor of a page")
    if since is not None and since.tzinfo is None:
        raise Invalid("since must carry a time zone offset (2026-01-01T00:00:00+00:00)")
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(_a).order_by(_a.c.id.desc()).limit(limit + 1)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        if service_provider is not None:
            sp_id = service_provider_id_by_code(conn, service_provider)
            actor.require_scope(sp_id)
            query = query.where(_a.c.service_provider_id == sp_id)
        if actor.service_provider_id is not None:
            query = query.where(_a.c.service_provider_id == actor.service_provider_id)
        if kind is not None:
            query = query.where(_a.c.kind == kind)
        if state is not None:
            query = query.where(_a.c.state == state)
        if since is not None:
            query = query.where(_a.c.created_at >= since)
        if cursor is not None:
            query = query.where(_a.c.id < int(cursor))
        rows = conn.execute(query).all()
        sp = t.service_providers
        sp_codes = {r.id: r.code for r in conn.execute(select(sp.c.id, sp.c.code))}
    page = rows[:limit]
    return {
        "items": [_view(row, sp_codes) for row in page],
        "next_cursor": str(page[-1].id) if len(rows) > limit else None,
    }
