"""Sessions of menu channels (USSD): where a subscriber stands between two callbacks.

A row per (channel, session id) with a small JSON state and an expiry, so that any
server process can take the next step. A version number makes each step a conditional
update: of two processes handling the same step at once (a gateway's retry), one saves
and the other learns that it lost. States never hold a PIN (callers must not put one in).
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.db.upsert import insert_if_absent
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork

MAX_SESSION_ID_LENGTH = 100
_s = t.channel_sessions


@dataclass
class Session:
    """A session as loaded; ``state`` is the channel's to change, then :func:`save`."""

    channel: str
    session_id: str
    msisdn: str
    state: dict[str, Any] = field(default_factory=dict)
    version: int = 0  # 0: not stored yet
    expired: bool = False

    @property
    def is_new(self) -> bool:
        return self.version == 0


def load(
    rt: Runtime,
    actor: Principal,
    channel: str,
    session_id: str,
    msisdn: str,
    now: datetime | None = None,
) -> Session:
    """The stored session, a new one, or one marked ``expired`` (its state is gone)."""
    actor.require(Permission.REDEEM)
    now = now or utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        row = uow.conn.execute(
            select(_s.c.msisdn, _s.c.state, _s.c.version, _s.c.expires_at).where(
                _s.c.channel == channel, _s.c.session_id == session_id
            )
        ).first()
    if row is None:
        return Session(channel, session_id, msisdn)
    if row.expires_at <= now:
        return Session(channel, session_id, row.msisdn, version=row.version, expired=True)
    return Session(channel, session_id, row.msisdn, dict(row.state), row.version)


def save(
    rt: Runtime,
    actor: Principal,
    session: Session,
    timeout_s: int,
    now: datetime | None = None,
) -> bool:
    """Store the session's state and extend its life; False when another step won."""
    actor.require(Permission.REDEEM)
    now = now or utcnow()
    expires_at = now + timedelta(seconds=timeout_s)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        if session.is_new:
            saved = insert_if_absent(
                conn,
                _s,
                {
                    "channel": session.channel,
                    "session_id": session.session_id,
                    "msisdn": session.msisdn,
                    "state": session.state,
                    "version": 1,
                    "created_at": now,
                    "expires_at": expires_at,
                },
            )
        else:
            saved = (
                conn.execute(
                    update(_s)
                    .where(
                        _s.c.channel == session.channel,
                        _s.c.session_id == session.session_id,
                        _s.c.version == session.version,
                    )
                    .values(state=session.state, version=session.version + 1, expires_at=expires_at)
                    .returning(_s.c.version)
                ).first()
                is not None
            )
        uow.commit()
    if saved:
        session.version += 1
    return saved


def purge_expired(rt: Runtime, actor: Principal, now: datetime | None = None) -> int:
    """Forget every session past its expiry; how many were removed."""
    actor.require(Permission.REDEEM)
    now = now or utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        removed = conn.execute(delete(_s).where(_s.c.expires_at <= now).returning(_s.c.version))
        result = len(removed.all())
        uow.commit()
        return result
