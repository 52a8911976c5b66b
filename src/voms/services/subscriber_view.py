"""What the subscriber channels read about a number: its account, and how it counts money.

One read answers a channel's questions before it speaks: whether the number has an
account, its provider (whose texts apply), the language its subscriber chose, its
balances, and the currency of each of the provider's balance types (amounts are shown
with the currency's minor unit). Currencies are cached per process for a few seconds.
"""

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, update

from voms.db import tables as t
from voms.domain.errors import Invalid, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit, catalog_cache
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork

TTL_SECONDS = 10.0


@dataclass(frozen=True)
class Account:
    """A subscriber as the channels speak to them."""

    msisdn: str
    service_provider: str
    state: str
    language: str | None
    balances: list[dict[str, Any]] = field(default_factory=list)  # balance_type, amount
    currencies: dict[str, str | None] = field(default_factory=dict)  # balance type → ISO code


def _currencies(conn: Connection, service_provider_id: int) -> dict[str, str | None]:
    bt = t.balance_types
    rows = conn.execute(
        select(bt.c.code, bt.c.currency).where(bt.c.service_provider_id == service_provider_id)
    )
    return {row.code: row.currency for row in rows}


def account(rt: Runtime, actor: Principal, msisdn: str) -> Account | None:
    """The account of ``msisdn`` with its balances, or None when the number has none."""
    actor.require(Permission.CATALOG_READ)
    try:
        number = normalize_msisdn(msisdn)
    except ResultError:
        return None
    s, sp, b, bt = t.subscribers, t.service_providers, t.balances, t.balance_types
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(
            select(s.c.id, s.c.msisdn, s.c.state, s.c.language, s.c.service_provider_id, sp.c.code)
            .join(sp, sp.c.id == s.c.service_provider_id)
            .where(s.c.msisdn == number)
        ).first()
        if row is None:
            return None
        actor.require_scope(row.service_provider_id)
        balances = conn.execute(
            select(bt.c.code, b.c.amount)
            .join(bt, bt.c.id == b.c.balance_type_id)
            .where(b.c.subscriber_id == row.id)
            .order_by(bt.c.code)
        ).all()
        currencies = rt.read_cache("channel_currencies", TTL_SECONDS).get(
            row.service_provider_id, lambda: _currencies(conn, row.service_provider_id)
        )
    return Account(
        msisdn=row.msisdn,
        service_provider=row.code,
        state=row.state,
        language=row.language,
        balances=[{"balance_type": code, "amount": amount} for code, amount in balances],
        currencies=dict(currencies),
    )


def pin_lengths(rt: Runtime, actor: Principal) -> frozenset[int]:
    """The PIN lengths of the voucher types (a channel splits typed words by them)."""
    actor.require(Permission.CATALOG_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return catalog_cache.snapshot(rt, conn).pin_lengths


def set_language(rt: Runtime, actor: Principal, msisdn: str, language: str | None) -> None:
    """Record the language a subscriber chose for the channels (None: the default)."""
    actor.require(Permission.REDEEM)
    if language is not None and not (2 <= len(language) <= 16):
        raise Invalid("a language is a code of 2 to 16 characters")
    try:
        number = normalize_msisdn(msisdn)
    except ResultError:
        raise Invalid(f"'{msisdn}' is not a subscriber number (MSISDN)") from None
    s = t.subscribers
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = conn.execute(
            select(s.c.service_provider_id).where(s.c.msisdn == number)
        ).scalar_one_or_none()
        if sp_id is None:
            raise NotFound(f"subscriber '{number}' not found")
        actor.require_scope(sp_id)
        conn.execute(update(s).where(s.c.msisdn == number).values(language=language))
        audit.record(
            conn, actor, "subscriber.language", "subscriber", number, sp_id, {"language": language}
        )
        uow.commit()
